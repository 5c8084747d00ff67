"""The audit trail wired into Orthanc: who viewed or changed each series, on every path.

``install(runtime)`` opens the audit store (``Hardening.Audit.Database``), starts the group-commit
writer (``runtime.audit``), records Application Activity (start; stop at shutdown) and hooks in:

* an HTTP gate (``runtime.http_gates``) that classifies each request (``audit/routes.py``),
  resolves the resource to patient / study / series through Orthanc's index
  (``orthanc.RestApiGet``: index only, safe in the filter) and records one event per series,
  durable before Orthanc serves the request. Enforce mode refuses the request when the event
  cannot be written (the HTTP filter can only answer 403); monitor mode logs and serves.
* a storage read hook: on an HTTP thread, any read the gate did not already cover (WebDAV, a
  route it does not know) gets its own per-series event before the bytes are returned; on a
  DICOM thread with no HTTP request and no C-MOVE in progress the read is a C-GET (the Python
  plugin 4.0 has no C-GET hook): the series is taken from the seal, the unknown requester is
  flagged in ``detail``, and ``Audit.RefuseUnattributedReads`` makes enforce mode refuse it.
  Reads on jobs-engine threads (archives, sends, modify) are covered by the event of the request
  that started the job.
* a C-STORE gate that stashes the calling AET per thread, and a storage write hook that records
  the Import (C) of each received instance — REST, STOW-RS or C-STORE — before Orthanc
  acknowledges it.
* the C-MOVE handler (``RegisterMoveCallback``): refuses in lockdown, verifies every instance
  (``runtime.services["integrity"]``), records Begin Transferring, sends asynchronously, polls,
  records Transferred with the outcome, and fails the C-MOVE when the send fails.
* ``GET /hardening/audit`` and ``GET /hardening/audit/verify`` (auditors only); reading the trail
  records Audit Log Used (110101).

Services: ``runtime.services["audit_store"]`` (the reader store, with ``read_after`` and cursors
for exporters), ``["audit_writer"]`` and ``["audit_recorder"]`` (``record_query`` for the C-FIND
handler, which another module registers).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from orthanc_hardening.audit.chain import StoredEvent, inspect_chain
from orthanc_hardening.audit.event import Action, AuditEvent, EventCode, Outcome, Transport
from orthanc_hardening.audit.orthanc_log import SOURCE_PLUGIN, orthanc_audit_log
from orthanc_hardening.audit.query import parse_query, render
from orthanc_hardening.audit.routes import Access, classify
from orthanc_hardening.audit.sink import AuditSink, Waiter
from orthanc_hardening.audit.witness import inspect_witness
from orthanc_hardening.config import HardeningConfig, redact_url
from orthanc_hardening.errors import (
    AccessDeniedError,
    StoreUnavailableError,
)
from orthanc_hardening.identity import AUDITOR, HttpRequest, Requester
from orthanc_hardening.integrity.index_facts import IndexFacts
from orthanc_hardening.seal.keys import KeyRing
from orthanc_hardening.services.audit_witness import AuditWitness, check_log_extends_witness
from orthanc_hardening.services.audit_writer import DONE, AuditWriter
from orthanc_hardening.shell.guard import alert
from orthanc_hardening.shell.orthanc_api import capabilities_of
from orthanc_hardening.shell.rest import Reply, RestCall, register
from orthanc_hardening.shell.runtime import Runtime
from orthanc_hardening.shell.storage import SealedStorage
from orthanc_hardening.stores.audit_store import AuditStore, open_store
from orthanc_hardening.stores.witness_file import WitnessFile

logger = logging.getLogger(__name__)

DICOM = 1
CGET_WINDOW_SECONDS = 30.0
CACHE_SIZE = 20000
AUDIT_ROUTE = "/hardening/audit"
VERIFY_ROUTE = "/hardening/audit/verify"
CGET_GAP = ("C-GET: the Python plugin (4.0 to 7.1) exposes no C-GET hook, so the requester's calling AET and IP are "
            "unknown; series from the verified seal")


@dataclass(frozen=True, slots=True)
class SeriesRef:
    """Identifiers of one series as the audit event names them."""

    patient_id: str
    study_uid: str
    series_uid: str
    instance_count: int = 0


class LenientSink:
    """Monitor mode: an audit write that fails is logged (and kept for retry), never raised."""

    def __init__(self, writer: AuditWriter) -> None:
        self.writer = writer

    def record(self, event: AuditEvent) -> None:
        try:
            self.writer.record(event)
        except StoreUnavailableError as exc:
            logger.error("monitor mode: audit event %s kept for retry: %s", event.event.code, exc)

    def record_many(self, events: list[AuditEvent]) -> None:
        try:
            self.writer.record_many(events)
        except StoreUnavailableError as exc:
            logger.error("monitor mode: %d audit events kept for retry: %s", len(events), exc)

    def submit(self, events: list[AuditEvent]) -> Waiter:
        try:
            return _LenientWait(self.writer.submit(events), len(events))
        except StoreUnavailableError as exc:
            logger.error("monitor mode: %d audit events kept for retry: %s", len(events), exc)
            return DONE


@dataclass(frozen=True)
class _LenientWait:
    pending: Waiter
    count: int

    def wait(self) -> None:
        try:
            self.pending.wait()
        except StoreUnavailableError as exc:
            logger.error("monitor mode: %d audit events kept for retry: %s", self.count, exc)


class _LRU:
    def __init__(self, size: int) -> None:
        self._size = size
        self._data: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> Any:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key: str, value: Any) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self._size:
                self._data.popitem(last=False)


class IndexResolver:
    """Orthanc ids and DICOM UIDs -> series identifiers, through Orthanc's index (cached).

    Orthanc ids are hashes of the DICOM UIDs, so an id always names the same UIDs: the cache never
    goes stale; instance counts are read fresh. Where the index facts stand in for Orthanc's
    index (``facts`` gives them: Orthanc before 1.12.2 with a SQLite index, ``shell/binding.py``)
    every answer comes from them and no call is made into Orthanc, which could deadlock there
    with an instance read of orthanc-dicomweb in flight.
    """

    def __init__(self, orthanc: Any, facts: Callable[[], IndexFacts | None] = lambda: None) -> None:
        self._orthanc = orthanc
        self._facts = facts
        self._instances = _LRU(CACHE_SIZE)  # instance id -> series id
        self._series = _LRU(CACHE_SIZE)  # series id -> (study id, series uid)
        self._studies = _LRU(CACHE_SIZE)  # study id -> (patient id, study uid)

    def _get(self, uri: str) -> Any:
        answer = self._orthanc.RestApiGet(uri)
        return json.loads(answer)

    def study(self, study_id: str) -> tuple[str, str]:
        facts = self._facts()
        if facts is not None:
            return facts.identifier(facts.parent(study_id)), facts.identifier(study_id)
        cached = self._studies.get(study_id)
        if cached is None:
            study = self._get(f"/studies/{study_id}")
            cached = (str(study.get("PatientMainDicomTags", {}).get("PatientID", "")),
                      str(study.get("MainDicomTags", {}).get("StudyInstanceUID", "")))
            self._studies.put(study_id, cached)
        return cached

    def series(self, series_id: str, count: bool = True) -> SeriesRef:
        facts = self._facts()
        if facts is not None:
            if facts.level(series_id) != "Series":
                raise KeyError(series_id)
            patient_id, study_uid = self.study(facts.parent(series_id))
            return SeriesRef(patient_id, study_uid, facts.identifier(series_id),
                             len(facts.children(series_id)) if count else 0)
        cached = self._series.get(series_id)
        instances = 0
        if cached is None or count:
            series = self._get(f"/series/{series_id}")
            tags = series.get("MainDicomTags", {})
            cached = (str(series.get("ParentStudy", "")), str(tags.get("SeriesInstanceUID", "")))
            instances = len(series.get("Instances", []))
            self._series.put(series_id, cached)
        patient_id, study_uid = self.study(cached[0])
        return SeriesRef(patient_id, study_uid, cached[1], instances)

    def instance(self, instance_id: str) -> SeriesRef:
        facts = self._facts()
        if facts is not None:
            if facts.level(instance_id) != "Instance":
                raise KeyError(instance_id)
            ref = self.series(facts.parent(instance_id), count=False)
            return SeriesRef(ref.patient_id, ref.study_uid, ref.series_uid, 1)
        series_id = self._instances.get(instance_id)
        if series_id is None:
            series_id = str(self._get(f"/instances/{instance_id}").get("ParentSeries", ""))
            self._instances.put(instance_id, series_id)
        ref = self.series(series_id, count=False)
        return SeriesRef(ref.patient_id, ref.study_uid, ref.series_uid, 1)

    def series_of(self, level: str, resource_id: str) -> list[SeriesRef]:
        """Every series of a resource (an instance gives its one series, count 1)."""
        if level == "instances":
            return [self.instance(resource_id)]
        if level == "series":
            return [self.series(resource_id)]
        facts = self._facts()
        if facts is not None:
            wanted = {"studies": "Study", "patients": "Patient"}.get(level)
            if wanted is None:
                raise ValueError(f"unknown level {level!r}")
            if facts.level(resource_id) != wanted:
                raise KeyError(resource_id)
            series = sorted({series_id for _instance, series_id in facts.instances_under(resource_id)})
            return [self.series(s) for s in series]
        if level == "studies":
            return [self.series(s) for s in self._get(f"/studies/{resource_id}").get("Series", [])]
        if level == "patients":
            refs: list[SeriesRef] = []
            for study_id in self._get(f"/patients/{resource_id}").get("Studies", []):
                refs.extend(self.series_of("studies", study_id))
            return refs
        raise ValueError(f"unknown level {level!r}")

    def lookup(self, uid: str, kind: str) -> str | None:
        """Orthanc id of the resource of type ``kind`` (Study/Series/Instance) with this UID."""
        facts = self._facts()
        if facts is not None:
            ids = facts.lookup(uid, kind)
            return ids[0] if ids else None
        found = json.loads(self._orthanc.RestApiPost("/tools/lookup", uid))
        for item in found:
            if item.get("Type") == kind:
                return str(item["ID"])
        return None

    def by_uids(self, study_uid: str, series_uid: str, sop_uid: str) -> tuple[str, str]:
        """``(level, id)`` of the most specific resource named by DICOMweb UIDs, or ``("", "")``."""
        for uid, kind, level in ((sop_uid, "Instance", "instances"), (series_uid, "Series", "series"),
                                 (study_uid, "Study", "studies")):
            if uid:
                found = self.lookup(uid, kind)
                return (level, found) if found else ("", "")
        return ("", "")


@dataclass
class _HttpState:
    request: HttpRequest
    covered: set[str] = field(default_factory=set)
    suppress: bool = False


class AuditHooks:
    """The audit trail's callbacks and routes (see the module docstring)."""

    def __init__(self, runtime: Runtime, writer: AuditWriter, reader: AuditStore, keyring: KeyRing,
                 facts: Callable[[], IndexFacts | None] = lambda: None) -> None:
        self.runtime = runtime
        self.keyring = keyring
        self.writer = writer
        self.reader = reader
        self.resolver = IndexResolver(runtime.orthanc, facts)
        self.our_aet = str(runtime.orthanc_config.get("DicomAet", "ORTHANC"))
        self._lock = threading.Lock()
        self._http: dict[int, _HttpState] = {}
        self._cstore: dict[int, str] = {}
        self._cget_seen: dict[str, float] = {}
        self.moves_in_progress = 0

    @contextlib.contextmanager
    def move_in_progress(self) -> Iterator[None]:
        """While a C-MOVE sends, DICOM-thread reads are its own, not a presumed C-GET."""
        with self._lock:
            self.moves_in_progress += 1
        try:
            yield
        finally:
            with self._lock:
                self.moves_in_progress -= 1

    # -- recording ----------------------------------------------------------------------

    def record(self, events: list[AuditEvent]) -> None:
        """Record events durably, in one commit (raises ``StoreUnavailableError`` in enforce mode)."""
        self.runtime.audit.record_many(events)

    def event(self, requester: Requester, code: EventCode, action: Action, route: str, ref: SeriesRef | None,
               detail: str, outcome: Outcome = Outcome.SUCCESS) -> AuditEvent:
        return AuditEvent(
            time=self.runtime.clock(), event=code, action=action, outcome=outcome, transport=requester.transport,
            user=requester.user, roles=requester.roles, source_ip=requester.source_ip,
            calling_aet=requester.calling_aet, called_aet=requester.called_aet, route=route,
            patient_id=ref.patient_id if ref else "", study_uid=ref.study_uid if ref else "",
            series_uid=ref.series_uid if ref else "", instance_count=ref.instance_count if ref else 0,
            detail=detail[:2000],
        )

    def record_query(self, requester: Requester, route: str, detail: str, outcome: Outcome = Outcome.SUCCESS,
                     patient_id: str = "", study_uid: str = "", series_uid: str = "") -> None:
        """Record a Query (110112), e.g. from the C-FIND handler. Raises ``StoreUnavailableError``."""
        ref = SeriesRef(patient_id, study_uid, series_uid)
        self.record([self.event(requester, EventCode.QUERY, Action.EXECUTE, route, ref, detail, outcome)])

    # -- HTTP gate ----------------------------------------------------------------------

    def http_gate(self, request: HttpRequest) -> None:
        """Record what the request does to DICOM data before Orthanc serves it."""
        thread = threading.get_ident()
        state = _HttpState(request)
        with self._lock:
            self._http[thread] = state
            self._cstore.pop(thread, None)
        if request.uri.startswith("/hardening/"):
            state.suppress = True  # plugin routes record their own events
            return
        access = classify(request.method, request.uri, request.query)
        if access is None:
            self._set_read_scope(thread, request, None, [])
            return
        if access.kind in ("upload", "query"):
            state.suppress = access.kind == "query"
        if access.kind == "upload":
            return  # the storage write hook records each received instance with its series
        events = self._events_for(request, access)
        state.covered.update(e.series_uid for e in events if e.series_uid)
        self._set_read_scope(thread, request, access, events)
        if access.kind in ("archive", "modify", "send", "delete", "change"):
            state.suppress = state.suppress or not access.has_resource
        self.record(events)

    def _set_read_scope(self, thread: int, request: HttpRequest, access: Access | None,
                        events: list[AuditEvent]) -> None:
        """Tell the in-flight registry which series this request may read (shell/inflight.py)."""
        series = [e.series_uid for e in events if e.series_uid]
        if series:
            self.runtime.in_flight.set_scope(thread, request, series)
        elif request.requester.transport is Transport.WEBDAV or (access is not None and access.kind == "access"):
            self.runtime.in_flight.set_scope(thread, request, None)

    def _events_for(self, request: HttpRequest, access: Access) -> list[AuditEvent]:
        requester = request.requester
        route = f"{request.method} {request.uri}"
        level, resource = access.level, access.resource
        try:
            if not resource and any(access.uids):
                level, resource = self.resolver.by_uids(*access.uids)
                if not resource:
                    study, series, sop = access.uids
                    ref = SeriesRef("", study, series)
                    return [self.event(requester, access.event, access.action, route, ref,
                                        f"{access.detail}; unknown UID {sop or series or study}",
                                        Outcome.MINOR_FAILURE)]
            if not resource:
                return [self.event(requester, access.event, access.action, route, None, access.detail)]
            refs = self.resolver.series_of(level, resource)
        except Exception:
            return [self.event(requester, access.event, access.action, route, None,
                                f"{access.detail}; unknown {level} {resource}", Outcome.MINOR_FAILURE)]
        if not refs:
            return [self.event(requester, access.event, access.action, route, None, access.detail)]
        if access.per_series:
            return [self.event(requester, access.event, access.action, route, ref, access.detail) for ref in refs]
        first = refs[0]
        same_study = all(r.study_uid == first.study_uid for r in refs)
        ref = SeriesRef(first.patient_id, first.study_uid if same_study else "",
                        first.series_uid if len(refs) == 1 else "", sum(r.instance_count for r in refs))
        return [self.event(requester, access.event, access.action, route, ref, access.detail)]

    # -- storage hooks ------------------------------------------------------------------

    def read_hook(self, event: Any) -> None:
        """Cover reads the HTTP gate did not (WebDAV, unknown routes) and C-GET."""
        if event.problem or event.seal is None or int(event.content_type) not in (1, 3):
            return
        seal = event.seal
        ref = SeriesRef(seal.patient_id, seal.study_uid, seal.series_uid, 1)
        found = self.runtime.request_for_read(seal.series_uid)
        if found is not None:
            thread, request = found
            with self._lock:
                state = self._http.get(thread)
                if state is None or state.request is not request:
                    state = _HttpState(request)
                    self._http[thread] = state
                if state.suppress or seal.series_uid in state.covered:
                    return
                state.covered.add(seal.series_uid)
            self.record([self.event(request.requester, EventCode.INSTANCES_ACCESSED, Action.READ,
                                      f"{request.method} {request.uri}", ref,
                                      "read of stored instance bytes on this request")])
            return
        if int(event.content_type) != DICOM or self.moves_in_progress > 0:
            return
        self._presumed_cget(ref)

    def _presumed_cget(self, ref: SeriesRef) -> None:
        # One event per series and window: on Orthanc 1.13 the reads of one C-GET run on
        # several loader threads, so the thread no longer tells one C-GET from another.
        config = self.runtime.config
        refuse = config.is_enforcing and config.audit.refuse_unattributed_reads
        key = ref.series_uid
        with self._lock:
            seen = self._cget_seen.get(key)
        if not refuse and seen is not None and time.monotonic() - seen < CGET_WINDOW_SECONDS:
            return
        if self._job_running():
            return  # a jobs-engine read (archive, send, modify): the request that started it is recorded
        requester = Requester(transport=Transport.DIMSE, called_aet=self.our_aet)
        if refuse:
            detail = "C-GET refused: Hardening.Audit.RefuseUnattributedReads (requester unknown)"
            self.alert(requester, "C-GET", detail, ref)
            raise AccessDeniedError(detail)
        with self._lock:
            # Checked and marked at once: loader threads read the instances of one C-GET in parallel.
            now = time.monotonic()
            seen = self._cget_seen.get(key)
            if seen is not None and now - seen < CGET_WINDOW_SECONDS:
                return
            if len(self._cget_seen) > 10000:
                self._cget_seen.clear()
            self._cget_seen[key] = now
        self.record([self.event(requester, EventCode.INSTANCES_TRANSFERRED, Action.READ, "C-GET", ref, CGET_GAP)])

    def _job_running(self) -> bool:
        try:
            jobs = json.loads(self.runtime.orthanc.RestApiGet("/jobs?expand"))
        except Exception:
            return False
        return any(job.get("State") == "Running" for job in jobs)

    def cstore_gate(self, instance: Any) -> None:
        """Remember the calling AET of the C-STORE about to be stored on this thread."""
        try:
            aet = str(instance.GetInstanceRemoteAet())
        except Exception:
            aet = ""
        with self._lock:
            self._cstore[threading.get_ident()] = aet

    def write_hook(self, event: Any) -> Waiter | None:
        """Start the Import (C) of a received instance; the storage area waits for it before acknowledging.

        Called before the file is written: the append's commit overlaps the file's write and flush
        (``SealedStorage.create`` waits for both before Orthanc acknowledges the instance).
        """
        if int(event.content_type) != DICOM or event.seal is None:
            return None
        seal = event.seal
        ref = SeriesRef(seal.patient_id, seal.study_uid, seal.series_uid, 1)
        thread = threading.get_ident()
        with self._lock:
            aet = self._cstore.pop(thread, None)
        sop = f"SOP instance {seal.sop_instance_uid}"
        if aet is not None:
            requester = Requester(transport=Transport.DIMSE, calling_aet=aet, called_aet=self.our_aet)
            return self.runtime.audit.submit([self.event(
                requester, EventCode.IMPORT, Action.CREATE, "C-STORE", ref,
                f"C-STORE received; {sop}; peer IP not exposed by the plugin API")])
        request = self.runtime.current_request()
        if request is not None:
            return self.runtime.audit.submit([self.event(request.requester, EventCode.IMPORT, Action.CREATE,
                                                         f"{request.method} {request.uri}", ref, f"upload; {sop}")])
        requester = Requester(transport=Transport.INTERNAL)
        return self.runtime.audit.submit([self.event(
            requester, EventCode.IMPORT, Action.CREATE, "job", ref,
            f"created by an Orthanc job (modify, anonymize, retrieve…); {sop}; the "
            "requester is in the event of the request that started the job")])

    def alert(self, requester: Requester, route: str, detail: str, ref: SeriesRef | None = None) -> None:
        """Record a Security Alert naming the series (never raises)."""
        identity: dict[str, Any] = {
            "patient_id": ref.patient_id, "study_uid": ref.study_uid, "series_uid": ref.series_uid} if ref else {}
        alert(self.runtime, requester, route, detail, **identity)

    # -- REST ---------------------------------------------------------------------------

    def audit_route(self, call: RestCall) -> Reply:
        query = parse_query(call.query, self.runtime.config.audit.max_query_limit)
        events = self.reader.query(query)
        self.record([self._log_used(call, f"query {_query_string(call.query)}; {len(events)} events")])
        body, content_type = render(events, query)
        return Reply(raw=body, content_type=content_type)

    def verify_route(self, call: RestCall) -> Reply:
        witness_path = self.runtime.config.audit.witness_file
        lines = WitnessFile(witness_path).lines() if witness_path is not None and witness_path.exists() else []
        wanted = {line.seq for line in lines}
        hash_at: dict[int, str] = {}

        def rows() -> Iterator[StoredEvent]:
            for row in self.reader.iter_rows():
                if row.seq in wanted:
                    hash_at[row.seq] = row.hash
                yield row

        report = inspect_chain(rows(), self.reader.checkpoints(), self.keyring)
        answer = report.as_dict()
        witness_problems = inspect_witness(lines, hash_at, report.last_seq, self.keyring) if lines else []
        if witness_path is not None:
            answer["witness"] = {"file": str(witness_path), "lines": len(lines),
                                 "last_seq": lines[-1].seq if lines else 0, "problems": witness_problems}
        ok = report.ok and not witness_problems
        self.record([self._log_used(call, f"verify: {'ok' if ok else 'BROKEN'}")])
        if not ok:
            first = report.problems[:1] if not report.ok else witness_problems[:1]
            where = f"seq {report.first_broken_seq}" if not report.ok else "a witnessed checkpoint"
            self.alert(call.requester, VERIFY_ROUTE, f"audit chain broken at {where}: {first}")
            return Reply({"error": "integrity check failed", "detail": f"audit chain broken at {where}",
                          **answer, "ok": False}, status=409)
        return Reply(answer)

    def _log_used(self, call: RestCall, detail: str) -> AuditEvent:
        return self.event(call.requester, EventCode.AUDIT_LOG_USED, Action.READ, f"{call.method} {call.uri}", None,
                           detail)


def _query_string(query: dict[str, str] | Any) -> str:
    return "&".join(f"{k}={v}" for k, v in sorted(dict(query).items()))[:500]


def _application_activity(runtime: Runtime, detail: str) -> AuditEvent:
    return AuditEvent(time=runtime.clock(), event=EventCode.APPLICATION_ACTIVITY, action=Action.EXECUTE,
                      outcome=Outcome.SUCCESS, transport=Transport.INTERNAL, user="orthanc-hardening",
                      called_aet=str(runtime.orthanc_config.get("DicomAet", "ORTHANC")), route="plugin",
                      detail=detail)


@dataclass(frozen=True)
class AuditTrail:
    """The opened audit trail: the writer (and its sink), a reader, Orthanc's audit-log emitter."""

    writer: AuditWriter
    reader: AuditStore
    sink: AuditSink
    emitter: OrthancAuditLogs | None
    witness: AuditWitness | None = None


def open_trail(orthanc: Any, config: HardeningConfig, keys: KeyRing, clock: Callable[[], Any]) -> AuditTrail:
    """Open the audit store and start its writer (before any other feature: they all record).

    Raises:
        StoreUnavailableError: the audit store cannot be opened; Orthanc must not serve without
            its audit trail.
        AuditChainError: the log does not extend the newest checkpoint its witness holds (it
            was cut or rewritten); the plugin must not sign a checkpoint over it.
    """
    emitter = OrthancAuditLogs(orthanc) if capabilities_of(orthanc).emit_audit_log else None
    witness: AuditWitness | None = None
    try:
        store = open_store(config.audit.database, config.sqlite_synchronous, config.audit_schema)
        reader = open_store(config.audit.database, config.sqlite_synchronous, config.audit_schema)
        if config.audit.witness_file is not None:
            witness_file = WitnessFile(config.audit.witness_file)
            # Before the writer exists: its first commit signs the head.
            last = check_log_extends_witness(store, witness_file, keys)
            witness = AuditWitness(witness_file, last, lambda: keys.signer, clock)
        writer = AuditWriter(store, lambda: keys.signer, clock, config.audit.checkpoint_every,
                             config.audit.checkpoint_seconds, keep_failed=not config.is_enforcing,
                             on_commit=emitter, on_checkpoint=witness)
    except StoreUnavailableError:
        logger.error("audit store %s cannot be opened", redact_url(config.audit.database))
        raise
    sink: AuditSink = writer if config.is_enforcing else LenientSink(writer)
    return AuditTrail(writer, reader, sink, emitter, witness)


def install(runtime: Runtime, trail: AuditTrail, storage: SealedStorage) -> AuditHooks:
    """Wire the audit trail into Orthanc (see the module docstring)."""
    config = runtime.config
    writer = trail.writer
    facts = storage.index_binding.active_facts if storage.index_binding is not None else (lambda: None)
    hooks = AuditHooks(runtime, writer, trail.reader, storage.keyring, facts)
    runtime.audit.record(_application_activity(runtime, f"orthanc-hardening started ({config.mode.value} mode)"))

    def stop() -> None:
        try:
            runtime.audit.record(_application_activity(runtime, "orthanc-hardening stopping"))
        finally:
            writer.close()

    runtime.stop_actions.append(stop)
    runtime.http_gates.append(hooks.http_gate)
    runtime.cstore_gates.append(hooks.cstore_gate)
    storage.read_hooks.append(hooks.read_hook)
    storage.write_hooks.append(hooks.write_hook)
    if trail.emitter is not None:
        emitter = trail.emitter
        started = runtime.orthanc.ChangeType.ORTHANC_STARTED

        def emit_once_started(change_type: int, _level: int, _resource: str) -> None:
            if change_type == started:
                emitter.start()

        runtime.change_observers.append(emit_once_started)
    register(runtime, AUDIT_ROUTE, {"GET": hooks.audit_route}, role=AUDITOR, name="audit")
    register(runtime, VERIFY_ROUTE, {"GET": hooks.verify_route}, role=AUDITOR, name="audit-verify")
    _watch_metrics(runtime, writer)
    logger.info("audit trail in %s (head %s)", redact_url(config.audit.database), writer.head)
    return hooks


class OrthancAuditLogs:
    """Where Orthanc has ``EmitAuditLog`` (1.12.9+, Python plugin 7.0+): every committed event
    also becomes one of Orthanc's own audit logs (``audit/orthanc_log.py``), for the plugins
    that handle them. Observes the writer's commits on its thread.

    Orthanc ignores audit logs emitted while plugins initialise (the start event is committed
    then): they wait here until ``start`` (Orthanc has started).
    """

    def __init__(self, orthanc: Any) -> None:
        self._orthanc = orthanc
        self._types = {"SERIES": orthanc.ResourceType.SERIES, "STUDY": orthanc.ResourceType.STUDY,
                       "PATIENT": orthanc.ResourceType.PATIENT, "NONE": orthanc.ResourceType.NONE}
        self._lock = threading.Lock()
        self._waiting: list[StoredEvent] | None = []

    def _send(self, rows: list[StoredEvent]) -> None:
        for row in rows:
            log = orthanc_audit_log(row)
            self._orthanc.EmitAuditLog(SOURCE_PLUGIN, log.user_id, self._types[log.level], log.resource_id,
                                       log.action, log.log_data)

    def __call__(self, rows: list[StoredEvent]) -> None:
        with self._lock:
            if self._waiting is not None:
                self._waiting.extend(rows)
                return
            self._send(rows)

    def start(self) -> None:
        """Orthanc has started: emit what waited, then every commit as it comes."""
        with self._lock:
            rows, self._waiting = self._waiting or [], None
            self._send(rows)


def _watch_metrics(runtime: Runtime, writer: AuditWriter) -> None:
    def refresh_audit_metrics(request: HttpRequest) -> None:
        if request.uri == "/tools/metrics-prometheus":
            runtime.metrics.set("audit_store_failures_total", writer.failures)
            runtime.metrics.set("audit_backlog", writer.backlog)
            runtime.metrics.set("audit_last_seq", (writer.head or (0, ""))[0])

    runtime.http_observers.append(refresh_audit_metrics)


__all__: list[str] = ["AuditHooks", "IndexResolver", "LenientSink", "install"]
