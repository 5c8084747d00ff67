"""Valid data round-trips byte-identical through a hardened Orthanc; bad input leaves nothing behind.

REST upload → ``/file``; DCMTK ``storescu +tls`` (C-STORE) → C-GET and C-MOVE over TLS
(pynetdicom; DCMTK 3.6.7's getscu/movescu have no ``+tls``); a send to a modality; malformed
DICOM on ingest; what a send job does when one instance was tampered with.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pytest

from tests.support.dicom import make_series
from tests.support.dimse import c_get, c_move
from tests.support.scp import StorageSCP, save
from tests.support.server import OrthancServer

pytestmark = [pytest.mark.integration]


@pytest.fixture(scope="module")
def server(start_orthanc_module) -> OrthancServer:
    return start_orthanc_module()


def dataset_bytes(part10: bytes) -> bytes:
    """The bytes after the file meta group (PS3.10 §7.1)."""
    assert part10[128:132] == b"DICM"
    return part10[144 + int.from_bytes(part10[140:144], "little"):]


def seal_rows(server: OrthancServer) -> int:
    with sqlite3.connect(str(server.data_dir / "seals.db")) as db:
        return int(db.execute("SELECT COUNT(*) FROM seals").fetchone()[0])


def stored_files(server: OrthancServer) -> set[str]:
    return {p.name for p in server.storage_dir.glob("??/??/*") if p.is_file()}


def study_uid_of(files: list[bytes]) -> str:
    from io import BytesIO

    from pydicom import dcmread

    return str(dcmread(BytesIO(files[0]), stop_before_pixels=True).StudyInstanceUID)


def sop_of(data: bytes) -> str:
    from io import BytesIO

    from pydicom import dcmread

    return str(dcmread(BytesIO(data), stop_before_pixels=True).SOPInstanceUID)


def test_rest_upload_round_trips_byte_identical_and_is_sealed(server):
    files = make_series(2, patient_id="RT-REST")
    for data in files:
        instance_id = server.upload(data)["ID"]
        assert server.get(f"/instances/{instance_id}/file").content == data
        assert server.get(f"/instances/{instance_id}/attachments/dicom/data").content == data
        report = server.get(f"/hardening/instances/{instance_id}/seal", user="user").json()
        assert report["verified"] is True
        seal = next(a["seal"] for a in report["attachments"] if a["content_type"] == 1)
        assert seal["sop_instance_uid"] == sop_of(data) and seal["patient_id"] == "RT-REST"
        assert seal["sealed_after_ingest"] is False


def prepared_metric(server: OrthancServer) -> float:
    return server.metric("hardening_ingest_prepared_total")


def test_rest_upload_is_sealed_with_the_hash_and_identity_prepared_while_orthanc_parses(server):
    # shell/ahead.py: the received-instance callback starts the file's hash and identity parse;
    # the create takes them when they are ready (else it computes them: timing decides which),
    # on every target. Either way the seal is that of the stored bytes.
    before = prepared_metric(server)
    files = make_series(5, patient_id="RT-AHEAD")
    for data in files:
        instance_id = server.upload(data)["ID"]
        report = server.get(f"/hardening/instances/{instance_id}/seal", user="user").json()
        assert report["verified"] is True
        seal = next(a["seal"] for a in report["attachments"] if a["content_type"] == 1)
        assert seal["sha256"] == hashlib.sha256(data).hexdigest() and seal["size"] == len(data)
        assert seal["sop_instance_uid"] == sop_of(data) and seal["patient_id"] == "RT-AHEAD"
    assert 1 <= prepared_metric(server) - before <= len(files)


def test_seal_of_unknown_instance_is_404(server):
    response = server.get("/hardening/instances/00000000-00000000-00000000-00000000-00000000/seal", user="user")
    assert response.status_code == 404
    assert response.json()["error"] == "not found"


def test_storescu_tls_then_c_get_round_trips(server, tmp_path: Path):
    files = make_series(3, patient_id="RT-DIMSE")
    result = server.dcmtk("storescu", files=[str(p) for p in save(tmp_path, files)])
    assert result.returncode == 0, result.stderr
    got = c_get(server, study_uid_of(files))
    assert got.status == 0x0000 and len(got.received) == 3
    for data in files:
        assert dataset_bytes(got.received[sop_of(data)]) == dataset_bytes(data)


def test_c_move_over_tls_round_trips(server):
    files = make_series(2, patient_id="RT-MOVE")
    for data in files:
        server.upload(data)
    with StorageSCP(port=server.modality_port, pki=server.pki) as scp:
        moved = c_move(server, study_uid_of(files))
        assert moved.status == 0x0000, moved
        assert len(scp.received) == 2
        for data in files:
            assert dataset_bytes(scp.received[sop_of(data)]) == dataset_bytes(data)


def test_malformed_dicom_leaves_no_seal_and_no_file(server):
    rows, names = seal_rows(server), stored_files(server)
    response = server.post("/instances", data=b"\x00" * 128 + b"DICM" + b"garbage" * 50,
                           headers={"Content-Type": "application/dicom"})
    assert response.status_code == 400
    response = server.post("/instances", data=b"not dicom at all", headers={"Content-Type": "application/dicom"})
    assert response.status_code == 400
    assert seal_rows(server) == rows
    assert stored_files(server) == names
    assert server.get("/system").status_code == 200


@pytest.mark.attack
def test_send_to_modality_never_sends_tampered_instance(server):
    files = make_series(3, patient_id="RT-SEND")
    ids = [server.upload(data)["ID"] for data in files]
    study = server.get(f"/instances/{ids[0]}/study").json()["ID"]
    uuid = server.get(f"/instances/{ids[1]}/attachments/dicom/info").json()["Uuid"]
    path = server.storage_dir / uuid[:2] / uuid[2:4] / uuid
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with StorageSCP(port=server.modality_port, pki=server.pki) as scp:
        job = server.post("/modalities/TESTSCU/store",
                          data=json.dumps({"Resources": [study], "Asynchronous": True})).json()
        state = server.wait_job(job["ID"])
        # Orthanc's store job fails at the instance whose read is refused.
        assert state["State"] == "Failure"
        assert sop_of(files[1]) not in scp.received
        for sop, received in scp.received.items():
            original = next(f for f in files if sop_of(f) == sop)
            assert dataset_bytes(received) == dataset_bytes(original)


def rich_instance() -> bytes:
    """An instance carrying every Orthanc 1.10 main DICOM tag, with DICOM padding and multi-values."""
    from io import BytesIO

    from pydicom import dcmread

    from orthanc_hardening.seal.index_tags import LEVELS

    dataset = dcmread(BytesIO(make_series(1, patient_id="IDX")[0]))
    dataset.SpecificCharacterSet = "ISO_IR 100"
    samples = {"DA": "20250102", "TM": "101112.5", "IS": "7", "DS": "1.5", "UI": None, "CS": "AXIAL",
               "PN": "Müller^Hans", "LO": "Descr ïption", "SH": "SH1", "LT": "a comment ", "ST": "text",
               "US": 5}
    for _level, tags in LEVELS.items():
        for group, element, _name in tags:
            tag = (group << 16) | element
            if tag in dataset:
                continue
            from pydicom.datadict import dictionary_VR

            vr = dictionary_VR(tag)
            value = samples.get(vr, "X")
            if value is None:
                continue
            dataset.add_new(tag, vr, value)
    dataset.OtherPatientIDs = "A\\B"
    dataset.ImageComments = " padded "
    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_index_tag_digest_of_bytes_equals_digest_of_orthancs_index(server):
    from io import BytesIO

    from pydicom import dcmread

    from orthanc_hardening.seal.index_tags import index_tags_digest, index_tags_of_dataset, index_tags_of_orthanc

    data = rich_instance()
    instance_id = server.upload(data)["ID"]
    instance = server.get(f"/instances/{instance_id}").json()
    series = server.get(f"/series/{instance['ParentSeries']}").json()
    study = server.get(f"/studies/{series['ParentStudy']}").json()
    from_index = index_tags_of_orthanc(study["PatientMainDicomTags"], study["MainDicomTags"],
                                       series["MainDicomTags"], instance["MainDicomTags"])
    from_bytes = index_tags_of_dataset(dcmread(BytesIO(data), stop_before_pixels=True))
    assert from_bytes == from_index
    assert sum(len(v) for v in from_bytes.values()) >= 45
    seal = server.get(f"/hardening/instances/{instance_id}/seal").json()["attachments"][0]["seal"]
    assert seal["index_tags_sha256"] == index_tags_digest(from_index)


def test_every_ingest_path_is_sealed(server):
    # /modify, /anonymize and /tools/create-dicom store new instances through the storage area too.
    instance_id = server.upload(make_series(1, patient_id="PATHS")[0])["ID"]
    created = []
    modified = server.post(f"/instances/{instance_id}/modify",
                           data=json.dumps({"Replace": {"StudyDescription": "changed"}, "Force": True}))
    assert modified.status_code == 200
    created.append(server.post("/instances", data=modified.content,
                               headers={"Content-Type": "application/dicom"}).json()["ID"])
    study = server.get(f"/instances/{instance_id}/study").json()["ID"]
    anonymized = server.post(f"/studies/{study}/anonymize", data=json.dumps({})).json()
    created += [i["ID"] for i in server.get(f"/studies/{anonymized['ID']}/instances").json()]
    made = server.post("/tools/create-dicom", data=json.dumps({"Tags": {"PatientID": "MADE", "Modality": "OT"}}))
    assert made.status_code == 200
    created.append(made.json()["ID"])
    for new_id in created:
        body = server.get(f"/hardening/instances/{new_id}/seal").json()
        assert body["verified"] is True, body
        assert {a["status"] for a in body["attachments"]} == {"verified"}
