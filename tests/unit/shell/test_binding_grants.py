"""Orthanc 1.13: a read the HTTP gate bound takes the gate's reading of the index, once, briefly.

The fake Orthanc answers the index calls the gate and the storage read make, and counts them: a
granted read asks the index for neither the instance nor its attachment again.
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest

from orthanc_hardening.audit.event import Transport
from orthanc_hardening.identity import HttpRequest, Requester
from orthanc_hardening.integrity.binding import WrongInstanceError
from orthanc_hardening.integrity.query import orthanc_ids_of_seal
from orthanc_hardening.seal.record import seal_attachment
from orthanc_hardening.shell.binding import GRANT_SECONDS, IndexBinding, ReadBinding
from tests.unit.fakes import MemoryAuditSink
from tests.unit.integrity.test_binding import PATIENT_A, PATIENT_B, UUID_A, UUID_B
from tests.unit.seal.conftest import NOW, fixed_signer

HEADER_A = "2f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9"
NAMES = {1: "dicom", 3: "dicom-until-pixel-data"}


class IndexedOrthanc:
    """Orthanc's index for the REST calls the gates make; ``calls`` lists every call."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        # instance id -> series id; instance id -> {type: uuid}; series -> study; study -> patient
        self.parent: dict[str, str] = {}
        self.files: dict[str, dict[int, str]] = {}

    def index(self, seal: Any) -> str:
        ids = orthanc_ids_of_seal(seal)
        self.parent.update({ids["Instance"]: ids["Series"], ids["Series"]: ids["Study"], ids["Study"]: ids["Patient"]})
        self.files.setdefault(ids["Instance"], {})[int(seal.content_type)] = seal.uuid
        return ids["Instance"]

    def RestApiGet(self, uri: str) -> str:
        self.calls.append(uri)
        parts = uri.strip("/").split("/")
        level, resource = parts[0], parts[1]
        if level == "instances" and resource in self.files:
            if len(parts) == 2:
                return json.dumps({"ID": resource, "ParentSeries": self.parent[resource]})
            by_name = {NAMES[t]: (t, u) for t, u in self.files[resource].items()}
            if parts[2:] == ["attachments?full"]:
                return json.dumps({name: t for name, (t, _u) in by_name.items()})
            if parts[2] == "attachments" and parts[3] in by_name and parts[4] == "info":
                return json.dumps({"Uuid": by_name[parts[3]][1]})
        if level == "series" and resource in self.parent:
            return json.dumps({"ParentStudy": self.parent[resource]})
        if level == "studies" and resource in self.parent:
            return json.dumps({"ParentPatient": self.parent[resource]})
        raise RuntimeError(f"unknown resource {uri}")

    def attachments_of(self, instance_id: str) -> list[tuple[str, int, str]]:
        listed = json.loads(self.RestApiGet(f"/instances/{instance_id}/attachments?full"))
        return [(name, int(t), json.loads(self.RestApiGet(f"/instances/{instance_id}/attachments/{name}/info"))["Uuid"])
                for name, t in sorted(listed.items())]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def world():
    signer = fixed_signer()
    seal_a = seal_attachment(UUID_A, 1, b"A" * 64, PATIENT_A, signer, NOW)
    header_a = seal_attachment(HEADER_A, 3, b"A" * 16, PATIENT_A, signer, NOW)
    seal_b = seal_attachment(UUID_B, 1, b"B" * 64, PATIENT_B, signer, NOW)
    orthanc = IndexedOrthanc()
    a = orthanc.index(seal_a)
    orthanc.index(header_a)
    b = orthanc.index(seal_b)
    seals = {(s.uuid, int(s.content_type)): s for s in (seal_a, header_a, seal_b)}
    runtime = SimpleNamespace(orthanc=orthanc, capabilities=SimpleNamespace(loader_threads=True),
                              metrics=SimpleNamespace(increment=lambda *_a: None),
                              config=SimpleNamespace(is_enforcing=True), audit=MemoryAuditSink(), clock=lambda: NOW)
    clock = Clock()
    index = IndexBinding(runtime, clock)  # type: ignore[arg-type]
    gate = ReadBinding(runtime, lambda u, t: seals.get((u, t)), orthanc.attachments_of, index)  # type: ignore[arg-type]
    return SimpleNamespace(orthanc=orthanc, index=index, gate=gate, clock=clock, seal_a=seal_a, header_a=header_a,
                           seal_b=seal_b, a=a, b=b)


def request(uri: str) -> HttpRequest:
    return HttpRequest("GET", uri, {}, {}, Requester(transport=Transport.REST, user="viewer"))


def let_through(gate: ReadBinding, uri: str) -> HttpRequest:
    """The HTTP filter: this gate, then (every gate having passed) the observer that grants."""
    incoming = request(uri)
    gate.http_gate(incoming)
    gate.grant_reads(incoming)
    return incoming


def calls_of_check(w: Any, seal: Any) -> list[str]:
    before = len(w.orthanc.calls)
    w.index.check(seal)
    return w.orthanc.calls[before:]


def instance_calls(calls: list[str]) -> list[str]:
    return [c for c in calls if c.startswith("/instances/")]


def test_read_the_gate_bound_skips_both_index_calls(world):
    w = world
    let_through(w.gate, f"/instances/{w.a}/file")
    assert instance_calls(calls_of_check(w, w.seal_a)) == []


def test_read_nobody_bound_still_consults_the_index(world):
    w = world
    assert instance_calls(calls_of_check(w, w.seal_a)) == [
        f"/instances/{w.a}", f"/instances/{w.a}/attachments/dicom/info"]


def test_grant_is_used_once(world):
    w = world
    let_through(w.gate, f"/instances/{w.a}/file")
    assert instance_calls(calls_of_check(w, w.seal_a)) == []
    assert len(instance_calls(calls_of_check(w, w.seal_a))) == 2
    # A second request replaces the grant, it never adds reads to it.
    let_through(w.gate, f"/instances/{w.a}/file")
    let_through(w.gate, f"/instances/{w.a}/file")
    assert instance_calls(calls_of_check(w, w.seal_a)) == []
    assert len(instance_calls(calls_of_check(w, w.seal_a))) == 2


def test_grant_expires(world):
    w = world
    let_through(w.gate, f"/instances/{w.a}/file")
    w.clock.now += GRANT_SECONDS + 0.1
    assert len(instance_calls(calls_of_check(w, w.seal_a))) == 2


def test_only_the_file_the_route_reads_is_granted(world):
    w = world
    let_through(w.gate, f"/instances/{w.a}/preview")  # the route does not say what it reads
    assert len(instance_calls(calls_of_check(w, w.seal_a))) == 2
    assert len(instance_calls(calls_of_check(w, w.header_a))) == 2
    let_through(w.gate, f"/instances/{w.a}/file")
    assert len(instance_calls(calls_of_check(w, w.header_a))) == 2  # /file reads the DICOM file only
    let_through(w.gate, f"/instances/{w.a}/attachments/dicom-until-pixel-data/data")
    assert instance_calls(calls_of_check(w, w.header_a)) == []


def test_nothing_is_granted_for_a_request_a_later_gate_refused(world):
    w = world
    w.gate.http_gate(request(f"/instances/{w.a}/file"))  # the next gate refused: no observer ran
    let_through(w.gate, f"/instances/{w.b}/file")  # the thread's next request
    assert len(instance_calls(calls_of_check(w, w.seal_a))) == 2
    assert instance_calls(calls_of_check(w, w.seal_b)) == []


def test_grant_of_one_file_is_not_taken_by_another(world):
    w = world
    let_through(w.gate, f"/instances/{w.a}/file")
    assert len(instance_calls(calls_of_check(w, w.seal_b))) == 2
    assert instance_calls(calls_of_check(w, w.seal_a)) == []


def test_removed_file_and_a_read_on_the_requests_own_thread_drop_the_grant(world):
    w = world
    let_through(w.gate, f"/instances/{w.a}/file")
    w.index.removed(UUID_A)
    assert len(instance_calls(calls_of_check(w, w.seal_a))) == 2
    let_through(w.gate, f"/instances/{w.a}/file")
    w.index.release(UUID_A)
    assert len(instance_calls(calls_of_check(w, w.seal_a))) == 2


def test_granted_read_still_checks_the_series_parents(world):
    w = world
    let_through(w.gate, f"/instances/{w.a}/file")
    ids_a, ids_b = orthanc_ids_of_seal(w.seal_a), orthanc_ids_of_seal(w.seal_b)
    w.orthanc.parent[ids_a["Series"]] = ids_b["Study"]  # A's series re-parented under B's study
    with pytest.raises(WrongInstanceError, match="study"):
        w.index.check(w.seal_a)


@pytest.mark.attack
def test_pointer_moved_after_the_grant_was_taken_is_refused(world):
    w = world
    let_through(w.gate, f"/instances/{w.a}/file")
    w.index.check(w.seal_a)  # the request's own read takes the grant
    # Then the index swaps A's and B's files (a live edit of an index in PostgreSQL).
    w.orthanc.files[w.a][1], w.orthanc.files[w.b][1] = UUID_B, UUID_A
    with pytest.raises(WrongInstanceError, match="attachment"):
        w.index.check(w.seal_a)  # a C-GET of B reads A's file: the index names B's file for A
    with pytest.raises(WrongInstanceError):
        w.gate.http_gate(request(f"/instances/{w.b}/file"))  # B's row names A's sealed file


@pytest.mark.attack
def test_gate_grants_nothing_for_a_file_sealed_for_another_instance(world):
    w = world
    w.orthanc.files[w.a][1] = UUID_B  # A's row points at B's file
    with pytest.raises(WrongInstanceError):
        let_through(w.gate, f"/instances/{w.a}/file")
    assert len(instance_calls(calls_of_check(w, w.seal_b))) == 2


@pytest.mark.attack
def test_shared_file_still_needs_its_own_check(world):
    w = world
    w.index.shared = {UUID_A: (w.a, w.b)}
    w.index.bind(UUID_A, w.a, orthanc_ids_of_seal(w.seal_a)["Series"])  # an index grant alone
    with pytest.raises(WrongInstanceError, match="names this file for"):
        w.index.check(w.seal_a)
    # The gate binding A's own read grants both; each is used once.
    let_through(w.gate, f"/instances/{w.a}/file")
    assert instance_calls(calls_of_check(w, w.seal_a)) == []
    with pytest.raises(WrongInstanceError, match="names this file for"):
        w.index.check(w.seal_a)


def test_shared_file_grant_is_given_for_routes_whose_reads_are_not_known(world):
    w = world
    w.index.shared = {UUID_A: (w.a, w.b)}
    let_through(w.gate, f"/instances/{w.a}/preview")
    assert len(instance_calls(calls_of_check(w, w.seal_a))) == 2  # the shared-file check passed, the index asked
    with pytest.raises(WrongInstanceError, match="names this file for"):
        w.index.check(w.seal_a)


def test_no_grants_where_reads_share_the_requests_thread(world):
    w = world
    w.gate.index = None  # Orthanc 1.10 and 1.12 (no loader threads)
    let_through(w.gate, f"/instances/{w.a}/file")
    assert len(instance_calls(calls_of_check(w, w.seal_a))) == 2
