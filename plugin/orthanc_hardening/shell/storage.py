"""The plugin as Orthanc's storage area: seal every attachment on create, verify it on every read.

``install(runtime, keys, cache)`` opens the seal store, reconciles what a crash may have left
half-written, and registers the storage area: ``RegisterStorageArea3`` (range reads, Python
plugin 7.1) where it exists, else ``RegisterStorageArea``. Files keep Orthanc's own layout
(``StorageDirectory/xx/yy/uuid``) so an existing archive keeps working. Every callback runs
through the guard as a gatekeeper that fails by raising (Orthanc then fails the operation).

* ``create`` parses the identity from the exact bytes (once per instance: the "until pixel
  data" attachment reuses it), signs the seal, commits the seal row (``synchronous`` from
  ``Hardening.Durability``), starts the write hooks (the audit trail's Import event, appended
  while the file is written), writes the file (fsync'ed unless Orthanc's ``SyncStorageArea`` is
  false; not the derivable header, see ``rebuild_derived``) and waits for the hooks — all before
  Orthanc acknowledges the instance. Any failure fails the ingest.
* ``read`` makes one primary-key select, reads the file once, hashes it once and verifies it
  (``integrity.read.verify_read``: seal, signature, unsealed policy). A failure counts in
  ``hardening_integrity_failures_total``, is recorded in the seal store and as a Security
  Alert, and in enforce mode makes the read raise (HTTP 500, DIMSE failure). Monitor mode
  serves the bytes. The read hooks (audit, lockdown) run before the bytes are returned.
* every verified read of a DICOM attachment is also bound to the index (``shell/binding.py``):
  the instance its seal names is indexed, under its sealed parents, with this very attachment.
* ``check_instance`` verifies a whole instance from disk against what the index says it is,
  before a send on a job thread (asynchronous archives, C-MOVE); with ``files_read_next`` it
  checks everything but the bytes' digest (a synchronous archive: Orthanc's reads of the same
  files verify the bytes, and a failed one refuses the archive, ``shell/archives.py``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import logging
import socket
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orthanc_hardening.audit.event import Action, AuditEvent, EventCode, Outcome, Transport
from orthanc_hardening.audit.sink import Waiter
from orthanc_hardening.errors import (
    HardeningError,
    IntegrityError,
    NotFoundError,
    SealMismatchError,
    SealMissingError,
    StoreUnavailableError,
)
from orthanc_hardening.identity import Requester
from orthanc_hardening.integrity.binding import requested_read
from orthanc_hardening.integrity.legacy import (
    InventoryRule,
    StoredAttachment,
    check_legacy_entry,
    default_unsealed_policy,
    plan_inventory,
    sign_legacy_entry,
)
from orthanc_hardening.integrity.read import verify_before_read, verify_read
from orthanc_hardening.seal import content_type as content_types
from orthanc_hardening.seal import epoch
from orthanc_hardening.seal.identity import NO_IDENTITY, InstanceIdentity
from orthanc_hardening.seal.index_tags import IndexTags, index_tags_digest
from orthanc_hardening.seal.keys import KeyRing
from orthanc_hardening.seal.layout import attachment_file, attachment_path
from orthanc_hardening.seal.record import Seal, check_identity, sign_attachment
from orthanc_hardening.seal.storage_event import READ, WRITE, StorageEvent
from orthanc_hardening.shell.ahead import Ahead, FileFacts, read_identity
from orthanc_hardening.shell.binding import IndexBinding, scan_shared_attachments
from orthanc_hardening.shell.guard import alert, decide, mark_audited, refuse_raise
from orthanc_hardening.shell.runtime import Runtime
from orthanc_hardening.stores.attachment_files import read_file, remove_file, unlink, write_file
from orthanc_hardening.stores.legacy_inventory import SQLLegacyInventory, inventory_path
from orthanc_hardening.stores.seal_store import SQLSealStore
from orthanc_hardening.stores.signature_cache import SignatureCache
from orthanc_hardening.stores.sql import LEGACY_SCHEMA, SEALS_SCHEMA, open_store_database

logger = logging.getLogger(__name__)


def dicomweb_root(orthanc_config: Mapping[str, Any]) -> str:
    """orthanc-dicomweb's root URI (``DicomWeb.Root``, ``/dicom-web/`` by default), ending in ``/``."""
    section = orthanc_config.get("DicomWeb")
    root = section.get("Root", "/dicom-web/") if isinstance(section, dict) else "/dicom-web/"
    root = str(root) if str(root).startswith("/") else "/" + str(root)
    return root if root.endswith("/") else root + "/"

DICOM = 1
DICOM_UNTIL_PIXEL_DATA = 3
FAILURES_METRIC = "integrity_failures_total"
PREPARED_METRIC = "ingest_prepared_total"  # creates sealed with the hash and identity of shell/ahead.py
RECENT_TAGS_LIMIT = 4096

StorageHook = Callable[[StorageEvent], Any]  # a write hook may return a Waiter


@dataclass
class SealedStorage:
    """The storage area's state, its callbacks and the whole-instance verification."""

    runtime: Runtime
    root: Path
    store: SQLSealStore
    keyring: KeyRing
    cache: SignatureCache
    read_hooks: list[StorageHook] = field(default_factory=list)
    write_hooks: list[StorageHook] = field(default_factory=list)
    # The verified start of sealing (``seal/epoch.py``); "" when it does not verify.
    sealing_since: str = ""
    # Orthanc's "SyncStorageArea" (default true): fsync each file before acknowledging.
    sync: bool = True
    # The identity parsed from the last DICOM file created on each thread: Orthanc creates
    # the "until pixel data" attachment (a prefix of the file) right after, on the same thread.
    _last: dict[int, tuple[bytes, InstanceIdentity]] = field(default_factory=dict)
    _last_lock: threading.Lock = field(default_factory=threading.Lock)
    # The signed legacy inventory (``integrity/legacy.py``); ``None``: nothing is legacy.
    legacy: SQLLegacyInventory | None = None
    # The index side of every read (``shell/binding.py``); ``None`` only in unit tests.
    index_binding: IndexBinding | None = None
    # Index tags parsed at create, by attachment uuid, for the query catalogue (bounded).
    _recent_tags: OrderedDict[str, IndexTags] = field(default_factory=OrderedDict)
    # ``root`` as a string, for the create's and read's file names (``attachment_file``).
    _root: str = ""
    # Uploads' hashes and identities prepared while Orthanc parses them (``shell/ahead.py``).
    ahead: Ahead | None = None

    def __post_init__(self) -> None:
        self._root = str(self.root)

    # -- create --------------------------------------------------------------------------

    def create(self, uuid: str, content_type: int, data: bytes) -> None:
        """Seal and store one attachment; raise to make Orthanc fail the ingest."""
        content_type = int(content_type)
        if content_type == content_types.UNKNOWN:
            # A user-defined attachment: sealed under the type Orthanc's index names (seal/content_type.py).
            request = self.runtime.current_request()
            content_type = content_types.sealed_content_type(
                content_type, request.method if request else "", request.uri if request else "",
                content_types.user_content_types(self.runtime.orthanc_config))
        final = attachment_file(self._root, uuid)
        # The hash and identity worked out while Orthanc parsed this very upload (``shell/ahead.py``).
        facts = self.ahead.take(data) if content_type == DICOM and self.ahead is not None else None
        identity, derived = self._identity_for(content_type, data, uuid, facts)
        # Every field is encoded once: the signed bytes, the record stored, the cache's key.
        signed = sign_attachment(uuid, content_type, data, identity, self.keyring.signer, self.runtime.clock(),
                                 sha256=facts.sha256 if facts is not None else None)
        seal = signed.seal
        # The seal row is durable before the file exists: a crash leaves at worst a row
        # without a file, which start-up reconciliation abandons (never a file without seal).
        record = self.store.put(seal, signed.record)
        waiters: list[Waiter] = []
        try:
            # The write hooks (the Import event) start their durable append now and are awaited
            # after the file's write and flush: the two overlap, both finish before Orthanc acknowledges.
            event = StorageEvent(uuid, content_type, seal, "", threading.get_ident(), WRITE, True, len(data))
            for hook in self.write_hooks:
                waiter = hook(event)
                if waiter is not None:
                    waiters.append(waiter)
            # A "DICOM until pixel data" header that is a prefix of the DICOM file just written and
            # flushed on this thread is derivable: it is not flushed on its own (``rebuild_derived``).
            write_file(final, data, self.sync and not derived)
            for waiter in waiters:
                waiter.wait()
            self.cache.remember_seal(record, seal, signed_here=True, signed=(signed.signed, signed.signature))
            if self.index_binding is not None:
                self.index_binding.created(seal)
        except BaseException:
            logger.error("storing attachment %s failed; undoing", uuid)
            for waiter in waiters:
                # Let an Import already on its way land before the refusal the guard records after it.
                with contextlib.suppress(Exception):
                    waiter.wait()
            unlink(final)
            try:
                self.store.delete(uuid, content_type)
            except StoreUnavailableError:
                logger.error("could not drop the seal row of the failed attachment %s", uuid)
            raise
        if facts is not None:
            try:  # an observer: the attachment is stored and sealed whatever the counter does
                self.runtime.metrics.increment(PREPARED_METRIC)
            except Exception:
                logger.exception("counting a prepared create failed")

    def _identity_for(self, content_type: int, data: bytes, uuid: str = "",
                      facts: FileFacts | None = None) -> tuple[InstanceIdentity, bool]:
        """The identity to seal ``data`` with, and whether it is a prefix of this thread's last DICOM file.

        ``facts``: what ``shell/ahead.py`` prepared from exactly these bytes, else they are parsed here.
        """
        thread = threading.get_ident()
        if content_type == DICOM_UNTIL_PIXEL_DATA:
            with self._last_lock:
                last = self._last.pop(thread, None)
            if last is not None and last[0].startswith(data):
                return last[1], True
        if content_type not in (DICOM, DICOM_UNTIL_PIXEL_DATA):
            return NO_IDENTITY, False
        identity, tags = (facts.identity, facts.tags) if facts is not None else read_identity(data)
        if tags is None:
            # Orthanc parsed these bytes before calling us; with StorageCompression they
            # arrive compressed. They are sealed all the same, without identity.
            logger.warning("attachment of type %d is not readable DICOM; sealed without identity", content_type)
        if content_type == DICOM:
            with self._last_lock:
                self._last[thread] = (data, identity)
                if tags is not None:
                    self._recent_tags[uuid] = tags
                    while len(self._recent_tags) > RECENT_TAGS_LIMIT:
                        self._recent_tags.popitem(last=False)
        return identity, False

    def take_index_tags(self, seal: Seal) -> IndexTags | None:
        """The index tags the create of ``seal``'s attachment parsed, once, if they match its seal.

        Lets the query catalogue index a new instance without reading and parsing its file again.
        """
        with self._last_lock:
            tags = self._recent_tags.pop(seal.uuid, None)
        if tags is None or not seal.index_tags_sha256 or index_tags_digest(tags) != seal.index_tags_sha256:
            return None
        return tags

    # -- read ----------------------------------------------------------------------------

    def sealed(self, uuid: str, content_type: int) -> Seal | None:
        """The seal of an attachment (whatever its state), or ``None``: one select, and a record
        read before is not parsed again (the signature cache, keyed by the exact bytes).

        Raises:
            StoreUnavailableError: the store cannot be read.
            SealInvalidError: the stored record is malformed.
        """
        record = self.store.get_record(uuid, content_type)
        return None if record is None else self.cache.parse_seal(record)

    def _bound_by_request(self) -> bool:
        """Whether this read serves an HTTP request whose reads the HTTP gate already bound.

        Such a read is not checked against the index again: an index call from inside a read
        that another plugin started (orthanc-dicomweb's ``/rendered``) hangs Orthanc 1.10.
        """
        request = self.runtime.current_request()
        return request is not None and requested_read(request.method, request.uri, request.query) is not None

    def _inside_dicomweb_call(self) -> bool:
        """Whether this read may run inside orthanc-dicomweb's call into Orthanc, which holds the plugin context.

        On Orthanc before 1.12.2 a plugin's call into Orthanc (orthanc-dicomweb reading an
        instance, or answering QIDO-RS from files) holds the plugin-context lock while Orthanc
        reads the storage area: a call of this read into Orthanc then waits for that lock for
        good, with Python's lock held (README, "No single request stops, hangs or crashes it").
        """
        if self.runtime.capabilities.shared_plugin_context:
            return False
        request = self.runtime.current_request()
        return request is not None and request.uri.startswith(dicomweb_root(self.runtime.orthanc_config))

    def stored_type(self, uuid: str, content_type: int) -> int:
        """The type an attachment is sealed under when the storage area is given ``0`` (user-defined)."""
        if content_type != content_types.UNKNOWN:
            return content_type
        sealed = self.store.content_types_of(uuid)
        return sealed[-1] if sealed else content_type

    def read(self, uuid: str, content_type: int) -> bytes:
        """Read, verify and return one attachment; raise (enforce) if it does not verify."""
        content_type = self.stored_type(uuid, int(content_type))
        path = attachment_file(self._root, uuid)
        seal: Seal | None = None
        data = b""
        try:
            # One primary-key select; a record read before is not parsed again (the cache).
            record = self.store.get_record(uuid, content_type)
            seal = None if record is None else self.cache.parse_seal(record)
            try:
                data = read_file(path)
            except FileNotFoundError as exc:
                if seal is None:
                    raise  # not ours and not there: Orthanc's usual "inexistent file" error
                raise SealMismatchError(
                    f"attachment {uuid} (type {content_type}) is sealed but its file is missing"
                ) from exc
            check = verify_read(uuid, content_type, data, seal, self.keyring, self.runtime.config.unsealed_policy,
                                is_legacy=lambda: self.is_provably_legacy(uuid, content_type), cache=self.cache,
                                record=record)
            if check.seal is None:
                self.runtime.metrics.increment("unsealed_reads_total")
                logger.warning("served unsealed (legacy) attachment %s type %d", uuid, content_type)
            elif self.index_binding is not None and not self._bound_by_request():
                # Bound to what the index says this file is, whoever reads it (integrity/binding.py);
                # not through Orthanc from inside another plugin's call on Orthanc before 1.12.2.
                self.index_binding.check(check.seal, consult_index=not self._inside_dicomweb_call())
            elif self.index_binding is not None:
                # The request's own thread read what its gate bound: no grant is left for another read.
                self.index_binding.release(uuid)
        except IntegrityError as exc:
            rebuilt = self.rebuild_derived(uuid, content_type, seal, exc, data)
            if rebuilt is None:
                self.report_failure(uuid, content_type, seal, exc)
                if self.runtime.config.is_enforcing:
                    raise
                logger.warning("monitor mode: serving attachment %s that failed verification", uuid)
                return data
            data = rebuilt
        except StoreUnavailableError:
            logger.error("seal store unavailable while reading %s", uuid)
            if self.runtime.config.is_enforcing:
                raise
            return read_file(path)
        event = StorageEvent(uuid, content_type, seal, "", threading.get_ident(), READ, seal is not None, len(data))
        for hook in self.read_hooks:
            hook(event)
        return data

    def rebuild_derived(self, uuid: str, content_type: int, seal: Seal | None,
                        problem: BaseException, found: bytes) -> bytes | None:
        """A "DICOM until pixel data" header torn by a power loss, rebuilt from its sealed DICOM file; else ``None``.

        That header is a prefix of the DICOM file and is written without a flush of its own
        (``create``): a power loss can leave it missing, empty, short or with zero-filled blocks
        while its seal row and Orthanc's index survive. Such damage (``found`` differs from the
        sealed header only by missing or zero bytes) is no tamper alarm: the prefix is cut from the
        instance's DICOM file, which must verify against its own seal, and is accepted only if it
        verifies against the header's own signed seal, so what is served is exactly what was
        sealed. The file is rewritten (flushed) and ``hardening_derived_rebuilt_total`` counts it.
        Any other difference (a changed byte: what an intruder does, never a crash), another
        type, a bad signature or no verifying DICOM file returns ``None``: the caller refuses
        and reports it.
        """
        if content_type != DICOM_UNTIL_PIXEL_DATA or seal is None or not isinstance(problem, SealMismatchError):
            return None
        try:
            candidates = [s for s in self.store.seals_of_instance(seal.sop_instance_uid) if s.content_type == DICOM]
        except StoreUnavailableError:
            return None
        policy = self.runtime.config.unsealed_policy
        for dicom in candidates:
            try:
                whole = read_file(attachment_path(self.root, dicom.uuid))
                verify_read(dicom.uuid, DICOM, whole, dicom, self.keyring, policy, is_legacy=lambda: False,
                            cache=self.cache)
                header = whole[:seal.size]
                verify_read(uuid, content_type, header, seal, self.keyring, policy, is_legacy=lambda: False,
                            cache=self.cache)
            except (OSError, IntegrityError):
                continue
            if not is_torn_copy(found, header):
                return None
            try:
                write_file(attachment_path(self.root, uuid), header, self.sync)
            except OSError as exc:
                logger.error("could not rewrite the rebuilt header %s: %s", uuid, exc)
            self.runtime.metrics.increment("derived_rebuilt_total")
            logger.warning("attachment %s (DICOM until pixel data) was damaged (%s); rebuilt from the sealed "
                           "DICOM file %s", uuid, problem, dicom.uuid)
            return header
        return None

    def is_provably_legacy(self, uuid: str, content_type: int, instance_id: str | None = None) -> bool:
        """Whether an unsealed attachment is in the signed legacy inventory, for the instance the index names.

        Decided by the inventory and the index, never by the bytes served (``integrity/legacy.py``).

        Args:
            uuid: the attachment.
            content_type: its content type.
            instance_id: the instance the index names it for, when the caller knows; else the
                inventoried instance must still name this attachment in the index.
        """
        if self.legacy is None or not self.sealing_since:
            return False
        found = self.legacy.get(uuid, content_type)
        if found is None:
            return False
        entry, signature = found
        try:
            if instance_id is None:
                names = {(int(kind), str(u)) for _n, kind, u in self.attachments_of(entry.instance_id)}
                instance_id = entry.instance_id if (int(content_type), uuid) in names else ""
            check_legacy_entry(StoredAttachment(instance_id, int(content_type), uuid, None), entry, signature,
                               self.keyring)
        except HardeningError as exc:
            logger.error("attachment %s is not provably legacy: %s", uuid, exc)
            return False
        return True

    def take_inventory(self, fresh: bool) -> None:
        """Take the signed legacy inventory once (the first start of a version that has one).

        Args:
            fresh: sealing began at this start (everything unsealed the index holds predates it);
                otherwise the older rule (``ReceptionDate`` before the start of sealing), audited.
        """
        if self.legacy is None or not self.sealing_since or self.legacy.taken() is not None:
            return
        rule = InventoryRule.BEFORE_SEALING if fresh else InventoryRule.RECEPTION_DATE
        orthanc = self.runtime.orthanc
        listed: list[StoredAttachment] = []
        for instance_id in json.loads(orthanc.RestApiGet("/instances")):
            received = self.reception_date(instance_id) if rule is InventoryRule.RECEPTION_DATE else None
            listed.extend(StoredAttachment(instance_id, content_type, uuid, received)
                          for _name, content_type, uuid in self.attachments_of(instance_id))
        entries = plan_inventory(listed, lambda uuid, kind: self.store.get(uuid, kind) is not None, rule,
                                 self.sealing_since)
        signer = self.keyring.signer
        count = self.legacy.take(((entry, sign_legacy_entry(entry, signer)) for entry in entries), rule.value)
        detail = f"legacy inventory taken ({rule.value}): {count} unsealed attachment(s) of {len(listed)} are legacy"
        logger.warning("%s", detail)
        self.runtime.audit.record(AuditEvent(
            time=self.runtime.clock(), event=EventCode.APPLICATION_ACTIVITY, action=Action.EXECUTE,
            outcome=Outcome.SUCCESS if rule is InventoryRule.BEFORE_SEALING else Outcome.MINOR_FAILURE,
            transport=Transport.INTERNAL, route="legacy-inventory", detail=detail))

    def apply_default_unsealed_policy(self) -> None:
        """Without ``UnsealedPolicy`` in the configuration: decide it from the legacy inventory, once Orthanc runs.

        ``refuse`` for a fresh installation and once ``seal-existing`` sealed every legacy
        attachment; ``serve-and-flag`` while legacy attachments are still unsealed
        (``integrity.legacy.default_unsealed_policy``). Decided at each start.
        """
        config = self.runtime.config
        if config.unsealed_policy_configured:
            return
        pending = 0
        if self.legacy is not None and self.sealing_since:
            pending = sum(1 for uuid, kind in self.legacy.attachments() if self.store.get(uuid, kind) is None)
        policy = default_unsealed_policy(pending)
        self.runtime.config = dataclasses.replace(config, unsealed_policy=policy, unsealed_policy_decided=True)
        logger.warning("UnsealedPolicy not configured: %s (%d legacy attachment(s) still unsealed)",
                       policy.value, pending)

    def reception_date(self, instance_id: str) -> str | None:
        """Orthanc's ``ReceptionDate`` metadata of an instance (``YYYYMMDDTHHMMSS``), or ``None``."""
        try:
            received = self.runtime.orthanc.RestApiGet(f"/instances/{instance_id}/metadata/ReceptionDate")
        except Exception:
            return None
        text = received.decode("utf-8", "replace") if isinstance(received, bytes) else str(received)
        return text.strip() or None

    def lookup_instance(self, sop_instance_uid: str) -> str | None:
        """Orthanc's id of the instance with this SOP Instance UID, or ``None``."""
        if not sop_instance_uid:
            return None
        try:
            found = json.loads(self.runtime.orthanc.RestApiPost("/tools/lookup", sop_instance_uid))
        except Exception:
            return None
        for item in found:
            if item.get("Type") == "Instance":
                return str(item["ID"])
        return None

    def report_failure(self, uuid: str, content_type: int, seal: Seal | None, exc: BaseException) -> None:
        """Count, record, alert and tell the read hooks about a failed verification.

        ``exc`` is marked audited: the guard that sees it next records no second alert.
        """
        problem = f"{type(exc).__name__}: {exc}"
        logger.error("integrity failure on attachment %s type %d: %s", uuid, content_type, problem)
        self.runtime.metrics.increment(FAILURES_METRIC)
        try:
            self.store.record_failure(uuid, content_type, problem, self.runtime.clock())
        except StoreUnavailableError:
            logger.error("could not record the failure of %s in the seal store", uuid)
        requester = self.runtime.current_requester(Requester(transport=Transport.INTERNAL),
                                                   seal.series_uid if seal else "")
        alert(self.runtime, requester, "storage-read", problem,
              patient_id=seal.patient_id if seal else "", study_uid=seal.study_uid if seal else "",
              series_uid=seal.series_uid if seal else "")
        mark_audited(exc)
        event = StorageEvent(uuid, content_type, seal, problem, threading.get_ident(), READ, seal is not None, 0)
        for hook in self.read_hooks:
            hook(event)

    # -- remove --------------------------------------------------------------------------

    def remove(self, uuid: str, content_type: int) -> None:
        """Delete the file and record the removal (the seal row stays as evidence).

        A file the index names for several instances (``shell/binding.py``) is kept: deleting
        the instance whose row was copied onto it must not delete the original's file.
        """
        if self.index_binding is not None:
            self.index_binding.removed(uuid)
        if self.index_binding is not None and uuid in self.index_binding.shared:
            logger.warning("kept attachment %s: Orthanc's index names it for several instances", uuid)
            return
        remove_file(attachment_path(self.root, uuid))
        self.store.mark_removed(uuid, self.stored_type(uuid, int(content_type)), self.runtime.clock())

    # -- the storage area with ranges (RegisterStorageArea3, Python plugin 7.1) ----------

    def create_v3(self, uuid: str, content_type: int, compression_type: int, content: bytes,
                  dicom_instance: Any) -> tuple[int, bytes | None]:
        """``create`` of the range-capable storage area: seal and store; no custom data."""
        self.create(uuid, content_type, content)
        return 0, None

    def read_range(self, uuid: str, content_type: int, range_start: int, size: int,
                   custom_data: bytes) -> tuple[int, bytes]:
        """A range of an attachment, served only once the whole attachment verified.

        A seal covers the whole file, so the whole file is read and checked for every range
        (Orthanc 1.13 reads the DICOM header this way for ``/tags``).
        """
        data = self.read(uuid, content_type)
        start, size = int(range_start), int(size)
        if start < 0 or size < 0 or start + size > len(data):
            raise SealMismatchError(f"attachment {uuid} (type {content_type}): range {start}+{size} is beyond "
                                    f"its {len(data)} sealed bytes")
        return 0, data[start:start + size]

    def remove_v3(self, uuid: str, content_type: int, custom_data: bytes) -> int:
        """``remove`` of the range-capable storage area."""
        self.remove(uuid, content_type)
        return 0

    # -- whole instances -----------------------------------------------------------------

    def attachments_of(self, instance_id: str, dicom_uuid: str = "") -> list[tuple[str, int, str]]:
        """``(name, content type, uuid)`` of each attachment of an instance (index only).

        Args:
            instance_id: Orthanc's instance id.
            dicom_uuid: the DICOM file's uuid when the caller holds the index's answer for the
                instance (its ``FileUuid``: the same row ``/attachments/dicom/info`` reads).

        Raises:
            NotFoundError: Orthanc does not know the instance.
        """
        orthanc = self.runtime.orthanc
        try:
            listed = json.loads(orthanc.RestApiGet(f"/instances/{instance_id}/attachments?full"))
        except Exception as exc:
            raise NotFoundError(f"instance {instance_id} is unknown") from exc
        result = []
        for name, content_type in sorted(listed.items()):
            if int(content_type) == DICOM and dicom_uuid:
                result.append((name, DICOM, dicom_uuid))
                continue
            info = json.loads(orthanc.RestApiGet(f"/instances/{instance_id}/attachments/{name}/info"))
            result.append((name, int(content_type), str(info["Uuid"])))
        return result

    def list_instances(self, uri: str, parents: dict[str, Any]) -> list[str]:
        """The instance ids of a listing (``/{level}/{id}/instances``), in its order.

        Each instance object the listing answered goes into ``parents`` under ``/instances/{id}``
        (``expected_identity`` and ``check_instance`` take it instead of asking again; its
        ``FileUuid`` names the DICOM file, the row ``/attachments/dicom/info`` reads).

        Raises:
            Exception: Orthanc's error for an unknown resource.
        """
        ids: list[str] = []
        for child in json.loads(self.runtime.orthanc.RestApiGet(uri)):
            ids.append(str(child["ID"]))
            if "ParentSeries" in child and "MainDicomTags" in child:
                parents[f"/instances/{child['ID']}"] = child
        return ids

    def expected_identity(self, instance_id: str, parents: dict[str, Any] | None = None) -> InstanceIdentity:
        """What Orthanc's index says the instance is (UIDs and patient id).

        Args:
            instance_id: Orthanc's instance id.
            parents: the index's answers shared by the calls of one request, by URI: the series
                and studies looked up, and the instances a listing of their parent already gave
                (``/instances/{id}``: the same object that route answers).

        Raises:
            NotFoundError: Orthanc does not know the instance.
        """
        return self._indexed(instance_id, parents)[0]

    def _indexed(self, instance_id: str, parents: dict[str, Any] | None) -> tuple[InstanceIdentity, dict[str, Any]]:
        """``expected_identity``, and the index's answer for the instance (``GET /instances/{id}``)."""
        orthanc = self.runtime.orthanc
        cache = parents if parents is not None else {}

        def get(uri: str) -> Any:
            if uri not in cache:
                cache[uri] = json.loads(orthanc.RestApiGet(uri))
            return cache[uri]

        instance = cache.get(f"/instances/{instance_id}")
        if instance is None:
            try:
                instance = json.loads(orthanc.RestApiGet(f"/instances/{instance_id}"))
            except Exception as exc:
                raise NotFoundError(f"instance {instance_id} is unknown") from exc
        series = get(f"/series/{instance['ParentSeries']}")
        study = get(f"/studies/{series['ParentStudy']}")
        return InstanceIdentity(
            study_uid=str(study.get("MainDicomTags", {}).get("StudyInstanceUID", "")),
            series_uid=str(series.get("MainDicomTags", {}).get("SeriesInstanceUID", "")),
            sop_instance_uid=str(instance.get("MainDicomTags", {}).get("SOPInstanceUID", "")),
            patient_id=str(study.get("PatientMainDicomTags", {}).get("PatientID", "")),
        ), instance

    def verify_attachment(self, uuid: str, content_type: int, expected: InstanceIdentity | None) -> Seal | None:
        """Read one attachment from disk and verify it (seal, signature, identity, policy).

        Returns:
            Its seal, or ``None`` for legacy data served under ``serve-and-flag``.

        Raises:
            IntegrityError: any verification failure (also in monitor mode: callers decide).
        """
        record = self.store.get_record(uuid, content_type)
        if record is None and content_type >= content_types.FIRST_USER_TYPE:
            # Sealed before its type was known (created without a request naming it): type 0.
            record = self.store.get_record(uuid, content_types.UNKNOWN)
            content_type = content_types.UNKNOWN if record is not None else content_type
        seal = None if record is None else self.cache.parse_seal(record)
        data = b""
        try:
            try:
                data = read_file(attachment_path(self.root, uuid))
            except FileNotFoundError as exc:
                raise SealMismatchError(f"attachment {uuid} (type {content_type}): file is missing") from exc
            check = verify_read(uuid, content_type, data, seal, self.keyring, self.runtime.config.unsealed_policy,
                                is_legacy=lambda: self.is_provably_legacy(uuid, content_type), cache=self.cache,
                                record=record)
        except SealMismatchError as exc:
            if self.rebuild_derived(uuid, content_type, seal, exc, data) is None:
                raise
            return seal
        if check.seal is not None and expected is not None and check.seal.sop_instance_uid:
            check_identity(check.seal, expected)
        return check.seal

    def check_instance(self, instance_id: str, attachments: list[tuple[str, int, str]] | None = None,
                       parents: dict[str, Any] | None = None, files_read_next: bool = False,
                       bound: list[tuple[str, str, str]] | None = None) -> None:
        """Verify every attachment of an instance from disk (before a send on a job thread).

        Args:
            instance_id: Orthanc's instance id.
            attachments: its attachments when the caller already listed them.
            parents: the index's answers shared by one request (see ``expected_identity``).
            files_read_next: the caller has Orthanc read the DICOM file through ``read`` next and
                refuses its answer if that read fails: check its seal, size and identity here,
                its bytes there (one hash per file, not two). Other attachments are read here.
            bound: where to add ``(uuid, instance id, series id)`` of the DICOM file once it
                verified: the index facts read here, for ``grant_index_reads``.

        Raises:
            NotFoundError: unknown instance.
            IntegrityError: an attachment does not verify; the message names the instance.
        """
        expected, instance = self._indexed(instance_id, parents)
        series_id = str(instance["ParentSeries"])
        if attachments is None:
            attachments = self.attachments_of(instance_id, str(instance.get("FileUuid", "") or ""))
        for _name, content_type, uuid in attachments:
            try:
                # Orthanc's archive reads the DICOM file only: every other attachment is read here.
                if files_read_next and content_type == DICOM:
                    self.verify_before_read(uuid, expected)
                else:
                    self.verify_attachment(uuid, content_type, expected)
            except IntegrityError as exc:
                self.report_failure(uuid, content_type, self.store.get(uuid, content_type), exc)
                raise mark_audited(type(exc)(f"instance {instance_id}: {exc}")) from exc
            if bound is not None and content_type == DICOM:
                bound.append((uuid, instance_id, series_id))

    def grant_index_reads(self, bound: Iterable[tuple[str, str, str]]) -> None:
        """Let the next read of each file take the index facts ``check_instance`` just read for it.

        For a send checked as a whole (C-MOVE): the job's read of instance X's DICOM file does not
        ask the index again that X is under series S and names this file (``IndexBinding.bind``:
        one read, ``GRANT_SECONDS``); it still verifies the bytes, the signature and the series'
        parents. Call it only once every instance of the send verified.
        """
        if self.index_binding is None or self.index_binding.active_facts() is not None:
            return  # no binding, or the index facts answer every read without a call into Orthanc
        for uuid, instance_id, series_id in bound:
            self.index_binding.bind(uuid, instance_id, series_id)

    def verify_before_read(self, uuid: str, expected: InstanceIdentity | None) -> Seal | None:
        """``verify_attachment`` of a DICOM file but the bytes' digest: seal, file size, identity, policy.

        Raises:
            IntegrityError: any verification failure (also in monitor mode: callers decide).
        """
        record = self.store.get_record(uuid, DICOM)
        seal = None if record is None else self.cache.parse_seal(record)
        try:
            size = attachment_path(self.root, uuid).stat().st_size
        except FileNotFoundError as exc:
            raise SealMismatchError(f"attachment {uuid} (type {DICOM}): file is missing") from exc
        found = verify_before_read(uuid, DICOM, size, seal, self.keyring, self.runtime.config.unsealed_policy,
                                   is_legacy=lambda: self.is_provably_legacy(uuid, DICOM),
                                   cache=self.cache, record=record)
        if found is not None and expected is not None and found.sop_instance_uid:
            check_identity(found, expected)
        return found

    def seal_report(self, instance_id: str) -> dict[str, Any]:
        """The seals of an instance's attachments and their verification now."""
        expected = self.expected_identity(instance_id)
        attachments = []
        verified = True
        for name, content_type, uuid in self.attachments_of(instance_id):
            seal = self.store.get(uuid, content_type)
            entry: dict[str, Any] = {"name": name, "content_type": content_type, "uuid": uuid,
                                     "seal": seal.to_dict() if seal else None}
            try:
                found = self.verify_attachment(uuid, content_type, expected)
                entry["status"] = "verified" if found is not None else "unsealed"
                entry["problem"] = ""
            except IntegrityError as exc:
                verified = False
                entry["status"] = "unsealed" if isinstance(exc, SealMissingError) and seal is None else "failed"
                entry["problem"] = f"{type(exc).__name__}: {exc}"
                self.report_failure(uuid, content_type, seal, exc)
            attachments.append(entry)
        return {"instance": instance_id, "verified": verified, "current_key": self.keyring.signer.key_id,
                "attachments": attachments}

    # -- the storage-area callbacks, each behind the guard -------------------------------

    def guarded(self, gate: str, function: Callable[..., Any]) -> Callable[..., Any]:
        """``function`` as a storage-area gatekeeper: any exception refuses (re-raised) and is reported."""

        def callback(*args: Any) -> Any:
            # Orthanc may hold the plugin context while it calls the storage area (a plugin's
            # GetDicomForInstance on Orthanc <= 1.12.1): no metrics push from here (shell/metrics.py).
            with self.runtime.metrics.no_orthanc_calls():
                return decide(self.runtime, gate, self._requester, lambda: function(*args), refuse_raise)

        return callback

    def _requester(self) -> Requester:
        return self.runtime.current_requester(Requester(transport=Transport.INTERNAL))


def is_torn_copy(found: bytes, sealed: bytes) -> bool:
    """Whether ``found`` is what an interrupted, unflushed write of ``sealed`` can leave.

    That is a prefix of ``sealed`` (possibly empty) in which some bytes read back as zeros
    (blocks allocated but never written). A changed non-zero byte or extra bytes are not.
    """
    if len(found) > len(sealed):
        return False
    if sealed.startswith(found):
        return True
    return all(got in (0, want) for got, want in zip(found, sealed, strict=False))


# -- start-up -----------------------------------------------------------------------------


def node_identity(orthanc_config: Any, shared_database: str | None) -> str:
    """The name this node's seal rows carry: Orthanc's ``DatabaseServerIdentifier`` if set, else,
    on a database shared by several nodes, host name and HTTP port; ``""`` for a lone node."""
    configured = orthanc_config.get("DatabaseServerIdentifier")
    if isinstance(configured, str) and configured:
        return configured
    if not shared_database:
        return ""
    return f"{socket.gethostname()}:{orthanc_config.get('HttpPort', 8042)}"


def storage_root(orthanc_config: Any) -> Path:
    """Orthanc's ``StorageDirectory`` (relative paths are taken from the working directory)."""
    return Path(str(orthanc_config.get("StorageDirectory", "OrthancStorage"))).absolute()


def load_sealing_since(store: SQLSealStore, keyring: KeyRing, now: dt.datetime) -> tuple[str, bool]:
    """The signed time sealing began (set at the first start); ``""`` if it does not verify.

    Returns:
        ``(start, fresh)``: ``fresh`` when sealing begins now (no seal exists yet). Seals without
        a recorded start mean the start was deleted: nothing unsealed is legacy then.
    """
    value = store.get_meta(epoch.META_NAME)
    if value is None:
        if store.max_rowid() > 0:
            logger.error("seals exist but the signed start of sealing is gone: every unsealed attachment is refused")
            return "", False
        value = epoch.orthanc_time(now)
        store.set_meta(epoch.META_SIGNATURE, epoch.sign_epoch(value, keyring.signer))
        store.set_meta(epoch.META_NAME, value)
        return value, True
    try:
        epoch.verify_epoch(value, store.get_meta(epoch.META_SIGNATURE) or "", keyring)
    except IntegrityError:
        logger.error("the signed start of sealing does not verify: every unsealed attachment is refused")
        return "", False
    return value, False


def reconcile_files(root: Path, store: SQLSealStore, now: dt.datetime) -> list[Seal]:
    """Start-up, before Orthanc serves: abandon the rows written since the last clean stop whose file is missing.

    Returns:
        The suspect seals whose file exists (checked against Orthanc's index once it runs).
    """
    present = []
    for row in store.suspect_rows():
        seal = row.seal
        if attachment_path(root, seal.uuid).exists():
            present.append(seal)
        else:
            logger.warning("abandoning seal of attachment %s: its write never completed", seal.uuid)
            store.abandon(seal.uuid, seal.content_type, now)
    return present


def reconcile_index(storage: SealedStorage, suspects: Iterable[Seal], clean_through: int) -> None:
    """Once Orthanc runs: remove suspect files Orthanc never indexed (their ingest failed)."""
    for seal in suspects:
        instance_id = storage.lookup_instance(seal.sop_instance_uid)
        known = False
        if instance_id is not None:
            try:
                known = any(uuid == seal.uuid for _n, _t, uuid in storage.attachments_of(instance_id))
            except HardeningError:
                known = False
        if not known and seal.sop_instance_uid:
            logger.warning("removing attachment %s that Orthanc never indexed (interrupted ingest)", seal.uuid)
            unlink(attachment_path(storage.root, seal.uuid))
            storage.store.abandon(seal.uuid, seal.content_type, storage.runtime.clock())
    storage.store.set_clean_through(clean_through)


def install(runtime: Runtime, keys: KeyRing, cache: SignatureCache, ahead: Ahead | None = None) -> SealedStorage:
    """Open the seal store, reconcile, and register the storage area (``ahead``: see ``shell/ahead.py``).

    Raises:
        StoreUnavailableError: the seal store cannot be opened.
    """
    config = runtime.config
    now = runtime.clock()
    root = storage_root(runtime.orthanc_config)
    root.mkdir(parents=True, exist_ok=True)
    store = SQLSealStore(open_store_database(config.shared_database, SEALS_SCHEMA, config.seal_database,
                                             config.sqlite_synchronous),
                         writer=node_identity(runtime.orthanc_config, config.shared_database))
    storage = SealedStorage(runtime=runtime, root=root, store=store, keyring=keys, cache=cache,
                            sync=bool(runtime.orthanc_config.get("SyncStorageArea", True)), ahead=ahead)
    storage.index_binding = IndexBinding(runtime)
    scan_shared_attachments(runtime, storage.index_binding)
    storage.sealing_since, fresh = load_sealing_since(store, keys, now)
    storage.legacy = SQLLegacyInventory(open_store_database(config.shared_database, LEGACY_SCHEMA,
                                                            inventory_path(config.seal_database)))
    clean_through = store.max_rowid()
    suspects = reconcile_files(root, store, now)
    runtime.metrics.set(FAILURES_METRIC, 0)
    keys.add_listener(lambda _signer: cache.clear())

    if runtime.capabilities.storage_area_ranges:
        # Python plugin 7.1 (Orthanc 1.13): a storage area with range reads. Orthanc then stores
        # no "DICOM until pixel data" attachment (it reads the header as a range of the DICOM
        # file), so an ingest seals and writes one file instead of two (measured: bench/RESULTS.md).
        runtime.orthanc.RegisterStorageArea3(  # type: ignore[attr-defined]
            storage.guarded("storage-create", storage.create_v3), storage.guarded("storage-read", storage.read_range),
            storage.guarded("storage-remove", storage.remove_v3))
    else:
        runtime.orthanc.RegisterStorageArea(
            storage.guarded("storage-create", storage.create), storage.guarded("storage-read", storage.read),
            storage.guarded("storage-remove", storage.remove))

    started = runtime.orthanc.ChangeType.ORTHANC_STARTED

    def reconcile_on_start(change_type: int, _level: int, _resource: str) -> None:
        if change_type == started:
            reconcile_index(storage, suspects, clean_through)
            storage.take_inventory(fresh)
            storage.apply_default_unsealed_policy()

    runtime.change_observers.append(reconcile_on_start)
    runtime.stop_actions.append(store.mark_clean)
    logger.info("sealed storage in %s, key %s, %d suspect rows", root, keys.signer.key_id, len(suspects))
    return storage
