"""The plugin as Orthanc's storage area: seal every attachment on create, verify it on every read.

``install(runtime)``:

* loads the key ring (``runtime.services["keyring"]``), opens the seal store, reconciles what a
  crash may have left half-written, and registers ``create``/``read``/``remove`` with
  ``orthanc.RegisterStorageArea``. Files keep Orthanc's own layout
  (``StorageDirectory/xx/yy/uuid``, ``seal/layout.py``) so an existing archive keeps working.
* ``create`` parses the identity from the exact bytes (once per instance: the "until pixel
  data" attachment reuses it), signs the seal, commits the seal row (SQLite WAL, ``synchronous``
  from ``Hardening.Durability``), writes the file (fsync'ed unless Orthanc's ``SyncStorageArea``
  is false) and runs the write hooks — all before Orthanc acknowledges the instance. Any
  failure fails the ingest.
* ``read`` makes one primary-key select, reads the file once, hashes it once, checks it
  against its seal (seal records whose signature verified are cached, parsed, by their exact
  stored bytes; a seal signed at create is cached as it is stored), applies
  ``Hardening.UnsealedPolicy`` to legacy data, and runs the read hooks. A failure counts in
  ``hardening_integrity_failures_total``, is recorded in the seal store and as a Security
  Alert, and in enforce mode makes the read raise (HTTP 500/409, DIMSE failure). Monitor
  mode serves the bytes.
* ``runtime.services["integrity"]`` checks a whole instance before a send on a job thread.
* Overrides of ``/{patients,studies,series}/{id}/archive|media`` and ``/tools/create-archive|
  create-media|create-media-extended`` refuse (409) an archive with a tampered instance as a
  whole: Orthanc itself would answer 200 with the instance silently missing.
* REST: ``GET /hardening/instances/{id}/seal``, ``GET /hardening/keys``,
  ``POST /hardening/keys/rotate``, ``POST /hardening/seal-existing``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import threading
import time
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

from orthanc_hardening.audit.event import Action, AuditEvent, EventCode, Outcome, Transport
from orthanc_hardening.config import passphrase_from_env
from orthanc_hardening.errors import (
    BadRequestError,
    HardeningError,
    IntegrityError,
    NotFoundError,
    SealInvalidError,
    SealMismatchError,
    SealMissingError,
    StoreUnavailableError,
)
from orthanc_hardening.identity import ADMINISTRATOR, Requester
from orthanc_hardening.integrity.read import SignatureCache, check_read, check_unsealed, received_before
from orthanc_hardening.request_body import parse_json_object
from orthanc_hardening.seal import epoch
from orthanc_hardening.seal import keys as keymod
from orthanc_hardening.seal.identity import NO_IDENTITY, InstanceIdentity, identify, identity_of_dataset, parse_dataset
from orthanc_hardening.seal.index_tags import IndexTags, index_tags_digest
from orthanc_hardening.seal.layout import attachment_path
from orthanc_hardening.seal.record import Seal, check_identity, seal_attachment
from orthanc_hardening.seal.storage_event import READ, WRITE, StorageEvent
from orthanc_hardening.seal.store import SQLiteSealStore
from orthanc_hardening.shell.guard import answer_json, security_alert
from orthanc_hardening.shell.offload import Offloader
from orthanc_hardening.shell.rest import Reply, RestCall, register
from orthanc_hardening.shell.runtime import Runtime

logger = logging.getLogger(__name__)

DICOM = 1
DICOM_UNTIL_PIXEL_DATA = 3
FAILURES_METRIC = "integrity_failures_total"
ARCHIVE_ROUTE = "/(patients|studies|series)/([^/]+)/(archive|media)"
TOOLS_ARCHIVE_ROUTE = "/tools/(create-archive|create-media|create-media-extended)"
JOB_ARCHIVE_ROUTE = "/jobs/([^/]+)/archive"
JOB_POLL_SECONDS = 0.02
JOB_TIMEOUT_SECONDS = 3600.0
RECENT_TAGS_LIMIT = 4096

ReadHook = Callable[[StorageEvent], None]


@dataclass
class SealedStorage:
    """The storage area's state and its three callbacks (plus the integrity service)."""

    runtime: Runtime
    root: Path
    store: SQLiteSealStore
    keyring: keymod.KeyRing
    cache: SignatureCache = field(default_factory=SignatureCache)
    read_hooks: list[ReadHook] = field(default_factory=list)
    write_hooks: list[ReadHook] = field(default_factory=list)
    sealing_since: str = ""
    # Orthanc's "SyncStorageArea" (default true): fsync each file before acknowledging.
    sync: bool = True
    # The identity parsed from the last DICOM file created on each thread: Orthanc creates
    # the "until pixel data" attachment (a prefix of the file) right after, on the same thread.
    _last: dict[int, tuple[bytes, InstanceIdentity]] = field(default_factory=dict)
    _last_lock: threading.Lock = field(default_factory=threading.Lock)
    # Index tags parsed at create, by attachment uuid, for the query catalogue (bounded).
    _recent_tags: OrderedDict[str, IndexTags] = field(default_factory=OrderedDict)
    # Archive jobs started by the overrides, checked when their archive is fetched.
    jobs: dict[str, ArchiveJob] = field(default_factory=dict)
    jobs_lock: threading.Lock = field(default_factory=threading.Lock)

    # -- create --------------------------------------------------------------------------

    def create(self, uuid: str, content_type: int, data: bytes) -> None:
        """Seal and store one attachment; raise to make Orthanc fail the ingest."""
        content_type = int(content_type)
        final = attachment_path(self.root, uuid)
        identity = self._identity_for(content_type, data, uuid)
        seal = seal_attachment(uuid, content_type, data, identity, self.keyring.signer, self.runtime.clock())
        # The seal row is durable before the file exists: a crash leaves at worst a row
        # without a file, which start-up reconciliation abandons (never a file without seal).
        record = self.store.put(seal)
        try:
            _write_file(final, data, self.sync)
            event = StorageEvent(uuid, content_type, seal, "", threading.get_ident(), WRITE, True, len(data))
            for hook in self.write_hooks:
                hook(event)
            self.cache.remember(record, seal)
        except BaseException:
            logger.error("storing attachment %s failed; undoing", uuid)
            _unlink(final)
            try:
                self.store.delete(uuid, content_type)
            except StoreUnavailableError:
                logger.error("could not drop the seal row of the failed attachment %s", uuid)
            raise

    def _identity_for(self, content_type: int, data: bytes, uuid: str = "") -> InstanceIdentity:
        thread = threading.get_ident()
        if content_type == DICOM_UNTIL_PIXEL_DATA:
            with self._last_lock:
                last = self._last.pop(thread, None)
            if last is not None and last[0].startswith(data):
                return last[1]
        if content_type not in (DICOM, DICOM_UNTIL_PIXEL_DATA):
            return NO_IDENTITY
        try:
            identity, tags = identity_of_dataset(parse_dataset(data))
        except ValueError:
            # Orthanc parsed these bytes before calling us; with StorageCompression they
            # arrive compressed. They are sealed all the same, without identity.
            logger.warning("attachment of type %d is not readable DICOM; sealed without identity", content_type)
            identity, tags = NO_IDENTITY, None
        if content_type == DICOM:
            with self._last_lock:
                self._last[thread] = (data, identity)
                if tags is not None:
                    self._recent_tags[uuid] = tags
                    while len(self._recent_tags) > RECENT_TAGS_LIMIT:
                        self._recent_tags.popitem(last=False)
        return identity

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

    def read(self, uuid: str, content_type: int) -> bytes:
        """Read, verify and return one attachment; raise (enforce) if it does not verify."""
        content_type = int(content_type)
        path = attachment_path(self.root, uuid)
        seal: Seal | None = None
        data = b""
        try:
            # One primary-key select; a record read before is not parsed again (the cache).
            record = self.store.get_record(uuid, content_type)
            seal = None if record is None else self.cache.parse(record)
            try:
                data = _read_file(path)
            except FileNotFoundError as exc:
                if seal is None:
                    raise  # not ours and not there: Orthanc's usual "inexistent file" error
                raise SealMismatchError(
                    f"attachment {uuid} (type {content_type}) is sealed but its file is missing"
                ) from exc
            check = check_read(uuid, content_type, data, seal, self.keyring, self.cache, record)
            if check.seal is None:
                self._check_unsealed(uuid, content_type, data)
                self.runtime.metrics.increment("unsealed_reads_total")
                logger.warning("served unsealed (legacy) attachment %s type %d", uuid, content_type)
        except IntegrityError as exc:
            self.report_failure(uuid, content_type, seal, exc)
            if self.runtime.config.is_enforcing:
                raise
            logger.warning("monitor mode: serving attachment %s that failed verification", uuid)
            return data
        except StoreUnavailableError:
            logger.error("seal store unavailable while reading %s", uuid)
            if self.runtime.config.is_enforcing:
                raise
            return path.read_bytes()
        event = StorageEvent(uuid, content_type, seal, "", threading.get_ident(), READ, seal is not None, len(data))
        for hook in self.read_hooks:
            hook(event)
        return data

    def _check_unsealed(self, uuid: str, content_type: int, data: bytes) -> None:
        check_unsealed(uuid, content_type, self.runtime.config.unsealed_policy, self._is_legacy(data))

    def _is_legacy(self, data: bytes) -> bool:
        """Whether Orthanc received the instance of these bytes before sealing began."""
        if not self.sealing_since:
            return False
        try:
            sop = identify(data).sop_instance_uid
        except ValueError:
            return False
        instance_id = self.lookup_instance(sop)
        if instance_id is None:
            return False
        try:
            received = self.runtime.orthanc.RestApiGet(f"/instances/{instance_id}/metadata/ReceptionDate")
        except Exception:
            return False
        text = received.decode("utf-8", "replace") if isinstance(received, bytes) else str(received)
        return received_before(text.strip(), self.sealing_since)

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
        """Count, record, alert and tell the read hooks about a failed verification."""
        problem = f"{type(exc).__name__}: {exc}"
        logger.error("integrity failure on attachment %s type %d: %s", uuid, content_type, problem)
        self.runtime.metrics.increment(FAILURES_METRIC)
        now = self.runtime.clock()
        try:
            self.store.record_failure(uuid, content_type, problem, now)
        except StoreUnavailableError:
            logger.error("could not record the failure of %s in the seal store", uuid)
        requester = self.runtime.current_requester(Requester(transport=Transport.INTERNAL),
                                                   seal.series_uid if seal else "")
        try:
            security_alert(
                self.runtime, requester, "storage-read", problem,
                patient_id=seal.patient_id if seal else "",
                study_uid=seal.study_uid if seal else "",
                series_uid=seal.series_uid if seal else "",
            )
        except HardeningError:
            logger.error("could not audit the integrity failure of %s", uuid)
        event = StorageEvent(uuid, content_type, seal, problem, threading.get_ident(), READ, seal is not None, 0)
        for hook in self.read_hooks:
            hook(event)

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

    # -- remove --------------------------------------------------------------------------

    def remove(self, uuid: str, content_type: int) -> None:
        """Delete the file and record the removal (the seal row stays as evidence)."""
        content_type = int(content_type)
        path = attachment_path(self.root, uuid)
        _unlink(path)
        for directory in (path.parent, path.parent.parent):
            try:
                directory.rmdir()
            except OSError:
                break
        self.store.mark_removed(uuid, content_type, self.runtime.clock())

    # -- whole instances -----------------------------------------------------------------

    def attachments_of(self, instance_id: str) -> list[tuple[str, int, str]]:
        """``(name, content type, uuid)`` of each attachment of an instance (index only).

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
            info = json.loads(orthanc.RestApiGet(f"/instances/{instance_id}/attachments/{name}/info"))
            result.append((name, int(content_type), str(info["Uuid"])))
        return result

    def expected_identity(self, instance_id: str, parents: dict[str, Any] | None = None) -> InstanceIdentity:
        """What Orthanc's index says the instance is (UIDs and patient id).

        Args:
            instance_id: Orthanc's instance id.
            parents: a cache of series and study answers shared by the calls of one request.
        """
        orthanc = self.runtime.orthanc
        cache = parents if parents is not None else {}

        def get(uri: str) -> Any:
            if uri not in cache:
                cache[uri] = json.loads(orthanc.RestApiGet(uri))
            return cache[uri]

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
        )

    def verify_attachment(self, uuid: str, content_type: int, expected: InstanceIdentity | None) -> Seal | None:
        """Read one attachment from disk and verify it (seal, signature, identity, policy).

        Returns:
            Its seal, or ``None`` for legacy data served under ``serve-and-flag``.

        Raises:
            IntegrityError: any verification failure (also in monitor mode: callers decide).
        """
        record = self.store.get_record(uuid, content_type)
        seal = None if record is None else self.cache.parse(record)
        try:
            data = _read_file(attachment_path(self.root, uuid))
        except FileNotFoundError as exc:
            raise SealMismatchError(f"attachment {uuid} (type {content_type}): file is missing") from exc
        check = check_read(uuid, content_type, data, seal, self.keyring, self.cache, record)
        if check.seal is None:
            self._check_unsealed(uuid, content_type, data)
            return None
        if expected is not None and check.seal.sop_instance_uid:
            check_identity(check.seal, expected)
        return check.seal

    def check_instance(self, instance_id: str, attachments: list[tuple[str, int, str]] | None = None,
                       parents: dict[str, Any] | None = None) -> None:
        """Verify every attachment of an instance from disk (before a send on a job thread).

        Args:
            instance_id: Orthanc's instance id.
            attachments: its attachments when the caller already listed them.
            parents: a cache of series and study answers (see ``expected_identity``).

        Raises:
            NotFoundError: unknown instance.
            IntegrityError: an attachment does not verify; the message names the instance.
        """
        expected = self.expected_identity(instance_id, parents)
        for _name, content_type, uuid in attachments if attachments is not None else self.attachments_of(instance_id):
            try:
                self.verify_attachment(uuid, content_type, expected)
            except IntegrityError as exc:
                self.report_failure(uuid, content_type, self.store.get(uuid, content_type), exc)
                raise type(exc)(f"instance {instance_id}: {exc}") from exc

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

    # -- sealing existing data -----------------------------------------------------------

    def seal_existing(self, since: int, limit: int) -> dict[str, Any]:
        """Seal the legacy attachments of up to ``limit`` instances from index ``since``."""
        orthanc = self.runtime.orthanc
        ids = json.loads(orthanc.RestApiGet(f"/instances?since={since}&limit={limit}"))
        counts = {"instances": len(ids), "sealed": 0, "already_sealed": 0, "refused": 0}
        refused = []
        for instance_id in ids:
            for _name, content_type, uuid in self.attachments_of(instance_id):
                if self.store.get(uuid, content_type) is not None:
                    counts["already_sealed"] += 1
                    continue
                data = attachment_path(self.root, uuid).read_bytes()
                if not self._is_legacy(data):
                    counts["refused"] += 1
                    refused.append(instance_id)
                    self.report_failure(uuid, content_type, None, SealMissingError(
                        f"attachment {uuid} of instance {instance_id} was stored after sealing began and "
                        "has no seal; it is not sealed now"))
                    continue
                try:
                    identity = identify(data) if content_type in (DICOM, DICOM_UNTIL_PIXEL_DATA) else NO_IDENTITY
                except ValueError:
                    identity = NO_IDENTITY
                seal = seal_attachment(uuid, content_type, data, identity, self.keyring.signer,
                                       self.runtime.clock(), sealed_after_ingest=True)
                self.store.put(seal)
                counts["sealed"] += 1
        return {**counts, "refused_instances": sorted(set(refused)), "next": since + len(ids),
                "done": len(ids) < limit}


# -- files --------------------------------------------------------------------------------


def _write_file(final: Path, data: bytes, sync: bool) -> None:
    """Write an attachment where Orthanc would, fsync'ed when ``SyncStorageArea`` is on.

    The seal row is already committed: a crash while writing leaves a partial file with a
    seal row that Orthanc never indexed, which start-up reconciliation removes.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(final, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def _read_file(path: Path) -> bytes:
    """The whole file, read once into one ``bytes`` (sized by ``fstat``, no extra copy)."""
    with open(path, "rb", buffering=0) as handle:
        return handle.readall()


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


# -- start-up -----------------------------------------------------------------------------


def storage_root(runtime: Runtime) -> Path:
    """Orthanc's ``StorageDirectory`` (relative paths are taken from the working directory)."""
    return Path(str(runtime.orthanc_config.get("StorageDirectory", "OrthancStorage"))).absolute()


def load_sealing_since(store: SQLiteSealStore, keyring: keymod.KeyRing, now: dt.datetime) -> str:
    """The signed time sealing began (set at the first start); ``""`` if it does not verify."""
    value = store.get_meta(epoch.META_NAME)
    if value is None:
        value = epoch.orthanc_time(now)
        store.set_meta(epoch.META_SIGNATURE, epoch.sign_epoch(value, keyring.signer))
        store.set_meta(epoch.META_NAME, value)
        return value
    try:
        epoch.verify_epoch(value, store.get_meta(epoch.META_SIGNATURE) or "", keyring)
    except IntegrityError:
        logger.error("the signed start of sealing does not verify: every unsealed attachment is refused")
        return ""
    return value


def reconcile_files(root: Path, store: SQLiteSealStore, now: dt.datetime) -> list[Seal]:
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
            _unlink(attachment_path(storage.root, seal.uuid))
            storage.store.abandon(seal.uuid, seal.content_type, storage.runtime.clock())
    storage.store.set_meta("clean_through_rowid", str(clean_through))


# -- archives -----------------------------------------------------------------------------


def _resource_instances(runtime: Runtime, level: str, resource_id: str) -> list[str]:
    try:
        answer = json.loads(runtime.orthanc.RestApiGet(f"/{level}/{resource_id}/instances"))
    except Exception as exc:
        raise NotFoundError(f"{level[:-1]} {resource_id} is unknown") from exc
    return [str(item["ID"]) for item in answer]


def _tools_instances(runtime: Runtime, body: dict[str, Any]) -> list[str]:
    resources = body.get("Resources")
    if not isinstance(resources, list) or not all(isinstance(r, str) for r in resources):
        raise BadRequestError("Resources", "must be a list of Orthanc identifiers")
    instances: list[str] = []
    for resource in resources:
        found = None
        for level in ("patients", "studies", "series"):
            try:
                found = _resource_instances(runtime, level, resource)
                break
            except NotFoundError:
                continue
        if found is None:
            try:
                runtime.orthanc.RestApiGet(f"/instances/{resource}")
                found = [resource]
            except Exception as exc:
                raise NotFoundError(f"resource {resource} is unknown") from exc
        instances.extend(found)
    return instances


def _parse_body(body: bytes) -> dict[str, Any]:
    return parse_json_object(body, empty_ok=True)


class ArchiveRefusedError(IntegrityError):
    """An archive or media was refused because instances in it do not verify."""

    def __init__(self, failures: dict[str, str], message: str = "") -> None:
        names = ", ".join(sorted(failures))
        super().__init__(message or f"{len(failures)} instance(s) failed verification: {names}")
        self.failures = failures


@dataclass(frozen=True, slots=True)
class ArchiveJob:
    """An archive job started by the override: what it must contain, and the failure mark."""

    uuids: frozenset[str]
    instances: int
    failure_mark: int


def start_archive(storage: SealedStorage, uri: str, instances: list[str], job_body: dict[str, Any]) -> tuple[str, Any]:
    """Verify every instance from disk, then start Orthanc's archive job (asynchronous).

    Returns:
        The job id and Orthanc's answer to the job creation.

    Raises:
        ArchiveRefusedError: an instance failed verification (enforce mode).
    """
    runtime = storage.runtime
    failures: dict[str, str] = {}
    uuids: set[str] = set()
    parents: dict[str, Any] = {}
    for instance_id in instances:
        try:
            attachments = storage.attachments_of(instance_id)
            uuids.update(uuid for _n, _t, uuid in attachments)
            storage.check_instance(instance_id, attachments, parents)
        except IntegrityError as exc:
            failures[instance_id] = str(exc)
    if failures and runtime.config.is_enforcing:
        raise ArchiveRefusedError(failures)
    mark = storage.store.last_failure_id()
    body = {**job_body, "Asynchronous": True}
    body.pop("Synchronous", None)
    answer = json.loads(runtime.orthanc.RestApiPost(uri, json.dumps(body)))
    job_id = str(answer["ID"])
    with storage.jobs_lock:
        while len(storage.jobs) >= 10000:
            storage.jobs.pop(next(iter(storage.jobs)))
        storage.jobs[job_id] = ArchiveJob(frozenset(uuids), len(instances), mark)
    return job_id, answer


def archive_of_job(storage: SealedStorage, job_id: str) -> bytes:
    """The archive of a finished job, refused if a read failed while the job ran.

    Raises:
        ArchiveRefusedError: a read of the job's instances failed, or an instance is missing.
    """
    runtime = storage.runtime
    with storage.jobs_lock:
        job = storage.jobs.get(job_id)
    if job is not None and runtime.config.is_enforcing:
        late = [f for f in storage.store.failures_since(job.failure_mark) if f.uuid in job.uuids]
        if late:
            raise ArchiveRefusedError({f.uuid: f.problem for f in late})
    data = runtime.orthanc.RestApiGet(f"/jobs/{job_id}/archive")
    data = data if isinstance(data, bytes) else str(data).encode("latin-1")
    if job is not None and runtime.config.is_enforcing:
        _check_archive_complete(data, job.instances)
    return data


def make_archive(storage: SealedStorage, uri: str, instances: list[str], job_body: dict[str, Any]) -> bytes:
    """Verify every instance, build the archive as an asynchronous job, wait, return its bytes.

    Raises:
        ArchiveRefusedError: an instance failed verification (enforce mode), before or while
            Orthanc read it for the archive, or the archive lacks an instance.
        StoreUnavailableError: the job failed.
    """
    runtime = storage.runtime
    job_id, _answer = start_archive(storage, uri, instances, job_body)
    deadline = time.monotonic() + JOB_TIMEOUT_SECONDS
    while True:
        # time.sleep releases the GIL: the job thread needs it to run the storage read.
        time.sleep(JOB_POLL_SECONDS)
        state = json.loads(runtime.orthanc.RestApiGet(f"/jobs/{job_id}"))
        if state.get("State") in ("Success", "Failure") or time.monotonic() > deadline:
            break
    if state.get("State") != "Success":
        raise StoreUnavailableError(f"archive job {job_id} ended in state {state.get('State')}")
    try:
        return archive_of_job(storage, job_id)
    finally:
        with storage.jobs_lock:
            storage.jobs.pop(job_id, None)


def _check_archive_complete(data: bytes, expected: int) -> None:
    try:
        with zipfile.ZipFile(BytesIO(data)) as archive:
            names = [n for n in archive.namelist() if not n.endswith("/") and not n.upper().endswith("DICOMDIR")]
    except zipfile.BadZipFile as exc:
        raise SealInvalidError("the archive Orthanc produced is not a ZIP file") from exc
    if len(names) != expected:
        raise ArchiveRefusedError({}, f"the archive holds {len(names)} of {expected} instances; refused as a whole")


def _register_archives(runtime: Runtime, storage: SealedStorage) -> None:
    # Archives are started and fetched from a plugin thread, never from the HTTP thread
    # (Orthanc 1.13 crashes building a ZIP on a civetweb worker's stack: shell/offload.py).
    offloader = Offloader()
    runtime.stop_actions.append(offloader.stop)

    def offloaded(handler: Callable[[RestCall], Reply]) -> Callable[[RestCall], Reply]:
        def run(call: RestCall) -> Reply:
            return offloader.run(lambda: handler(call))

        return run

    def resource_archive(call: RestCall) -> Reply:
        level, resource_id, kind = call.groups
        instances = _resource_instances(runtime, level, resource_id)
        body = _parse_body(call.body) if call.method == "POST" else {}
        if call.method == "GET" and call.query.get("transcode"):
            body["Transcode"] = call.query["transcode"]
        if call.method == "GET" and kind == "media" and "extended" in call.query:
            body["Extended"] = True
        uri = f"/{level}/{resource_id}/{kind}"
        if body.get("Asynchronous") is True:
            return Reply(start_archive(storage, uri, instances, body)[1])
        return Reply(raw=make_archive(storage, uri, instances, body), content_type="application/zip")

    def tools_archive(call: RestCall) -> Reply:
        body = _parse_body(call.body)
        instances = _tools_instances(runtime, body)
        uri = f"/tools/{call.groups[0]}"
        if body.get("Asynchronous") is True:
            return Reply(start_archive(storage, uri, instances, body)[1])
        return Reply(raw=make_archive(storage, uri, instances, body), content_type="application/zip")

    def job_archive(call: RestCall) -> Reply:
        return Reply(raw=archive_of_job(storage, call.groups[0]), content_type="application/zip")

    register(runtime, ARCHIVE_ROUTE, {"GET": offloaded(resource_archive), "POST": offloaded(resource_archive)},
             name="archive")
    register(runtime, TOOLS_ARCHIVE_ROUTE, {"POST": offloaded(tools_archive)}, name="create-archive")
    register(runtime, JOB_ARCHIVE_ROUTE, {"GET": offloaded(job_archive)}, name="job-archive")


# -- REST ---------------------------------------------------------------------------------


def _register_routes(runtime: Runtime, storage: SealedStorage) -> None:
    config = runtime.config

    def seal_of_instance(call: RestCall) -> Reply:
        return Reply(storage.seal_report(call.groups[0]))

    def list_keys(call: RestCall) -> Reply:
        entries = keymod.read_registry(config.key_directory)
        current = storage.keyring.signer.key_id
        accepted = storage.keyring.public_keys()
        rows = []
        for kid in sorted(set(entries) | set(accepted)):
            entry = entries.get(kid)
            status = "current" if kid == current else "revoked" if entry and entry.is_revoked else "trusted"
            rows.append({
                "key_id": kid,
                "status": status,
                "algorithm": entry.algorithm if entry else "",
                "created_at": entry.created_at if entry else "",
                "retired_at": entry.retired_at if entry else "",
                "revoked_at": entry.revoked_at if entry else "",
                "source": "registry" if entry else "TrustedKeys",
                "public_key": accepted.get(kid, b"").decode("ascii"),
            })
        return Reply({"current": current, "keys": rows})

    def rotate(call: RestCall) -> Reply:
        passphrase = passphrase_from_env(config, os.environ)
        if not passphrase:
            raise BadRequestError("passphrase", f"{config.signing_key_passphrase_env} is not set")
        old, new = keymod.rotate_key(config.signing_key, config.key_directory, passphrase, runtime.clock())
        storage.keyring.replace_signer(new)
        runtime.audit.record(AuditEvent(
            time=runtime.clock(), event=EventCode.APPLICATION_ACTIVITY, action=Action.EXECUTE,
            outcome=Outcome.SUCCESS, transport=call.requester.transport, user=call.requester.user,
            roles=call.requester.roles, source_ip=call.requester.source_ip, route="/hardening/keys/rotate",
            detail=f"signing key rotated from {old.key_id} to {new.key_id}",
        ))
        logger.warning("signing key rotated from %s to %s", old.key_id, new.key_id)
        return Reply({"previous": old.key_id, "current": new.key_id, "algorithm": new.algorithm})

    def seal_existing(call: RestCall) -> Reply:
        body = _parse_body(call.body)
        since = body.get("Since", 0)
        limit = body.get("Limit", 1000)
        if type(since) is not int or since < 0:
            raise BadRequestError("Since", "must be a non-negative integer")
        if type(limit) is not int or not 1 <= limit <= 100000:
            raise BadRequestError("Limit", "must be an integer from 1 to 100000")
        return Reply(storage.seal_existing(since, limit))

    register(runtime, "/hardening/instances/([^/]+)/seal", {"GET": seal_of_instance}, name="seal")
    register(runtime, "/hardening/keys", {"GET": list_keys}, role=ADMINISTRATOR, name="keys")
    register(runtime, "/hardening/keys/rotate", {"POST": rotate}, role=ADMINISTRATOR, name="keys-rotate")
    register(runtime, "/hardening/seal-existing", {"POST": seal_existing}, role=ADMINISTRATOR, name="seal-existing")


# -- install ------------------------------------------------------------------------------


def _guarded(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """Log unexpected errors of a storage callback, then re-raise (Orthanc fails the operation)."""

    def callback(*args: Any) -> Any:
        try:
            return function(*args)
        except HardeningError:
            raise
        except FileNotFoundError:
            raise
        except Exception:
            logger.exception("storage %s failed", name)
            raise

    return callback


def install(runtime: Runtime) -> None:
    """Load keys, open the seal store, reconcile, and register the storage area and routes.

    Raises:
        ConfigError: a key cannot be loaded.
        StoreUnavailableError: the seal store cannot be opened.
    """
    config = runtime.config
    now = runtime.clock()
    keyring = keymod.load_key_ring(
        config.signing_key,
        passphrase_from_env(config, os.environ),
        config.key_directory,
        config.trusted_keys,
        now,
    )
    runtime.services["keyring"] = keyring
    root = storage_root(runtime)
    root.mkdir(parents=True, exist_ok=True)
    store = SQLiteSealStore(config.seal_database, config.sqlite_synchronous)
    storage = SealedStorage(runtime=runtime, root=root, store=store, keyring=keyring,
                            sync=bool(runtime.orthanc_config.get("SyncStorageArea", True)))
    storage.sealing_since = load_sealing_since(store, keyring, now)
    clean_through = store.max_rowid()
    suspects = reconcile_files(root, store, now)
    runtime.services["seal_store"] = store
    runtime.services["sealed_storage"] = storage
    runtime.services["read_hooks"] = storage.read_hooks
    runtime.services["write_hooks"] = storage.write_hooks
    runtime.services["integrity"] = storage
    runtime.metrics.set(FAILURES_METRIC, 0)

    keyring.add_listener(lambda _signer: storage.cache.clear())

    if runtime.capabilities.storage_area_ranges:
        # Python plugin 7.1 (Orthanc 1.13): a storage area with range reads. Orthanc then stores
        # no "DICOM until pixel data" attachment (it reads the header as a range of the DICOM
        # file), so an ingest seals and writes one file instead of two (measured: bench/RESULTS.md).
        runtime.orthanc.RegisterStorageArea3(
            _guarded("create", storage.create_v3), _guarded("read", storage.read_range),
            _guarded("remove", storage.remove_v3))
    else:
        runtime.orthanc.RegisterStorageArea(
            _guarded("create", storage.create), _guarded("read", storage.read), _guarded("remove", storage.remove)
        )
    _register_routes(runtime, storage)
    _register_archives(runtime, storage)

    started = runtime.orthanc.ChangeType.ORTHANC_STARTED

    def reconcile_on_start(change_type: int, _level: int, _resource: str) -> None:
        if change_type == started:
            reconcile_index(storage, suspects, clean_through)

    runtime.change_observers.append(reconcile_on_start)
    runtime.stop_actions.append(store.mark_clean)
    logger.info("sealed storage in %s, key %s, %d suspect rows", root, keyring.signer.key_id, len(suspects))


__all__ = ["SealedStorage", "answer_json", "install", "make_archive"]
