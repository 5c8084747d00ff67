"""On Orthanc before 1.12.2 the gates read the index facts: no call into Orthanc, the same verdicts."""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

import pytest

from orthanc_hardening.integrity.binding import RequestedRead, WrongInstanceError
from orthanc_hardening.integrity.index_facts import IndexFacts
from orthanc_hardening.integrity.query import orthanc_ids_of_seal
from orthanc_hardening.seal.identity import NO_IDENTITY
from orthanc_hardening.seal.record import seal_attachment
from orthanc_hardening.shell.audit_hooks import IndexResolver
from orthanc_hardening.shell.binding import IndexBinding, ReadBinding
from tests.unit.integrity.test_binding import PATIENT_A, PATIENT_B, UUID_A, UUID_B
from tests.unit.seal.conftest import NOW, fixed_signer
from tests.unit.shell.test_binding_in_dicomweb_reads import NoCallsIntoOrthanc


class Seals:
    def __init__(self, seals: list[Any]) -> None:
        self._seals = {(s.uuid, int(s.content_type)): s for s in seals}

    def get(self, uuid: str, content_type: int) -> Any:
        return self._seals.get((uuid, content_type))


@pytest.fixture
def world():
    signer = fixed_signer()
    seal_a = seal_attachment(UUID_A, 1, b"A" * 64, PATIENT_A, signer, NOW)
    seal_b = seal_attachment(UUID_B, 1, b"B" * 64, PATIENT_B, signer, NOW)
    runtime = SimpleNamespace(orthanc=NoCallsIntoOrthanc(),
                              capabilities=SimpleNamespace(loader_threads=False, shared_plugin_context=False))
    index = IndexBinding(runtime)  # type: ignore[arg-type]
    index.facts = IndexFacts(threading.Lock())
    index.created(seal_a)
    index.created(seal_b)
    gate = ReadBinding(runtime, Seals([seal_a, seal_b]).get, lambda _i: [], index)  # type: ignore[arg-type]
    return index, gate, seal_a, seal_b


def test_dicomweb_read_of_a_stored_instance_passes_without_calling_orthanc(world):
    index, gate, seal_a, _ = world
    gate.check_read(RequestedRead("instances", uids=(PATIENT_A.study_uid, PATIENT_A.series_uid,
                                                     PATIENT_A.sop_instance_uid), route="GET /dicom-web/…"))
    gate.check_read(RequestedRead("studies", uids=(PATIENT_A.study_uid, "", ""), route="GET /dicom-web/studies/…"))
    index.check(seal_a)


@pytest.mark.attack
def test_pointer_swapped_in_the_loaded_index_is_refused_without_calling_orthanc(world):
    index, gate, seal_a, seal_b = world
    facts = index.facts
    a = orthanc_ids_of_seal(seal_a)["Instance"]
    facts.add_indexed_file(a, 1, UUID_B)  # A's row points at B's file, as an edit at rest leaves it
    facts.remove_file(UUID_A)
    with pytest.raises(WrongInstanceError):
        gate.check_read(RequestedRead("instances", uids=("", "", PATIENT_A.sop_instance_uid), route="GET /dicom-web/…"))
    with pytest.raises(WrongInstanceError):
        gate.check_read(RequestedRead("instances", a, route=f"GET /instances/{a}/file"))
    with pytest.raises(WrongInstanceError, match="index names attachment"):
        index.check(seal_a)  # A's own file is no longer A's in the index
    index.check(seal_b)


def test_deleted_instance_is_unknown_to_the_gates(world):
    index, gate, seal_a, _ = world
    index.removed(UUID_A)
    assert gate.expected_reads(RequestedRead("instances", uids=("", "", PATIENT_A.sop_instance_uid))) == []
    with pytest.raises(WrongInstanceError, match="does not hold"):
        index.check(seal_a)


def test_audit_resolution_reads_the_facts(world):
    index, _gate, seal_a, _ = world
    resolver = IndexResolver(NoCallsIntoOrthanc(), index.active_facts)
    level, found = resolver.by_uids(PATIENT_A.study_uid, PATIENT_A.series_uid, "")
    assert (level, found) == ("series", orthanc_ids_of_seal(seal_a)["Series"])
    [ref] = resolver.series_of("studies", orthanc_ids_of_seal(seal_a)["Study"])
    assert (ref.patient_id, ref.study_uid, ref.series_uid, ref.instance_count) == ("A", "1.2.1", "1.2.1.1", 1)
    assert resolver.by_uids("", "", "9.9.9") == ("", "")
    with pytest.raises(KeyError):
        resolver.series_of("instances", "unknown")


def test_a_dicom_file_without_identity_hands_the_gates_back_to_orthanc(world):
    index, _gate, _seal_a, _ = world
    index.created(seal_attachment("u-compressed", 1, b"C" * 64, NO_IDENTITY, fixed_signer(), NOW))
    assert index.active_facts() is None
