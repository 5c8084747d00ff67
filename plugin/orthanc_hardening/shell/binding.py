"""Reads bound to the request and to the index (``integrity/binding.py``), wired into Orthanc.

* ``ReadBinding.http_gate`` (an HTTP gate, before Orthanc serves): for a request that reads the
  stored bytes of resources it names (REST by Orthanc id, WADO-RS and WADO-URI by UIDs, series
  and study content, ``modify``/``anonymize``/``export`` sources), it lists the instances the
  index puts under what was asked for, and the attachments the index names for each, and checks
  with ``verify_bound`` that their seals name that very instance, series, study and patient
  (and the UIDs the request named). Index and seal store only: no file is read here; the storage
  read then verifies the bytes against the same seal. In enforce mode a wrong seal refuses the
  request (the HTTP filter's 403) with a Security Alert; monitor mode records the alert only.
* ``IndexBinding`` (called by the storage read, on every path and thread: HTTP, Orthanc 1.13's
  loader threads, job threads of sends and modifications, C-GET and C-MOVE on DICOM threads):
  the instance the seal of the attachment read names must be in the index, under its sealed
  parents, and the index must name this very attachment for it.

* ``scan_shared_attachments`` (at plugin start, before Orthanc opens its SQLite index): the
  attachments the index names for more than one instance. A read that the HTTP gate did not
  bind to its request (C-GET, sends to modalities and peers, ``/tools/*`` jobs, loader threads)
  cannot tell a read of such a file for its sealed instance from one for the instance whose
  row was copied onto it, so ``IndexBinding`` refuses every such read of it, and the storage
  area never deletes it (deleting the copy must not delete the original's file).

* Grants (the HTTP gate's: Orthanc 1.13 only): its storage-loader threads read apart from the request's
  thread, so a read cannot tell that the HTTP gate bound it (on 1.10 and 1.12 a read on the
  request's own thread is not checked against the index again: ``SealedStorage._bound_by_request``).
  Once every HTTP gate let a request through (``ReadBinding.grant_reads``, an HTTP observer:
  nothing is granted for a refused request), the next read of each file the gate bound takes
  what the gate established, once, for ``GRANT_SECONDS`` (a new grant replaces the last, never
  adds a read):

  - a shared file bound to its sealed instance passes the shared-file check (``grant``);
  - the file of the attachment type the route itself reads (``RequestedRead.reads``:
    ``/instances/{id}/file``, ``/instances/{id}/attachments/{dicom type}/data``) takes the two
    index facts the gate has just read, instance X indexed under series S (``GET
    /instances/X`` or the listing) and X naming this uuid at this type (``attachments_of``),
    instead of asking the index again (``bind``), and only if its seal names that X and S.
    That read still checks everything else as any read does: bytes and signature against the
    seal, the shared-file check, and the study and patient the index puts S under
    (``_series_parents``, remembered ``PARENTS_SECONDS`` as on every read).

  What a granted read trusts is the index's row of X and X's attachment row as the gate read
  them at most ``GRANT_SECONDS`` earlier. A read on the request's own thread trusts the gate's
  reading for the whole request and checks no parent; a grant is bounded in time, to one read
  of one file that the route reads, and the parents are checked. The window it leaves: a grant
  the request's own read has not taken yet, or never takes (Orthanc answered from its storage
  cache, which skips every verification and is a finding of the posture check; or the request
  failed before its read), can be taken by another read of that file in those seconds (a C-GET,
  a job, a loader-thread read of another request), which then does not see a change of those two
  rows made in the window. With the index in SQLite none can be made while Orthanc runs (it
  holds the index; an edit needs a restart, which drops every grant), and Orthanc's own
  deletion removes the file and the grant. With PostgreSQL it is a pointer *moved* by another
  node or by hand in those seconds (a pointer *copied* passes the index check anyway: the
  shared files above). A grant is dropped when its file is removed and when a read on the
  request's own thread takes that file; at most ``BOUND_REMEMBERED`` are kept (the oldest
  dropped: its read asks the index).

  A C-MOVE gives the same index grants on every version (``SealedStorage.grant_index_reads``):
  its check read each instance's row and attachment list and verified each file before the send,
  and the store job's reads run apart from any request. So does an archive or media once its
  check before the build verified every instance (``shell/archives.py``): the build's reads, on
  Orthanc's threads or a job's, still verify every byte.

* ``IndexBinding.facts`` (Orthanc before 1.12.2 with its SQLite index): an in-memory copy of
  the index facts the gates read (``integrity/index_facts.py``), loaded from the index file at
  start and kept by the storage area's ``create`` and ``remove`` (``created``, ``removed``). There
  the HTTP gate, the index binding and the audit trail's resolution (``shell/audit_hooks.py``)
  read it instead of calling Orthanc, which could deadlock with an instance read of
  orthanc-dicomweb in flight (README, "No single request stops, hangs or crashes it"). From
  1.12.2, or with the index in PostgreSQL (written by other nodes too), they call Orthanc.

What is left (README, "Reads bound to the request"): with an index in PostgreSQL, or an edit
made while Orthanc runs, a copied pointer is seen only by the requests the HTTP gate binds; on
Orthanc 1.13 with PostgreSQL, a pointer moved within ``GRANT_SECONDS`` of a gate's binding of
that file, by a read that takes a grant its request left (above).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from orthanc_hardening.errors import IntegrityError
from orthanc_hardening.identity import HttpRequest
from orthanc_hardening.integrity.binding import (
    DICOM_ATTACHMENTS,
    ExpectedRead,
    RequestedRead,
    WrongInstanceError,
    index_binding,
    requested_read,
    verify_bound,
    verify_not_shared,
)
from orthanc_hardening.integrity.index_facts import INSTANCE, IndexFacts
from orthanc_hardening.integrity.query import orthanc_ids_of_seal
from orthanc_hardening.seal.record import Seal
from orthanc_hardening.shell.guard import alert, mark_audited
from orthanc_hardening.shell.requester import internal_requester
from orthanc_hardening.shell.runtime import Runtime
from orthanc_hardening.stores.orthanc_index import load_index_facts, shared_attachments

logger = logging.getLogger(__name__)

BINDING_FAILURES = "binding_failures_total"
# How long a series' parents, read from the index, are reused by the storage read. Orthanc
# holds its SQLite index locked while it runs, so an edit there needs a restart (which empties
# this cache); with PostgreSQL an edit is seen at most this much later.
PARENTS_SECONDS = 5.0
PARENTS_REMEMBERED = 4096
# Reads of a shared file allowed (one per attachment the gate checked), and for how long, after
# the HTTP gate bound a request to its sealed instance (Orthanc 1.13 only: loader threads read
# apart from the request). A grant the request does not use (its bytes came from a cache) is
# left for that long.
GRANT_SECONDS = 5.0
GRANT_READS = 1
# Index grants (``IndexBinding.bind``) kept at most; the oldest is dropped first (its read then
# consults the index, as without a grant).
BOUND_REMEMBERED = 4096
# Security Alerts recorded one by one at start for attachments named for several instances.
SHARED_ALERTS = 100


class IndexBinding:
    """The index side of a read: the sealed instance is indexed where sealed, with this attachment."""

    def __init__(self, runtime: Runtime, clock: Callable[[], float] = time.monotonic) -> None:
        self.runtime = runtime
        self.clock = clock
        self._parents: OrderedDict[str, tuple[float, str, str]] = OrderedDict()
        self._lock = threading.Lock()
        # uuid -> every Orthanc id the index names it for, when more than one (at start).
        self.shared: dict[str, tuple[str, ...]] = {}
        # uuid -> (until, reads left): reads of a shared file the HTTP gate bound to its sealed
        # instance, for Orthanc 1.13, whose loader threads read apart from the request's thread.
        self._granted: dict[str, tuple[float, int]] = {}
        # uuid -> (until, reads left, instance id, series id): the index facts the HTTP gate read
        # for the request's own read of that file (Orthanc 1.13; ``bind``), oldest first.
        self._bound: OrderedDict[str, tuple[float, int, str, str]] = OrderedDict()
        # The index facts, where they stand in for calls into Orthanc (the module docstring).
        self.facts: IndexFacts | None = None

    def active_facts(self) -> IndexFacts | None:
        """The index facts, while they answer for the whole index; else ``None`` (call Orthanc)."""
        facts = self.facts
        return facts if facts is not None and facts.complete else None

    def created(self, seal: Seal) -> None:
        """The storage area stored an attachment: record it in the index facts (DICOM types)."""
        facts = self.facts
        if facts is None or int(seal.content_type) not in DICOM_ATTACHMENTS:
            return
        if not seal.sop_instance_uid:
            if int(seal.content_type) == 1 and facts.complete:
                logger.warning("a DICOM file without a readable identity was stored (StorageCompression?): "
                               "the gates call Orthanc's index from now on")
                facts.mark_incomplete()
            return
        facts.add_file(orthanc_ids_of_seal(seal), (seal.patient_id, seal.study_uid, seal.series_uid,
                                                   seal.sop_instance_uid), int(seal.content_type), seal.uuid)

    def removed(self, uuid: str) -> None:
        """The storage area removed an attachment: forget it in the index facts, drop its grants."""
        if self.facts is not None:
            self.facts.remove_file(uuid)
        if uuid in self._granted or uuid in self._bound:
            with self._lock:
                self._granted.pop(uuid, None)
                self._bound.pop(uuid, None)

    def grant(self, uuid: str) -> None:
        """Let the next few reads of a shared file pass: the HTTP gate bound a request to its sealed instance."""
        with self._lock:
            self._granted[uuid] = (self.clock() + GRANT_SECONDS, GRANT_READS)

    def _take_grant(self, uuid: str) -> bool:
        with self._lock:
            until, left = self._granted.pop(uuid, (0.0, 0))
            if left <= 0 or self.clock() > until:
                return False
            if left > 1:
                self._granted[uuid] = (until, left - 1)
            return True

    def bind(self, uuid: str, instance_id: str, series_id: str) -> None:
        """Let the next read of ``uuid`` take the index facts the HTTP gate just read (module docstring).

        The gate found, in Orthanc's index, instance ``instance_id`` under series ``series_id``
        naming this attachment, and its seal naming them. A read that takes this grant
        (``check``) does not ask the index for those two facts again; it still checks the seal,
        the bytes, the shared files and the series' study and patient. One read, for
        ``GRANT_SECONDS``; a new grant replaces the last (never adds reads).
        """
        now = self.clock()
        with self._lock:
            bound = self._bound
            bound[uuid] = (now + GRANT_SECONDS, GRANT_READS, instance_id, series_id)
            bound.move_to_end(uuid)
            while bound:
                oldest = next(iter(bound.values()))
                if oldest[0] >= now and len(bound) <= BOUND_REMEMBERED:
                    break
                bound.popitem(last=False)

    def release(self, uuid: str) -> None:
        """Drop the index grant of ``uuid``: a read bound on the request's own thread needed none."""
        if uuid in self._bound:
            with self._lock:
                self._bound.pop(uuid, None)

    def _take_bound(self, seal: Seal, instance_id: str, series_id: str) -> bool:
        """Take the index grant of ``seal``'s file if it is live and was given for this very instance and series."""
        if seal.uuid not in self._bound:
            return False
        with self._lock:
            until, left, granted_instance, granted_series = self._bound.pop(seal.uuid, (0.0, 0, "", ""))
            if left <= 0 or self.clock() > until:
                return False
            if left > 1:
                self._bound[seal.uuid] = (until, left - 1, granted_instance, granted_series)
        return granted_instance == instance_id and granted_series == series_id

    def _get(self, uri: str) -> Any | None:
        try:
            return json.loads(self.runtime.orthanc.RestApiGet(uri))
        except Exception:
            return None

    def _series_parents(self, series_id: str) -> tuple[str, str]:
        """``(study id, patient id)`` of a series as the index says (``""`` when unknown)."""
        now = self.clock()
        with self._lock:
            known = self._parents.get(series_id)
        if known is not None and now - known[0] < PARENTS_SECONDS:
            return known[1], known[2]
        series = self._get(f"/series/{series_id}") or {}
        study_id = str(series.get("ParentStudy", ""))
        study = (self._get(f"/studies/{study_id}") or {}) if study_id else {}
        patient = str(study.get("ParentPatient", ""))
        with self._lock:
            self._parents[series_id] = (now, study_id, patient)
            while len(self._parents) > PARENTS_REMEMBERED:
                self._parents.popitem(last=False)
        return study_id, patient

    def forget(self) -> None:
        """Drop the remembered parents (after a change of the index: a deletion)."""
        with self._lock:
            self._parents.clear()

    def check(self, seal: Seal, consult_index: bool = True) -> None:
        """Check that the index holds the instance ``seal`` names, under its sealed parents, with this attachment.

        Only DICOM attachments (types 1 to 3) sealed with an identity are bound: other types
        carry no identity in their seal (their instance is named by the index alone). With
        ``consult_index`` false (a read inside orthanc-dicomweb's call on Orthanc before 1.12.2,
        where a call into Orthanc hangs it) only the attachments found shared at start are
        checked: the rest is the HTTP gate's, which binds every DICOMweb read of stored bytes.

        Raises:
            WrongInstanceError: the index places the sealed instance elsewhere, does not hold
                it, names another attachment for it, or names this one for another instance too.
        """
        if seal.uuid in self.shared and not self._take_grant(seal.uuid):
            verify_not_shared(seal, self.shared[seal.uuid])
        name = DICOM_ATTACHMENTS.get(int(seal.content_type))
        if name is None or not seal.sop_instance_uid:
            return
        sealed = orthanc_ids_of_seal(seal)
        instance_id = sealed["Instance"]
        facts = self.active_facts()
        if facts is not None:
            verify_bound(seal, index_binding(seal, *indexed_by_facts(facts, instance_id, seal)))
            return
        if self._bound and self._take_bound(seal, instance_id, sealed["Series"]):
            # The HTTP gate read the instance's row and this attachment's row for this read
            # (``bind``); the series' study and patient are checked as on any read.
            study_id, patient = self._series_parents(sealed["Series"])
            verify_bound(seal, ExpectedRead(instance_id=instance_id, series_id=sealed["Series"], study_id=study_id,
                                            patient_id_hash=patient, uuid=seal.uuid, source="Orthanc's index"))
            return
        if not consult_index:
            return
        indexed = self._get(f"/instances/{instance_id}")
        indexed_uuid: str | None = None
        parents: dict[str, str] | None = None
        if isinstance(indexed, dict):
            info = self._get(f"/instances/{instance_id}/attachments/{name}/info")
            indexed_uuid = str(info["Uuid"]) if isinstance(info, dict) and "Uuid" in info else None
            series_id = str(indexed.get("ParentSeries", ""))
            study_id, patient = self._series_parents(series_id)
            parents = {"ID": str(indexed.get("ID", instance_id)), "ParentSeries": series_id,
                       "ParentStudy": study_id, "ParentPatient": patient}
        verify_bound(seal, index_binding(seal, parents, indexed_uuid))


def indexed_by_facts(facts: IndexFacts, instance_id: str, seal: Seal) -> tuple[dict[str, str] | None, str | None]:
    """What the index facts say of an instance, as ``index_binding`` takes it: parents and the uuid of this type."""
    if facts.level(instance_id) != INSTANCE:
        return None, None
    try:
        series_id = facts.parent(instance_id)
        study_id = facts.parent(series_id) if series_id else ""
        patient = facts.parent(study_id) if study_id else ""
    except KeyError:
        return None, None
    content_type = int(seal.content_type)
    if facts.names_file(instance_id, content_type, seal.uuid):
        uuid: str | None = seal.uuid
    else:
        named = [f.uuid for f in facts.files(instance_id) if f.content_type == content_type]
        uuid = named[0] if named else None
    return ({"ID": instance_id, "ParentSeries": series_id, "ParentStudy": study_id, "ParentPatient": patient},
            uuid)


class ReadBinding:
    """The request side of a read: the HTTP gate (see the module docstring)."""

    def __init__(self, runtime: Runtime, seal_of: Callable[[str, int], Seal | None],
                 attachments_of: Callable[[str], list[tuple[str, int, str]]],
                 index: IndexBinding | None = None) -> None:
        self.runtime = runtime
        # The seal of an attachment (``SealedStorage.sealed``: one select, parsed once per record).
        self.seal_of = seal_of
        self.attachments_of = attachments_of
        # Orthanc 1.13 reads on loader threads: what the gate bound is granted there (``grant_reads``).
        self.index = index if runtime.capabilities.loader_threads else None
        # HTTP thread -> (request, grants): what the gate bound for the request it is serving,
        # granted once every gate let the request through (``grant_reads``).
        self._pending: dict[int, tuple[HttpRequest, list[tuple[str, str, str, bool]]]] = {}
        # Before 1.12.2 with a SQLite index: the index facts instead of calls into Orthanc.
        self.facts_of: Callable[[], IndexFacts | None] = index.active_facts if index is not None else lambda: None

    def _get(self, uri: str) -> Any | None:
        try:
            return json.loads(self.runtime.orthanc.RestApiGet(uri))
        except Exception:
            return None

    def _lookup(self, uid: str, kind: str) -> list[str]:
        try:
            found = json.loads(self.runtime.orthanc.RestApiPost("/tools/lookup", uid))
        except Exception:
            return []
        return [str(item["ID"]) for item in found if isinstance(item, dict) and item.get("Type") == kind]

    def expected_reads(self, read: RequestedRead) -> list[tuple[str, ExpectedRead]]:
        """``(instance id, expectation)`` for every instance the index puts under what ``read`` names.

        An unknown resource gives no instance: Orthanc answers it with its own 404.
        """
        source = f"the request {read.route}"
        study_uid, series_uid, sop_uid = read.uids
        named = ExpectedRead(sop_instance_uid=sop_uid, series_uid=series_uid, study_uid=study_uid, source=source)
        facts = self.facts_of()
        if facts is not None:
            return expected_from_facts(facts, read, named)
        if read.level == "instances":
            ids = [read.resource] if read.resource else self._lookup(sop_uid, "Instance")
            found = []
            for instance_id in ids:
                # The series the index puts the instance in: a re-parented instance is refused here.
                indexed = self._get(f"/instances/{instance_id}")
                parent = str(indexed.get("ParentSeries", "")) if isinstance(indexed, dict) else ""
                found.append((instance_id, dataclasses.replace(named, instance_id=instance_id, series_id=parent)))
            return found
        if read.resource:
            groups = [(read.level, read.resource)]
        elif read.level == "series":
            groups = [("series", i) for i in self._lookup(series_uid, "Series")]
        else:
            groups = [("studies", i) for i in self._lookup(study_uid, "Study")]
        result = []
        for level, group in groups:
            listed = self._get(f"/{level}/{group}/instances")
            if not isinstance(listed, list):
                continue
            for item in listed:
                if not isinstance(item, dict) or "ID" not in item:
                    continue
                expected = dataclasses.replace(
                    named, instance_id=str(item["ID"]),
                    series_id=str(item.get("ParentSeries", "")) if level != "series" else group,
                    study_id=group if level == "studies" else "",
                    patient_id_hash=group if level == "patients" else "")
                result.append((str(item["ID"]), expected))
        return result

    def check_read(self, read: RequestedRead, grants: list[tuple[str, str, str, bool]] | None = None) -> None:
        """Check the seals of every attachment a request will read against what it asked for.

        Args:
            read: what the request reads.
            grants: where to add ``(uuid, instance id, series id, index grant)`` for each
                attachment bound that the storage read may take a grant for (Orthanc 1.13):
                a shared file (its shared-file check) and, when ``read.reads`` names its type, the
                index facts just read (``IndexBinding.bind``).

        Raises:
            WrongInstanceError: an attachment's seal names another instance (or parent).
        """
        facts = self.facts_of()
        for instance_id, expected in self.expected_reads(read):
            try:
                if facts is not None:
                    attachments = [(DICOM_ATTACHMENTS[f.content_type], f.content_type, f.uuid)
                                   for f in facts.files(instance_id)]
                else:
                    attachments = self.attachments_of(instance_id)
            except IntegrityError:
                raise
            except Exception:
                continue  # deleted meanwhile: Orthanc answers it
            for _name, content_type, uuid in attachments:
                if content_type not in DICOM_ATTACHMENTS:
                    continue
                seal = self.seal_of(uuid, content_type)
                if seal is None or not seal.sop_instance_uid:
                    continue  # unsealed: the storage read applies the unsealed policy
                verify_bound(seal, dataclasses.replace(expected, uuid=uuid))
                if grants is None or self.index is None:
                    continue
                # The gate read both facts the storage read would ask the index for: this
                # instance under this series, naming this attachment (``attachments_of``).
                index_grant = content_type in read.reads and bool(expected.instance_id and expected.series_id)
                if index_grant or uuid in self.index.shared:
                    grants.append((uuid, expected.instance_id, expected.series_id, index_grant))

    def grant_reads(self, request: HttpRequest) -> None:
        """HTTP observer (after every gate let the request through): grant what the gate bound for it.

        Nothing is granted for a request another gate refused: its reads never come.
        """
        pending = self._pending.pop(threading.get_ident(), None)
        if pending is None or pending[0] is not request or self.index is None:
            return
        for uuid, instance_id, series_id, index_grant in pending[1]:
            if uuid in self.index.shared:
                self.index.grant(uuid)
            if index_grant:
                self.index.bind(uuid, instance_id, series_id)

    def http_gate(self, request: HttpRequest) -> None:
        """HTTP gate: refuse (enforce) a read whose attachments are sealed for another instance.

        Raises:
            WrongInstanceError: in enforce mode, with its Security Alert already recorded.
        """
        thread = threading.get_ident()
        if self.index is not None:
            self._pending.pop(thread, None)  # a request refused after this gate left its own
        read = requested_read(request.method, request.uri, request.query)
        if read is None:
            return
        grants: list[tuple[str, str, str, bool]] | None = None
        if self.index is not None:
            grants = []
            self._pending[thread] = (request, grants)
        try:
            self.check_read(read, grants)
        except WrongInstanceError as exc:
            self.runtime.metrics.increment(BINDING_FAILURES)
            logger.error("read bound to the request refused: %s", exc)
            alert(self.runtime, request.requester, read.route, f"{type(exc).__name__}: {exc}")
            if self.runtime.config.is_enforcing:
                raise mark_audited(exc) from None
            logger.warning("monitor mode: serving %s although its seal names another instance", read.route)


LEVEL_OF_ROUTE = {"instances": "Instance", "series": "Series", "studies": "Study", "patients": "Patient"}


def expected_from_facts(facts: IndexFacts, read: RequestedRead, named: ExpectedRead) -> list[tuple[str, ExpectedRead]]:
    """``ReadBinding.expected_reads`` answered by the index facts: the same listing, no call into Orthanc."""
    study_uid, series_uid, sop_uid = read.uids
    if read.resource:
        groups = [read.resource] if facts.level(read.resource) == LEVEL_OF_ROUTE[read.level] else []
    elif read.level == "instances":
        groups = facts.lookup(sop_uid, "Instance")
    elif read.level == "series":
        groups = facts.lookup(series_uid, "Series")
    else:
        groups = facts.lookup(study_uid, "Study")
    result = []
    for group in groups:
        try:
            under = facts.instances_under(group)
        except KeyError:
            continue  # deleted meanwhile: Orthanc answers it
        for instance_id, series_id in under:
            result.append((instance_id, dataclasses.replace(
                named, instance_id=instance_id, series_id=series_id,
                study_id=group if read.level == "studies" else "",
                patient_id_hash=group if read.level == "patients" else "")))
    return result


def index_file(orthanc_config: Any) -> Path | None:
    """Orthanc's SQLite index file, or ``None`` when a database plugin (PostgreSQL) holds the index."""
    postgresql = orthanc_config.get("PostgreSQL")
    if isinstance(postgresql, dict) and postgresql.get("EnableIndex") is True:
        return None
    directory = orthanc_config.get("IndexDirectory", orthanc_config.get("StorageDirectory", "OrthancStorage"))
    return Path(str(directory)).absolute() / "index"


def scan_shared_attachments(runtime: Runtime, binding: IndexBinding) -> None:
    """At plugin start: find the attachments the index names for more than one instance.

    Orthanc opens its index after the plugins are loaded, so the SQLite file is read here, once
    (one grouped query). Each one found is a Security Alert once Orthanc has started.
    """
    path = index_file(runtime.orthanc_config)
    if path is None:
        logger.info("the index is in PostgreSQL: copied attachment pointers are bound by the HTTP gate only")
        return
    if not runtime.capabilities.shared_plugin_context:
        load_facts(binding, path)
    if not path.is_file():
        return  # a new installation: Orthanc creates the index
    try:
        binding.shared = shared_attachments(path)
    except Exception as exc:  # locked or unreadable: the HTTP gate and the index binding still apply
        logger.error("could not look for copied attachment pointers in %s: %s", path, exc)
        return
    if not binding.shared:
        return
    runtime.metrics.increment(BINDING_FAILURES, len(binding.shared))
    started = runtime.orthanc.ChangeType.ORTHANC_STARTED
    shared = dict(binding.shared)

    def alert_on_start(change_type: int, _level: int, _resource: str) -> None:
        if change_type != started:
            return
        for uuid, owners in sorted(shared.items())[:SHARED_ALERTS]:
            logger.error("Orthanc's index names attachment %s for %d instances", uuid, len(owners))
            alert(runtime, internal_requester(), "start",
                  f"WrongInstanceError: Orthanc's index names attachment {uuid} for {', '.join(owners)}: "
                  "a pointer was copied onto another instance's file; reads of it not bound to a request are "
                  "refused and it is never deleted")
        if len(shared) > SHARED_ALERTS:
            alert(runtime, internal_requester(), "start",
                  f"WrongInstanceError: {len(shared) - SHARED_ALERTS} more attachments are named for several "
                  "instances in Orthanc's index")

    runtime.change_observers.append(alert_on_start)


def load_facts(binding: IndexBinding, path: Path) -> None:
    """Before Orthanc opens its SQLite index: load the index facts (Orthanc before 1.12.2 only).

    A new installation starts with none (Orthanc creates an empty index); an index that cannot
    be read leaves the gates calling Orthanc, as from 1.12.2.
    """
    started = time.monotonic()
    try:
        binding.facts = load_index_facts(path) if path.is_file() else IndexFacts(threading.Lock())
    except Exception as exc:
        logger.error("could not load the index facts from %s (the gates call Orthanc's index): %s", path, exc)
        return
    logger.info("index facts: %d instances loaded from %s in %.2f s", len(binding.facts), path,
                time.monotonic() - started)


def install(runtime: Runtime, seal_of: Callable[[str, int], Seal | None],
            attachments_of: Callable[[str], list[tuple[str, int, str]]],
            index: IndexBinding | None = None) -> ReadBinding:
    """Register the HTTP gate that binds reads to the request."""
    binding = ReadBinding(runtime, seal_of, attachments_of, index)
    runtime.http_gates.append(binding.http_gate)
    if binding.index is not None:
        runtime.http_observers.append(binding.grant_reads)
    return binding
