"""The audit trail on a real Orthanc: each path, acted by a named user or AE title, shows in the
series' trail with exactly that event, user, series and outcome; review is auditors-only."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest

from tests.support import dimse
from tests.support.dicom import make_instance, make_series, new_uid
from tests.support.scp import StorageSCP, save
from tests.support.server import PYTHON_PLUGIN, OrthancServer, orthanc_version

DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


@pytest.fixture(scope="module")
def server(start_orthanc_module: Any) -> OrthancServer:
    return start_orthanc_module(
        config={"Plugins": [PYTHON_PLUGIN, DICOMWEB_PLUGIN]},
        hardening={"Audit": {"CheckpointEvery": 5, "MaxQueryLimit": 50}},
    )


def trail(server: OrthancServer, **filters: str) -> list[dict[str, Any]]:
    answer = server.get("/hardening/audit", user="auditor", params=filters)
    assert answer.status_code == 200, answer.text
    return answer.json()["events"]


def upload_series(server: OrthancServer, count: int = 2, **kw: Any) -> tuple[str, str, list[str]]:
    study_uid, series_uid = kw.pop("study_uid", new_uid()), new_uid()
    ids = [server.upload(data, user="user")["ID"]
           for data in make_series(count, study_uid=study_uid, series_uid=series_uid, **kw)]
    return study_uid, series_uid, ids


def test_rest_upload_and_read_are_in_the_series_trail(server: OrthancServer) -> None:
    _study, series_uid, ids = upload_series(server, 2, patient_id="AUD-1")
    assert server.get(f"/instances/{ids[0]}/file", user="admin").status_code == 200
    events = trail(server, series=series_uid)
    kinds = [(e["event"], e["action"], e["user"], e["outcome"], e["transport"]) for e in events]
    assert kinds.count(("110107", "C", "user", 0, "rest")) == 2
    read = [e for e in events if e["event"] == "110103"]
    assert len(read) == 1
    assert (read[0]["user"], read[0]["series_uid"], read[0]["patient_id"], read[0]["instance_count"]) == (
        "admin", series_uid, "AUD-1", 1)
    assert read[0]["route"] == f"GET /instances/{ids[0]}/file"
    assert read[0]["source_ip"] == "127.0.0.1"


def test_study_archive_gives_one_event_per_series(server: OrthancServer) -> None:
    study_uid = new_uid()
    series = [upload_series(server, 2, study_uid=study_uid)[1] for _ in range(3)]
    study_id = server.get(f"/series/{server.post('/tools/lookup', data=series[0]).json()[0]['ID']}").json()[
        "ParentStudy"]
    answer = server.get(f"/studies/{study_id}/archive", user="admin")
    assert answer.status_code == 200
    for series_uid in series:
        archived = [e for e in trail(server, series=series_uid) if e["event"] == "110104"]
        assert len(archived) == 1, series_uid
        assert (archived[0]["user"], archived[0]["study_uid"], archived[0]["instance_count"]) == (
            "admin", study_uid, 2)


def test_delete_names_the_series_with_study_deleted(server: OrthancServer) -> None:
    _study, series_uid, ids = upload_series(server, 1)
    series_id = server.get(f"/instances/{ids[0]}").json()["ParentSeries"]
    assert server.delete(f"/series/{series_id}", user="admin").status_code == 200
    deleted = [e for e in trail(server, series=series_uid) if e["action"] == "D"]
    assert [(e["event"], e["user"]) for e in deleted] == [("110105", "admin")]


def test_metadata_change_is_an_update(server: OrthancServer) -> None:
    _study, series_uid, ids = upload_series(server, 1)
    assert server.put(f"/instances/{ids[0]}/metadata/1024", data="x", user="admin").status_code == 200
    updates = [e for e in trail(server, series=series_uid) if e["action"] == "U"]
    assert [(e["event"], e["user"]) for e in updates] == [("110103", "admin")]


def test_query_records_the_query(server: OrthancServer) -> None:
    assert server.get("/studies", user="user", params={"expand": ""}).status_code == 200
    queries = trail(server, user="user", event="110112")
    assert queries and queries[0]["route"] == "GET /studies"


def test_dicomweb_wado_is_recorded(server: OrthancServer) -> None:
    study_uid, series_uid, _ids = upload_series(server, 1)
    answer = server.get(f"/dicom-web/studies/{study_uid}/series/{series_uid}/metadata", user="user")
    assert answer.status_code == 200, answer.text
    read = [e for e in trail(server, series=series_uid) if e["event"] == "110103"]
    assert [(e["user"], e["transport"]) for e in read] == [("user", "dicomweb")]


def test_cstore_records_calling_aet(server: OrthancServer, tmp_path: Path) -> None:
    study_uid, series_uid = new_uid(), new_uid()
    files = save(tmp_path, [make_instance(study_uid=study_uid, series_uid=series_uid)])
    result = server.dcmtk("storescu", files=[str(f) for f in files])
    assert result.returncode == 0, result.stderr
    imports = [e for e in trail(server, series=series_uid) if e["event"] == "110107"]
    assert [(e["transport"], e["calling_aet"], e["called_aet"], e["route"]) for e in imports] == [
        ("dimse", "TESTSCU", "HARDENED", "C-STORE")]


def test_cget_is_recorded_with_the_gap_flagged(server: OrthancServer) -> None:
    study_uid, series_uid, _ids = upload_series(server, 2)
    result = dimse.c_get(server, study_uid)
    assert len(result.received) == 2
    got = [e for e in trail(server, series=series_uid) if e["route"] == "C-GET"]
    assert len(got) == 1
    assert (got[0]["event"], got[0]["transport"], got[0]["outcome"]) == ("110104", "dimse", 0)
    assert "no C-GET hook" in got[0]["detail"]


def test_cmove_records_begin_and_transferred(server: OrthancServer) -> None:
    study_uid, series_uid, _ids = upload_series(server, 2)
    with StorageSCP(port=server.modality_port, pki=server.pki) as scp:
        result = dimse.c_move(server, study_uid)
        assert result.status == 0, result
        assert len(scp.received) == 2
    moved = [e for e in trail(server, series=series_uid) if e["route"] == "C-MOVE"]
    assert [(e["event"], e["calling_aet"], e["outcome"], e["instance_count"]) for e in moved] == [
        ("110104", "TESTSCU", 0, 2), ("110102", "TESTSCU", 0, 2)]


@pytest.mark.attack
def test_non_auditor_reading_the_trail_is_refused_and_audited(server: OrthancServer) -> None:
    answer = server.get("/hardening/audit", user="user")
    assert answer.status_code == 403
    assert answer.json()["error"] == "forbidden"
    alerts = trail(server, user="user", event="110113")
    assert alerts and alerts[0]["route"] == "GET /hardening/audit"
    assert "lacks the permission 'audit'" in alerts[0]["detail"]


def test_reading_the_trail_is_audit_log_used(server: OrthancServer) -> None:
    trail(server, series="1.2.3")
    used = trail(server, event="110101", user="auditor")
    assert used and "series=1.2.3" in used[0]["detail"]


def test_bad_filter_is_400_naming_the_parameter(server: OrthancServer) -> None:
    answer = server.get("/hardening/audit", user="auditor", params={"since": "yesterday"})
    assert answer.status_code == 400
    assert "since" in answer.json()["detail"]


def test_huge_limit_is_capped(server: OrthancServer) -> None:
    answer = server.get("/hardening/audit", user="auditor", params={"limit": "100000000"})
    assert answer.status_code == 200
    assert answer.json()["limit"] == 50


@pytest.mark.attack
def test_csv_export_neutralises_formula_in_patient_id(server: OrthancServer) -> None:
    _study, series_uid, _ids = upload_series(server, 1, patient_id="=HYPERLINK(1)")
    answer = server.get("/hardening/audit", user="auditor", params={"series": series_uid, "format": "csv"})
    assert answer.status_code == 200
    rows = list(csv.DictReader(io.StringIO(answer.text)))
    assert rows and all(r["patient_id"] == "'=HYPERLINK(1)" for r in rows)


def test_verify_passes(server: OrthancServer) -> None:
    answer = server.get("/hardening/audit/verify", user="auditor")
    assert answer.status_code == 200, answer.text
    report = answer.json()
    assert report["ok"] is True and report["last_checkpoint_seq"] > 0, json.dumps(report)


def test_stow_rs_upload_is_an_import_by_the_user(server: OrthancServer) -> None:
    study_uid, series_uid = new_uid(), new_uid()
    data = make_instance(study_uid=study_uid, series_uid=series_uid)
    boundary = "hardening-boundary"
    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data
            + f"\r\n--{boundary}--\r\n".encode())
    # On bookworm STOW-RS needs `all` (README, "Permissions"): the uploader is then `admin`.
    uploader = "user" if orthanc_version() >= (1, 12, 0) else "admin"
    answer = server.post("/dicom-web/studies", user=uploader, data=body, headers={
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": "application/dicom+json"})
    assert answer.status_code == 200, answer.text
    imports = [e for e in trail(server, series=series_uid) if e["event"] == "110107"]
    assert [(e["user"], e["transport"], e["route"]) for e in imports] == [
        (uploader, "dicomweb", "POST /dicom-web/studies")]


def test_qido_rs_is_a_query_with_the_query_in_detail(server: OrthancServer) -> None:
    answer = server.get("/dicom-web/studies", user="user", params={"PatientID": "QIDO-1"})
    assert answer.status_code in (200, 204)
    queries = trail(server, user="user", event="110112")
    assert queries[0]["transport"] == "dicomweb" and "PatientID=QIDO-1" in queries[0]["detail"]


def test_anonymize_records_source_read_and_created_series(server: OrthancServer) -> None:
    _study, series_uid, ids = upload_series(server, 1)
    series_id = server.get(f"/instances/{ids[0]}").json()["ParentSeries"]
    answer = server.post(f"/series/{series_id}/anonymize", user="admin", json={})
    assert answer.status_code == 200, answer.text
    source = [e for e in trail(server, series=series_uid) if "anonymize" in e["detail"]]
    assert [(e["event"], e["action"], e["user"]) for e in source] == [("110103", "R", "admin")]
    new_uid_ = server.get(f"/series/{answer.json()['ID']}").json()["MainDicomTags"]["SeriesInstanceUID"]
    created = trail(server, series=new_uid_, event="110107")
    assert [(e["action"], e["transport"], e["route"]) for e in created] == [("C", "internal", "job")]


def test_webdav_read_is_recorded_by_the_read_hook(server: OrthancServer) -> None:
    study_uid, series_uid, _ids = upload_series(server, 1)
    listing = server.request("PROPFIND", f"/webdav/by-uids/{study_uid}/{series_uid}/", user="user",
                             headers={"Depth": "1"})
    assert listing.status_code in (207, 200), listing.text
    names = [line.split("<")[0] for line in listing.text.split("<D:href>")[1:]]
    files = [n for n in names if n.endswith(".dcm")]
    assert files, listing.text
    answer = server.get(files[0], user="user")
    assert answer.status_code == 200
    read = [e for e in trail(server, series=series_uid) if e["event"] == "110103"]
    assert [(e["user"], e["transport"]) for e in read] == [("user", "webdav")]


def test_send_to_modality_is_begin_transferring(server: OrthancServer) -> None:
    _study, _series_uid, ids = upload_series(server, 1)
    with StorageSCP(port=server.modality_port, pki=server.pki):
        answer = server.post("/modalities/TESTSCU/store", user="admin", json={"Resources": ids})
    assert answer.status_code == 200, answer.text
    sends = trail(server, user="admin", event="110102")
    assert sends and sends[0]["route"] == "POST /modalities/TESTSCU/store"
    assert "request body" in sends[0]["detail"]
