"""Complete query answers: a study hidden by an edit of the index's identifiers is caught.

The attacker edits one ``DicomIdentifiers`` row (the PatientID Orthanc matches lookups on), so
the study no longer answers a search for its real patient, although its tags, files and seals are
untouched. The plugin's catalogue of seals says which sealed studies the search must return:
``/tools/find`` is refused (409), QIDO-RS refused (403) and C-FIND failed (0xC000) in enforce
mode, each with a Security Alert naming the hidden study; other searches answer as before.
"""

from __future__ import annotations

import sqlite3

import pytest
from pydicom.dataset import Dataset

from tests.support.dicom import make_instance, new_uid
from tests.support.dimse import c_find
from tests.support.server import DICOMWEB_PLUGIN, PYTHON_PLUGIN, OrthancServer

pytestmark = [pytest.mark.integration]


def alerts(server: OrthancServer, needle: str) -> list[dict]:
    body = server.get("/hardening/audit?limit=2000", user="auditor").json()
    events = body.get("events", body) if isinstance(body, dict) else body
    return [e for e in events if "110113" in str(e.get("event", "")) and needle in str(e.get("detail", ""))]


@pytest.fixture(scope="module")
def hidden(start_orthanc_module):
    server = start_orthanc_module(config={"Plugins": [PYTHON_PLUGIN, DICOMWEB_PLUGIN],
                                          "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}})
    study_uid, other_uid = new_uid(), new_uid()
    study = server.upload(make_instance(patient_id="PAT-HIDE", study_uid=study_uid, series_uid=new_uid(),
                                        sop_uid=new_uid()))["ParentStudy"]
    other = server.upload(make_instance(patient_id="PAT-SEEN", study_uid=other_uid, series_uid=new_uid(),
                                        sop_uid=new_uid()))["ParentStudy"]
    found = server.post("/tools/find", json={"Level": "Study", "Query": {"PatientID": "PAT-HIDE"}})
    assert found.json() == [study] and "X-Hardening-Missing" not in found.headers
    server.stop()
    db = sqlite3.connect(server.index_db)
    changed = db.execute("UPDATE DicomIdentifiers SET value = ? WHERE tagGroup = 16 AND tagElement = 32 "
                         "AND value = ?", ("PAT-ELSEWHERE", "PAT-HIDE")).rowcount
    db.commit()
    db.close()
    assert changed >= 1
    server.start()
    return server, study, study_uid, other


@pytest.mark.attack
def test_study_hidden_from_its_patient_is_refused_by_tools_find(hidden) -> None:
    server, study, _uid, other = hidden
    response = server.post("/tools/find", json={"Level": "Study", "Query": {"PatientID": "PAT-HIDE"}})
    assert response.status_code == 409
    assert response.json()["error"] == "integrity check failed" and study in response.json()["detail"]
    assert alerts(server, f"sealed study {study} matches PatientID=PAT-HIDE")
    # Other searches answer as Orthanc does, and the hidden study is still there by id (nothing changed).
    seen = server.post("/tools/find", json={"Level": "Study", "Query": {"PatientID": "PAT-SEEN"}})
    assert seen.status_code == 200 and seen.json() == [other]
    assert server.get(f"/studies/{study}").json()["PatientMainDicomTags"]["PatientID"] == "PAT-HIDE"


@pytest.mark.attack
def test_study_hidden_from_its_patient_is_refused_by_qido_rs(hidden) -> None:
    server, study, _uid, _other = hidden
    before = len(alerts(server, f"sealed study {study}"))
    response = server.get("/dicom-web/studies?PatientID=PAT-HIDE")
    assert response.status_code == 403 and response.content == b""
    assert len(alerts(server, f"sealed study {study}")) > before


@pytest.mark.attack
def studies_of_patient(patient_id: str) -> Dataset:
    """A study-level C-FIND identifier: the studies of ``patient_id`` (wildcards allowed)."""
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.PatientID = patient_id
    query.StudyInstanceUID = ""
    return query


def test_study_hidden_from_its_patient_fails_c_find(hidden) -> None:
    server, study, _uid, _other = hidden
    before = len(alerts(server, f"sealed study {study}"))
    status, answers = c_find(server, studies_of_patient("PAT-HIDE"))
    assert status == 0xC000 and answers == []
    assert len(alerts(server, f"sealed study {study}")) > before


@pytest.mark.attack
def test_study_hidden_from_a_wildcard_search_is_refused_by_tools_find_qido_rs_and_c_find(hidden) -> None:
    server, study, _uid, other = hidden
    before = len(alerts(server, f"sealed study {study}"))
    for value in ("PAT-HI*", "PAT-H?DE", "*HIDE"):
        response = server.post("/tools/find", json={"Level": "Study", "Query": {"PatientID": value}})
        assert response.status_code == 409, (value, response.status_code, response.text[:200])
        assert response.json()["error"] == "integrity check failed" and study in response.json()["detail"]
    assert alerts(server, f"sealed study {study} matches PatientID=PAT-H?DE")
    response = server.get("/dicom-web/studies?PatientID=PAT-HID*")
    assert response.status_code == 403 and response.content == b""
    status, answers = c_find(server, studies_of_patient("PAT-HID*"))
    assert status == 0xC000 and answers == []
    assert len(alerts(server, f"sealed study {study}")) >= before + 5
    # Wildcard searches that the index answers completely answer as Orthanc does (its case rules too).
    for value in ("PAT-SE*", "pat-s?en", "*-SEEN", "PAT-S*N"):
        seen = server.post("/tools/find", json={"Level": "Study", "Query": {"PatientID": value}})
        assert seen.status_code == 200 and seen.json() == [other], (value, seen.status_code, seen.text[:200])
        assert "X-Hardening-Missing" not in seen.headers
    assert server.get(f"/studies/{study}").json()["PatientMainDicomTags"]["PatientID"] == "PAT-HIDE"
