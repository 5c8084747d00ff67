"""Reads bound to the request and the index: a verified seal must name the instance asked for."""

from __future__ import annotations

import pytest

from orthanc_hardening.errors import SealMismatchError
from orthanc_hardening.integrity.binding import (
    ExpectedRead,
    RequestedRead,
    WrongInstanceError,
    index_binding,
    requested_read,
    verify_bound,
)
from orthanc_hardening.integrity.query import orthanc_ids_of_seal
from orthanc_hardening.seal.identity import NO_IDENTITY, InstanceIdentity
from orthanc_hardening.seal.record import seal_attachment
from tests.unit.seal.conftest import NOW, fixed_signer

UUID_A, UUID_B = "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9", "1f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9"
PATIENT_A = InstanceIdentity(study_uid="1.2.1", series_uid="1.2.1.1", sop_instance_uid="1.2.1.1.1", patient_id="A")
PATIENT_B = InstanceIdentity(study_uid="1.2.2", series_uid="1.2.2.1", sop_instance_uid="1.2.2.1.1", patient_id="B")


@pytest.fixture
def seals():
    signer = fixed_signer()
    return (seal_attachment(UUID_A, 1, b"A" * 64, PATIENT_A, signer, NOW),
            seal_attachment(UUID_B, 1, b"B" * 64, PATIENT_B, signer, NOW))


def test_seal_of_the_requested_instance_passes(seals):
    seal_a, _ = seals
    ids = orthanc_ids_of_seal(seal_a)
    verify_bound(seal_a, ExpectedRead(instance_id=ids["Instance"], series_id=ids["Series"], study_id=ids["Study"],
                                      patient_id_hash=ids["Patient"], sop_instance_uid="1.2.1.1.1",
                                      series_uid="1.2.1.1", study_uid="1.2.1", uuid=UUID_A))


@pytest.mark.attack
def test_pointer_swapped_to_another_patients_file_is_refused(seals):
    seal_a, seal_b = seals
    expected_a = ExpectedRead(instance_id=orthanc_ids_of_seal(seal_a)["Instance"], source="GET /instances/a/file")
    with pytest.raises(WrongInstanceError, match=r"sealed for instance .* but GET /instances/a/file names"):
        verify_bound(seal_b, expected_a)
    # A binding failure is an integrity failure: the shell maps it to a refusal and an alert.
    assert issubclass(WrongInstanceError, SealMismatchError)


@pytest.mark.attack
@pytest.mark.parametrize("field", ["sop_instance_uid", "series_uid", "study_uid"])
def test_uid_named_by_dicomweb_must_be_the_sealed_uid(seals, field):
    seal_a, seal_b = seals
    with pytest.raises(WrongInstanceError):
        verify_bound(seal_b, ExpectedRead(**{field: getattr(seal_a, field)}))


@pytest.mark.attack
def test_reparented_instance_is_refused_by_its_series(seals):
    seal_a, seal_b = seals
    ids_a, ids_b = orthanc_ids_of_seal(seal_a), orthanc_ids_of_seal(seal_b)
    # The index lists B's instance under A's series: its own id, another series.
    with pytest.raises(WrongInstanceError, match="series"):
        verify_bound(seal_b, ExpectedRead(instance_id=ids_b["Instance"], series_id=ids_a["Series"]))


@pytest.mark.attack
def test_another_attachment_than_the_index_names_is_refused(seals):
    _, seal_b = seals
    with pytest.raises(WrongInstanceError, match="attachment"):
        verify_bound(seal_b, ExpectedRead(instance_id=orthanc_ids_of_seal(seal_b)["Instance"], uuid=UUID_A))


@pytest.mark.attack
def test_seal_without_identity_does_not_answer_for_an_instance():
    seal = seal_attachment(UUID_A, 1, b"x", NO_IDENTITY, fixed_signer(), NOW)
    with pytest.raises(WrongInstanceError, match="without an instance identity"):
        verify_bound(seal, ExpectedRead(instance_id="00000000-00000000-00000000-00000000-00000000"))


def test_expecting_nothing_is_a_caller_bug(seals):
    with pytest.raises(ValueError, match="at least one"):
        verify_bound(seals[0], ExpectedRead())


def test_index_binding_names_the_sealed_instance_where_the_index_puts_it(seals):
    seal_a, _ = seals
    ids = orthanc_ids_of_seal(seal_a)
    indexed = {"ID": ids["Instance"], "ParentSeries": ids["Series"], "ParentStudy": ids["Study"],
               "ParentPatient": ids["Patient"]}
    verify_bound(seal_a, index_binding(seal_a, indexed, UUID_A))


@pytest.mark.attack
def test_index_that_moved_the_sealed_instance_is_refused(seals):
    seal_a, seal_b = seals
    ids_a, ids_b = orthanc_ids_of_seal(seal_a), orthanc_ids_of_seal(seal_b)
    moved = {"ID": ids_a["Instance"], "ParentSeries": ids_a["Series"], "ParentStudy": ids_b["Study"]}
    with pytest.raises(WrongInstanceError, match="study"):
        verify_bound(seal_a, index_binding(seal_a, moved, UUID_A))


@pytest.mark.attack
def test_file_whose_sealed_instance_points_elsewhere_is_refused(seals):
    seal_a, _ = seals
    ids = orthanc_ids_of_seal(seal_a)
    # Swapped pointers: the instance A's seal names now owns B's file in the index.
    with pytest.raises(WrongInstanceError, match="attachment"):
        verify_bound(seal_a, index_binding(seal_a, {"ID": ids["Instance"]}, UUID_B))
    with pytest.raises(WrongInstanceError, match="does not hold"):
        index_binding(seal_a, None, None)
    with pytest.raises(WrongInstanceError, match="no attachment of this type"):
        index_binding(seal_a, {"ID": ids["Instance"]}, None)


ID = "0a1b2c3d-0a1b2c3d-0a1b2c3d-0a1b2c3d-0a1b2c3d"


@pytest.mark.parametrize(("method", "uri", "query", "expected"), [
    ("GET", f"/instances/{ID}/file", {}, RequestedRead("instances", ID, route=f"GET /instances/{ID}/file",
                                                       reads=(1,))),
    ("GET", f"/instances/{ID}/frames/0/preview", {}, RequestedRead("instances", ID,
                                                                  route=f"GET /instances/{ID}/frames/0/preview")),
    ("GET", f"/instances/{ID}/attachments/dicom/data", {},
     RequestedRead("instances", ID, route=f"GET /instances/{ID}/attachments/dicom/data", reads=(1,))),
    ("GET", f"/instances/{ID}/attachments/dicom-until-pixel-data/data", {},
     RequestedRead("instances", ID, route=f"GET /instances/{ID}/attachments/dicom-until-pixel-data/data",
                   reads=(3,))),
    ("GET", f"/instances/{ID}/attachments/dicom/compressed-data", {},
     RequestedRead("instances", ID, route=f"GET /instances/{ID}/attachments/dicom/compressed-data")),
    ("POST", f"/instances/{ID}/modify", {}, RequestedRead("instances", ID, route=f"POST /instances/{ID}/modify")),
    ("POST", f"/studies/{ID}/anonymize", {}, RequestedRead("studies", ID, route=f"POST /studies/{ID}/anonymize")),
    ("GET", f"/series/{ID}/instances-tags", {}, RequestedRead("series", ID,
                                                              route=f"GET /series/{ID}/instances-tags")),
    ("GET", "/dicom-web/studies/1.2/series/1.3/instances/1.4", {},
     RequestedRead("instances", uids=("1.2", "1.3", "1.4"),
                   route="GET /dicom-web/studies/1.2/series/1.3/instances/1.4")),
    ("GET", "/dicom-web/studies/1.2/series/1.3", {},
     RequestedRead("series", uids=("1.2", "1.3", ""), route="GET /dicom-web/studies/1.2/series/1.3")),
    ("GET", "/dicom-web/studies/1.2/metadata", {},
     RequestedRead("studies", uids=("1.2", "", ""), route="GET /dicom-web/studies/1.2/metadata")),
    ("GET", "/wado", {"requestType": "WADO", "studyUID": "1.2", "seriesUID": "1.3", "objectUID": "1.4"},
     RequestedRead("instances", uids=("1.2", "1.3", "1.4"), route="GET /wado")),
])
def test_requested_read_names_what_the_request_reads(method, uri, query, expected):
    assert requested_read(method, uri, query) == expected


@pytest.mark.parametrize(("method", "uri"), [
    ("GET", f"/instances/{ID}"),  # index only
    ("GET", f"/instances/{ID}/metadata"),
    ("GET", f"/instances/{ID}/attachments/dicom/info"),
    ("GET", f"/instances/{ID}/attachments"),
    ("GET", f"/instances/{ID}/modify"),
    ("DELETE", f"/instances/{ID}/file"),
    ("GET", "/dicom-web/studies/1.2/series"),  # QIDO-RS: the query verifier's
    ("GET", "/dicom-web/studies/1.2/series/1.3/instances"),
    ("GET", "/dicom-web/studies"),
    ("GET", f"/studies/{ID}/archive"),  # verified by the archive override
    ("GET", "/system"),
])
def test_requests_that_read_no_stored_bytes_are_not_bound(method, uri):
    assert requested_read(method, uri, {}) is None


@pytest.mark.attack
def test_file_the_index_names_for_two_instances_is_refused(seals):
    from orthanc_hardening.integrity.binding import verify_not_shared
    seal_a, seal_b = seals
    id_a, id_b = orthanc_ids_of_seal(seal_a)["Instance"], orthanc_ids_of_seal(seal_b)["Instance"]
    verify_not_shared(seal_b, ())
    verify_not_shared(seal_b, (id_b,))
    with pytest.raises(WrongInstanceError, match=rf"sealed for instance {id_b}, but Orthanc's index names this "
                                                 rf"file for {id_a} too"):
        verify_not_shared(seal_b, (id_a, id_b))
