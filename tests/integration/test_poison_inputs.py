"""Known crash inputs of Orthanc's core are refused before they reach it, and Orthanc stays up.

A 10 KB DICOM file with 50 nested sequences, stored by C-STORE, crashes Orthanc 1.10.1 at the
first ``GET /instances/{id}/tags`` (a poison instance) and segfaults it on REST upload. C-STORE
refuses it with DIMSE 0xC000, REST upload (also inside a zip) and WebDAV with Orthanc's own
"Bad file format" before its core parses the file; each is a Security Alert, nothing is stored,
and Orthanc keeps serving. STOW-RS gets the DICOMweb plugin's 400 with the file in its
FailedSOPSequence on trixie and forky (bookworm: README).
"""

from __future__ import annotations

import io
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tests.support.dicom import make_instance
from tests.support.poison import deflated_nested_instance, nested_instance, sequence_bomb_after_pixels
from tests.support.server import DICOMWEB_PLUGIN, PYTHON_PLUGIN, OrthancServer, orthanc_version

pytestmark = [pytest.mark.integration]


@pytest.fixture(scope="module")
def server(start_orthanc_module: Any) -> OrthancServer:
    # PEER: a secure peer nobody answers at (the sends to it fail; an unknown one is refused earlier).
    return start_orthanc_module(config={"Plugins": [PYTHON_PLUGIN, DICOMWEB_PLUGIN],
                                        "OrthancPeers": {"PEER": {"Url": "https://127.0.0.1:9/"}}})


def poison_alerts(server: OrthancServer) -> list[dict[str, Any]]:
    events = server.get("/hardening/audit", user="auditor", params={"event": "110113", "limit": 200}).json()["events"]
    words = ("levels deep", "too deep", "deeper than")
    return [event for event in events if any(word in event["detail"] for word in words)]


@pytest.mark.attack
def test_deeply_nested_cstore_is_refused_and_no_poison_instance_is_stored(server: OrthancServer,
                                                                         tmp_path: Path) -> None:
    before = server.get("/instances").json()
    alerts = len(poison_alerts(server))
    poison = tmp_path / "poison.dcm"
    poison.write_bytes(nested_instance(50))
    result = server.dcmtk("storescu", "-v", files=[str(poison)])
    assert "Received Store Response (Error: CannotUnderstand)" in result.stdout + result.stderr, result.stdout
    assert len(poison_alerts(server)) == alerts + 1
    assert server.get("/instances").json() == before
    assert server.get("/system").status_code == 200


@pytest.mark.attack
@pytest.mark.parametrize("route", ["/instances/{id}/modify", "/instances/{id}/anonymize", "/tools/bulk-delete",
                                   "/tools/bulk-content", "/tools/find", "/modalities/{id}"])
def test_deeply_nested_json_body_is_refused_and_orthanc_stays_up(server: OrthancServer, route: str) -> None:
    instance = server.upload(make_instance(patient_id="BODY"), user="admin")["ID"]
    before, alerts = server.get("/instances").json(), len(poison_alerts(server))
    body = "[" * 50000 + "]" * 50000
    method = "PUT" if route.startswith("/modalities") else "POST"
    answer = server.request(method, route.format(id="deep" if method == "PUT" else instance), user="admin", data=body)
    assert answer.status_code == 400, answer.text[:200]
    detail = answer.json().get("detail") or answer.json()["Details"]  # Orthanc's error form on /tools/find
    assert "levels deep" in detail or "deeper than 32 levels" in detail
    assert len(poison_alerts(server)) == alerts + 1
    assert server.get("/system").status_code == 200
    assert server.get("/instances").json() == before


# Routes Orthanc answers with a job, or that store or query: a 1 KB body nested 500 levels deep
# segfaults plain Orthanc 1.10.1, 1.12.7 and 1.13.0 on each of them.
JOB_ROUTES = [
    "/studies/{study}/modify", "/studies/{study}/anonymize", "/series/{series}/modify", "/series/{series}/anonymize",
    "/patients/{patient}/modify", "/patients/{patient}/anonymize", "/tools/bulk-modify", "/tools/bulk-anonymize",
    "/modalities/TESTSCU/store", "/modalities/TESTSCU/move", "/modalities/TESTSCU/get", "/peers/PEER/store",
    "/tools/create-dicom", "/tools/create-archive", "/tools/create-media", "/tools/create-media-extended",
    "/studies/{study}/archive", "/studies/{study}/media",
]
QUERY_ROUTES = ["/modalities/TESTSCU/query", "/modalities/TESTSCU/find-study", "/modalities/TESTSCU/find"]
DEEP_500 = "[" * 500 + "]" * 500


def orthanc_state(server: OrthancServer) -> tuple[Any, ...]:
    """What a refused request must leave as it was: every resource and every job."""
    return tuple(server.get(f"/{level}").json() for level in ("patients", "studies", "series", "instances", "jobs"))


def python_lock_released_during_calls(server: OrthancServer) -> bool:
    """Python plugin 4.3+ with Python.AllowThreads (trixie, forky): the modality queries get a stand-in."""
    version = server.get("/plugins/python").json().get("Version", "0")
    return tuple(int(part) for part in version.split(".")[:2]) >= (4, 3)


@pytest.mark.attack
@pytest.mark.parametrize("route", QUERY_ROUTES)
def test_deep_json_to_a_modality_query_from_a_clinician_never_reaches_orthanc(server: OrthancServer,
                                                                             route: str) -> None:
    before, alerts, refusals = orthanc_state(server), len(poison_alerts(server)), len(access_alerts(server, "user"))
    answer = server.post(route, user="user", data=DEEP_500)  # `user` holds q-r-remote-modalities
    if python_lock_released_during_calls(server):  # trixie, forky: the stand-in checks the body
        assert answer.status_code == 400, answer.text[:200]
        assert "more than 32 levels deep" in answer.json()["detail"]
        assert len(poison_alerts(server)) == alerts + 1 and poison_alerts(server)[0]["user"] == "user"
    else:  # bookworm: no stand-in can wait for a modality there; the route needs `all`
        assert answer.status_code == 403 and answer.content == b"", answer.text[:200]
        new = newest(access_alerts(server, "user"), refusals)
        assert len(new) == 1 and f"lacks the permission 'all' that POST {route} needs" in new[0], new
        assert "modality query" in new[0]
        mine = server.get("/hardening/permissions", user="user").json()
        assert any(rule.get("reason") and not rule["allowed"] for rule in mine["routes"])
    assert server.get("/system").status_code == 200
    assert orthanc_state(server) == before


@pytest.mark.attack
@pytest.mark.parametrize("route", JOB_ROUTES + QUERY_ROUTES)
def test_deep_json_to_a_job_store_or_query_route_is_refused_and_orthanc_stays_up(server: OrthancServer,
                                                                                 route: str) -> None:
    if route in QUERY_ROUTES and not python_lock_released_during_calls(server):
        pytest.skip("bookworm (Python plugin 4.0): no stand-in for the modality queries, README")
    instance = server.upload(make_instance(patient_id="DEEPJOB"), user="admin")
    uri = route.format(study=instance["ParentStudy"], series=instance["ParentSeries"],
                       patient=server.get(f"/studies/{instance['ParentStudy']}").json()["ParentPatient"])
    before, alerts = orthanc_state(server), len(poison_alerts(server))
    answer = server.post(uri, user="admin", data=DEEP_500)
    assert answer.status_code == 400, answer.text[:200]
    body = answer.json()
    detail = body.get("detail") or body.get("Details", "")
    assert "more than 32 levels deep" in detail or "deeper than 32 levels" in detail, body
    assert len(poison_alerts(server)) == alerts + 1
    assert poison_alerts(server)[0]["user"] == "admin"
    assert server.get("/system").status_code == 200
    assert orthanc_state(server) == before


def test_synchronous_body_routes_still_answer_as_orthanc(server: OrthancServer) -> None:
    instance = server.upload(make_instance(patient_id="BODY2"), user="admin")["ID"]
    modified = server.post(f"/instances/{instance}/modify", user="admin", json={"Replace": {"PatientName": "B^B"}})
    assert modified.status_code == 200 and modified.content[128:132] == b"DICM"
    assert modified.headers["Content-Type"].startswith("application/dicom")
    assert server.post(f"/instances/{instance}/modify", user="user", json={}).status_code == 403
    content = server.post("/tools/bulk-content", user="user", json={"Resources": [instance], "Level": "Instance"})
    assert content.status_code == 200 and content.json()[0]["ID"] == instance
    assert server.post("/tools/bulk-delete", user="user", json={"Resources": [instance]}).status_code == 403
    assert server.post("/tools/bulk-delete", user="admin", json={"Resources": [instance]}).status_code == 200
    assert instance not in server.get("/instances").json()


def assert_refused_upload(server: OrthancServer, before: list[str], alerts: int) -> None:
    assert len(poison_alerts(server)) == alerts + 1
    assert server.get("/instances").json() == before
    assert server.get("/system").status_code == 200


@pytest.mark.attack
@pytest.mark.parametrize("bomb", [nested_instance(50), sequence_bomb_after_pixels(20000),
                                  deflated_nested_instance(50), deflated_nested_instance(50, meta_padding=6000),
                                  deflated_nested_instance(50, "1.2.840.10008.1.2.4.95")],
                         ids=["nested", "after-pixels", "deflated", "deflated-behind-a-long-meta-group",
                              "jpip-referenced-deflate"])
def test_sequence_bomb_uploaded_by_rest_is_refused_before_orthanc_parses_it(server: OrthancServer,
                                                                            bomb: bytes) -> None:
    before, alerts = server.get("/instances").json(), len(poison_alerts(server))
    answer = server.post("/instances", user="user", data=bomb)
    assert answer.status_code == 400, answer.text[:300]
    assert answer.json()["Message"] == "Bad file format"
    assert_refused_upload(server, before, alerts)
    alert = poison_alerts(server)[0]
    assert alert["user"] == "user" and "deep" in alert["detail"]


@pytest.mark.attack
def test_sequence_bomb_inside_a_zip_upload_is_refused(server: OrthancServer) -> None:
    before, alerts = server.get("/instances").json(), len(poison_alerts(server))
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("bomb.dcm", nested_instance(50))
    answer = server.post("/instances", user="user", data=archive.getvalue())
    assert answer.status_code == 200 and answer.json() == [], answer.text[:300]  # Orthanc skips a bad entry
    assert_refused_upload(server, before, alerts)


def stow_bomb(server: OrthancServer, user: str) -> Any:
    boundary = "hardening-boundary"
    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + nested_instance(50)
            + f"\r\n--{boundary}--\r\n".encode())
    return server.post("/dicom-web/studies", user=user, data=body, headers={
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": "application/dicom+json"})


def access_alerts(server: OrthancServer, user: str) -> list[str]:
    events = server.get("/hardening/audit", user="auditor",
                        params={"event": "110113", "user": user, "limit": 500}).json()["events"]
    return [event["detail"] for event in events if "lacks the permission" in event["detail"]]


def newest(details: list[str], known: int) -> list[str]:
    """The entries added since ``known`` were counted (the trail answers newest first)."""
    return details[: len(details) - known]


@pytest.mark.attack
def test_sequence_bomb_sent_by_stow_rs_is_refused(server: OrthancServer) -> None:
    if orthanc_version() < (1, 12, 0):
        pytest.skip("bookworm's DICOMweb plugin parses each part itself: STOW-RS needs `all` there (next test)")
    before, alerts = server.get("/instances").json(), len(poison_alerts(server))
    answer = stow_bomb(server, "user")
    assert answer.status_code == 400, answer.text[:300]
    failed = answer.json()["00081198"]["Value"]  # FailedSOPSequence: reported as not stored
    assert len(failed) == 1 and not answer.json()["00081199"].get("Value")  # empty ReferencedSOPSequence
    assert_refused_upload(server, before, alerts)


@pytest.mark.attack
def test_sequence_bomb_sent_by_stow_rs_from_a_clinician_never_reaches_bookworms_dicomweb(server: OrthancServer) -> None:
    if orthanc_version() >= (1, 12, 0):
        pytest.skip("trixie, forky: the received-instance callback refuses the file (previous test)")
    before, refusals = server.get("/instances").json(), len(access_alerts(server, "user"))
    answer = stow_bomb(server, "user")
    assert answer.status_code == 403 and answer.content == b""  # the HTTP filter's refusal
    new = newest(access_alerts(server, "user"), refusals)
    assert len(new) == 1 and "lacks the permission 'all' that POST /dicom-web/studies needs" in new[0], new
    assert "STOW-RS" in new[0]
    assert server.get("/system").status_code == 200
    assert server.get("/instances").json() == before


@pytest.mark.attack
def test_sequence_bomb_put_by_webdav_is_refused(server: OrthancServer) -> None:
    before, alerts = server.get("/instances").json(), len(poison_alerts(server))
    answer = server.put("/webdav/uploads/bomb.dcm", user="user", data=nested_instance(50))
    assert answer.status_code in (200, 201, 204), answer.text[:300]
    for _ in range(100):  # Orthanc stores WebDAV uploads from a queue, after answering
        if len(poison_alerts(server)) > alerts:
            break
        time.sleep(0.1)
    assert_refused_upload(server, before, alerts)


def test_ordinary_uploads_are_stored_as_by_orthanc(server: OrthancServer) -> None:
    answer = server.post("/instances", user="user", data=nested_instance(24, patient_id="DEEP24"))
    assert answer.status_code == 200 and answer.json()["Status"] == "Success"
    origin = server.get(f"/instances/{answer.json()['ID']}/metadata/Origin").text
    assert origin == "RestApi"
