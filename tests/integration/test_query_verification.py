"""Verified query answers against a real Orthanc: an index edited behind Orthanc's back.

Orthanc 1.10 holds its SQLite index locked while it runs, so the attacker here stops the server,
edits ``index`` with sqlite3 (as someone with access to the disk would), and starts it again.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from tests.support.dicom import make_instance
from tests.support.dimse import c_find
from tests.support.server import DICOMWEB_PLUGIN, PYTHON_PLUGIN, OrthancServer

STUDY_A, STUDY_B = "1.2.826.0.1.3680043.8.498.61", "1.2.826.0.1.3680043.8.498.62"
pytestmark = pytest.mark.integration


def edit_index(server: OrthancServer, *statements: tuple[str, tuple]) -> None:
    """Stop Orthanc, run SQL on its index database, start it again."""
    server.stop()
    db = sqlite3.connect(server.index_db)
    for name in ("SignalFileDeleted", "SignalResourceDeleted", "SignalRemainingAncestor"):
        db.create_function(name, -1, lambda *args: None)
    try:
        for sql, args in statements:
            db.execute(sql, args)
        db.commit()
    finally:
        db.close()
    server.start()


def upload_two_studies(server: OrthancServer) -> dict[str, str]:
    ids = {}
    for i in range(2):
        ids["A"] = server.upload(make_instance(patient_id="PAT-A", patient_name="Doe^Jane", study_uid=STUDY_A,
                                               series_uid=STUDY_A + ".1", sop_uid=f"{STUDY_A}.1.{i}",
                                               instance_number=i))["ParentStudy"]
    ids["B"] = server.upload(make_instance(patient_id="PAT-B", patient_name="Roe^Rick", study_uid=STUDY_B,
                                           series_uid=STUDY_B + ".1", sop_uid=STUDY_B + ".1.1"))["ParentStudy"]
    return ids


def rename_patient(server: OrthancServer, old: str, new: str) -> None:
    # Orthanc shows MainDicomTags and matches queries on DicomIdentifiers (upper case): a careful
    # attacker edits both, so that a search for the new name finds the study.
    edit_index(server,
               ("UPDATE MainDicomTags SET value = ? WHERE tagGroup = 16 AND tagElement = 16 AND value = ?", (new, old)),
               ("UPDATE DicomIdentifiers SET value = ? WHERE tagGroup = 16 AND tagElement = 16 AND value = ?",
                (new.upper(), old.upper())))


def study_query(**keys: str) -> Dataset:
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.PatientName = ""
    query.PatientID = ""
    query.StudyInstanceUID = ""
    for name, value in keys.items():
        setattr(query, name, value)
    return query


def alerts_naming(server: OrthancServer, needle: str) -> list[str]:
    """Security Alert details that mention ``needle`` (from the audit trail, else the log)."""
    response = server.get("/hardening/audit?limit=1000", user="auditor")
    if response.status_code == 200:
        body = response.json()
        events = body.get("events", body) if isinstance(body, dict) else body
        return [str(e.get("detail", "")) for e in events
                if "110113" in str(e.get("event", "")) and needle in str(e.get("detail", ""))]
    return [line for line in server.log_text().splitlines() if "query answer:" in line and needle in line]


@pytest.fixture(scope="module")
def tampered(start_orthanc_module) -> Iterator[tuple[OrthancServer, dict[str, str]]]:
    server = start_orthanc_module(config={"Plugins": [PYTHON_PLUGIN, DICOMWEB_PLUGIN],
                                          "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}})
    ids = upload_two_studies(server)
    assert server.get(f"/dicom-web/studies?StudyInstanceUID={STUDY_A}").status_code == 200
    clean = server.get("/studies?expand")
    assert clean.status_code == 200 and len(clean.json()) == 2
    assert clean.headers["X-Hardening-Withheld"] == "0"
    rename_patient(server, "Doe^Jane", "Evil^Edit")
    yield server, ids


@pytest.mark.attack
def test_patient_name_edited_in_index_is_withheld_from_tools_find(tampered) -> None:
    server, ids = tampered
    response = server.post("/tools/find", json={"Level": "Study", "Query": {"PatientName": "Evil*"}})
    assert response.status_code == 200
    assert response.json() == []
    assert response.headers["X-Hardening-Withheld"] == "1"
    expanded = server.post("/tools/find", json={"Level": "Study", "Query": {}, "Expand": True})
    assert [s["ID"] for s in expanded.json()] == [ids["B"]]
    assert expanded.headers["X-Hardening-Withheld"] == "1"


@pytest.mark.attack
def test_patient_name_edited_in_index_is_withheld_from_study_lists(tampered) -> None:
    server, ids = tampered
    listed = server.get("/studies?expand")
    assert [s["ID"] for s in listed.json()] == [ids["B"]]
    assert listed.headers["X-Hardening-Withheld"] == "1"
    assert server.get("/studies").json() == [ids["B"]]
    single = server.get(f"/studies/{ids['A']}")
    assert single.status_code == 409 and single.headers["X-Hardening-Withheld"] == "1"
    assert "PatientName" in single.json()["detail"] and "Evil" not in single.text
    patient = server.get(f"/studies/{ids['B']}/patient").json()
    assert patient["MainDicomTags"]["PatientID"] == "PAT-B"
    # The untouched study is served as Orthanc answers it.
    assert server.get(f"/studies/{ids['B']}").json()["PatientMainDicomTags"]["PatientName"] == "Roe^Rick"


@pytest.mark.attack
def test_patient_name_edited_in_index_is_withheld_from_cfind(tampered) -> None:
    server, _ids = tampered
    status, matches = c_find(server, study_query())
    assert [m.StudyInstanceUID for m in matches] == [STUDY_B]
    assert status != 0x0000, "the C-FIND answer must say it is incomplete"
    result = server.dcmtk("findscu", "-S", "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientName=Evil*",
                          "-k", "StudyInstanceUID")
    assert STUDY_A not in result.stdout + result.stderr
    good = server.dcmtk("findscu", "-S", "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientName=Roe*",
                        "-k", "StudyInstanceUID")
    assert STUDY_B in good.stdout + good.stderr


@pytest.mark.attack
def test_series_of_a_study_with_edited_patient_are_withheld_from_cfind(tampered) -> None:
    server, _ids = tampered
    query = Dataset()
    query.QueryRetrieveLevel = "SERIES"
    query.PatientName = ""
    query.SeriesInstanceUID = ""
    for study, expected in ((STUDY_A, []), (STUDY_B, [STUDY_B + ".1"])):
        query.StudyInstanceUID = study
        _status, matches = c_find(server, query)
        assert [m.SeriesInstanceUID for m in matches] == expected


@pytest.mark.attack
def test_patient_name_edited_in_index_refuses_qido_search(tampered) -> None:
    server, _ids = tampered
    assert server.get("/dicom-web/studies?PatientName=Evil*").status_code == 403
    assert server.get("/dicom-web/studies").status_code == 403
    assert server.get(f"/dicom-web/studies/{STUDY_A}/series").status_code == 403
    clean = server.get(f"/dicom-web/studies?StudyInstanceUID={STUDY_B}")
    assert clean.status_code == 200
    assert [s["0020000D"]["Value"][0] for s in clean.json()] == [STUDY_B]


@pytest.mark.attack
def test_withheld_study_is_named_in_a_security_alert(tampered) -> None:
    server, ids = tampered
    server.get("/studies?expand")
    assert alerts_naming(server, ids["A"])


def test_series_and_instances_of_untouched_levels_are_served(tampered) -> None:
    server, ids = tampered
    series = server.get(f"/studies/{ids['B']}/series")
    assert series.status_code == 200 and len(series.json()) == 1
    instances = server.get(f"/studies/{ids['B']}/instances")
    assert len(instances.json()) == 1 and instances.headers["X-Hardening-Withheld"] == "0"
    assert server.get("/studies/0000/series").status_code == 404


@pytest.mark.attack
def test_patient_id_edited_in_index_is_flagged_in_monitor_mode(start_orthanc) -> None:
    server = start_orthanc(hardening={"Mode": "monitor"})
    ids = upload_two_studies(server)
    edit_index(server, ("UPDATE MainDicomTags SET value = 'PAT-X' WHERE tagGroup = 16 AND tagElement = 32 "
                        "AND value = 'PAT-A'", ()))
    listed = server.get("/studies?expand")
    assert sorted(s["ID"] for s in listed.json()) == sorted(ids.values())
    assert listed.headers["X-Hardening-Flagged"] == "1" and listed.headers["X-Hardening-Withheld"] == "0"
    _status, matches = c_find(server, study_query())
    assert sorted(m.StudyInstanceUID for m in matches) == [STUDY_A, STUDY_B]
    assert alerts_naming(server, ids["A"])


def test_data_directory_holds_the_tag_store(tampered) -> None:
    server, _ = tampered
    assert (Path(server.data_dir) / "query-tags.db").is_file()
