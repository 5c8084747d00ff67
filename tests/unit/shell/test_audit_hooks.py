"""The audit shell driven by FakeOrthanc: per-series events, catch-all reads, C-STORE, C-MOVE refusals."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import pytest

from orthanc_hardening.audit.event import EventCode, Outcome, Transport
from orthanc_hardening.config import HardeningConfig
from orthanc_hardening.errors import AccessDeniedError
from orthanc_hardening.identity import HttpRequest, Requester
from orthanc_hardening.shell.audit_hooks import AuditHooks
from orthanc_hardening.shell.cmove import MoveHandler
from orthanc_hardening.shell.metrics import Metrics
from orthanc_hardening.shell.runtime import Runtime
from tests.unit.fakes import FakeOrthanc, MemoryAuditSink

STUDY = "11111111-11111111-11111111-11111111-11111111"
SERIES = ["22222222-22222222-22222222-22222222-2222222" + str(i) for i in range(3)]
INSTANCE = "33333333-33333333-33333333-33333333-33333333"


@dataclass(frozen=True)
class FakeSeal:
    patient_id: str = "P-9"
    study_uid: str = "1.2.3"
    series_uid: str = "1.2.3.1"
    sop_instance_uid: str = "1.2.3.1.1"


@dataclass(frozen=True)
class FakeStorageEvent:
    content_type: int = 1
    seal: Any = FakeSeal()
    problem: str = ""


class FakeInstance:
    def GetInstanceRemoteAet(self) -> str:
        return "CT-SCANNER"


@pytest.fixture
def orthanc() -> FakeOrthanc:
    fake = FakeOrthanc({"DicomAet": "HARDENED"})
    fake.rest[("GET", f"/studies/{STUDY}")] = {
        "Series": SERIES, "MainDicomTags": {"StudyInstanceUID": "1.2.3"}, "PatientMainDicomTags": {"PatientID": "P-9"}}
    for index, series_id in enumerate(SERIES):
        fake.rest[("GET", f"/series/{series_id}")] = {
            "ParentStudy": STUDY, "MainDicomTags": {"SeriesInstanceUID": f"1.2.3.{index}"},
            "Instances": ["a"] * (index + 1)}
    fake.rest[("GET", f"/instances/{INSTANCE}")] = {"ParentSeries": SERIES[1]}
    fake.rest[("GET", "/jobs?expand")] = []
    return fake


@pytest.fixture
def hooks(orthanc: FakeOrthanc) -> AuditHooks:
    runtime = Runtime(orthanc=orthanc, config=HardeningConfig(auditors=("alice",)),
                      orthanc_config={"DicomAet": "HARDENED"}, metrics=Metrics(None), audit=MemoryAuditSink())
    return AuditHooks(runtime, writer=None, reader=None, keyring=None)  # type: ignore[arg-type]


def moves(hooks: AuditHooks) -> MoveHandler:
    # The checks these tests reach refuse before the destination's TLS or the instances are looked at.
    return MoveHandler(hooks.runtime, hooks, outgoing=None, storage=None)  # type: ignore[arg-type]


def sink(hooks: AuditHooks) -> MemoryAuditSink:
    audit = hooks.runtime.audit
    assert isinstance(audit, MemoryAuditSink)
    return audit


def request(hooks: AuditHooks, method: str, uri: str, user: str = "bob") -> HttpRequest:
    http = HttpRequest(method, uri, {}, {}, Requester(transport=Transport.REST, user=user, source_ip="10.1.1.1"))
    hooks.runtime.remember_request(http)
    return http


def test_study_archive_gives_one_event_per_series(hooks: AuditHooks) -> None:
    hooks.http_gate(request(hooks, "GET", f"/studies/{STUDY}/archive"))
    events = sink(hooks).events
    assert [(e.event, e.series_uid, e.instance_count, e.user) for e in events] == [
        (EventCode.INSTANCES_TRANSFERRED, f"1.2.3.{i}", i + 1, "bob") for i in range(3)]
    assert {e.patient_id for e in events} == {"P-9"}


def test_instance_read_names_its_series_and_covers_the_storage_read(hooks: AuditHooks) -> None:
    hooks.http_gate(request(hooks, "GET", f"/instances/{INSTANCE}/file"))
    hooks.read_hook(FakeStorageEvent(seal=FakeSeal(series_uid="1.2.3.1")))
    events = sink(hooks).events
    assert [(e.event, e.series_uid, e.instance_count) for e in events] == [(EventCode.INSTANCES_ACCESSED, "1.2.3.1", 1)]


def test_unknown_resource_is_a_minor_failure(hooks: AuditHooks, orthanc: FakeOrthanc) -> None:
    orthanc.rest[("GET", f"/instances/{STUDY}")] = ValueError("unknown resource")
    hooks.http_gate(request(hooks, "GET", f"/instances/{STUDY}/file"))
    (event,) = sink(hooks).events
    assert event.outcome is Outcome.MINOR_FAILURE and "unknown instances" in event.detail


def test_unclassified_http_read_is_recorded_once_per_series(hooks: AuditHooks) -> None:
    hooks.http_gate(request(hooks, "GET", "/webdav/by-uids/1.2.3/1.2.3.1/x.dcm"))
    for _ in range(3):
        hooks.read_hook(FakeStorageEvent())
    (event,) = sink(hooks).events
    assert (event.event, event.series_uid, event.route) == (
        EventCode.INSTANCES_ACCESSED, "1.2.3.1", "GET /webdav/by-uids/1.2.3/1.2.3.1/x.dcm")


def test_query_reads_are_covered_by_the_query_event(hooks: AuditHooks) -> None:
    hooks.http_gate(request(hooks, "POST", "/tools/find"))
    hooks.read_hook(FakeStorageEvent(content_type=3))
    assert [e.event for e in sink(hooks).events] == [EventCode.QUERY]


def test_cstore_import_carries_the_calling_aet(hooks: AuditHooks) -> None:
    done: list[None] = []

    def dicom_thread() -> None:  # a DICOM server thread: the filter never saw an HTTP request here
        assert hooks.cstore_gate(FakeInstance()) is None  # accepted: a gate refuses by raising
        hooks.write_hook(FakeStorageEvent())
        done.append(None)

    thread = threading.Thread(target=dicom_thread)
    thread.start()
    thread.join()
    (event,) = sink(hooks).events
    assert done and (event.event, event.transport, event.calling_aet, event.called_aet, event.route) == (
        EventCode.IMPORT, Transport.DIMSE, "CT-SCANNER", "HARDENED", "C-STORE")


def test_rest_upload_is_attributed_to_the_http_user(hooks: AuditHooks) -> None:
    hooks.http_gate(request(hooks, "POST", "/instances", user="carol"))
    assert sink(hooks).events == []
    hooks.write_hook(FakeStorageEvent())
    (event,) = sink(hooks).events
    assert (event.event, event.user, event.series_uid) == (EventCode.IMPORT, "carol", "1.2.3.1")


def test_presumed_cget_is_recorded_once_per_series_with_the_gap(hooks: AuditHooks) -> None:
    def dicom_thread() -> None:
        for _ in range(4):
            hooks.read_hook(FakeStorageEvent())

    thread = threading.Thread(target=dicom_thread)
    thread.start()
    thread.join()
    (event,) = sink(hooks).events
    assert (event.event, event.route, event.transport) == (EventCode.INSTANCES_TRANSFERRED, "C-GET", Transport.DIMSE)
    assert "no C-GET hook" in event.detail


def test_job_thread_reads_are_not_taken_for_cget(hooks: AuditHooks, orthanc: FakeOrthanc) -> None:
    orthanc.rest[("GET", "/jobs?expand")] = [{"State": "Running"}]
    thread = threading.Thread(target=lambda: hooks.read_hook(FakeStorageEvent()))
    thread.start()
    thread.join()
    assert sink(hooks).events == []


@pytest.mark.attack
def test_cmove_in_lockdown_is_refused_and_alerted(hooks: AuditHooks) -> None:
    hooks.runtime.lockdown = ("https-disabled",)
    with pytest.raises(AccessDeniedError, match="locked down"):
        moves(hooks).on_move(Level="STUDY", StudyInstanceUID="1.2.3", OriginatorAET="EVIL", TargetAET="EVIL",
                      SourceAET="HARDENED")
    (event,) = sink(hooks).events
    assert (event.event, event.calling_aet) == (EventCode.SECURITY_ALERT, "EVIL")


@pytest.mark.attack
def test_cmove_to_unknown_destination_is_refused(hooks: AuditHooks, orthanc: FakeOrthanc) -> None:
    orthanc.rest[("POST", "/tools/find")] = [INSTANCE]
    orthanc.rest[("GET", "/modalities?expand")] = {"pacs": {"AET": "PACS"}}
    with pytest.raises(AccessDeniedError, match="not a configured modality"):
        moves(hooks).on_move(Level="STUDY", StudyInstanceUID="1.2.3", OriginatorAET="SCU", TargetAET="ELSEWHERE")
    assert [e.event for e in sink(hooks).events] == [EventCode.SECURITY_ALERT]
