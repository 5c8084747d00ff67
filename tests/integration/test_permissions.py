"""Least privilege on every route, against a real Orthanc with ``make run``'s accounts.

One server for the module (the tests never change what another reads): ``user`` is a
clinician (view, download, upload, queries), ``auditor`` reads the trail, ``admin`` holds
``all``. Each attack is sent by ``user`` the way a curious or compromised clinician's client
would; each asserts the exact refusal (403, not a 500 from a bug), the Security Alert naming
user, route and permission, and that what it aimed at did not change. Then every spelling of a
route (trailing and repeated slashes, percent-escapes, method faking) against each route-based
gate: permissions, the TLS rules, the audit trail.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.dicom import make_instance, new_uid
from tests.support.server import OrthancServer, orthanc_version

pytestmark = [pytest.mark.integration]

PLAIN_MODALITY = "PLAINPACS"


@pytest.fixture(scope="module")
def server(start_orthanc_module: Any) -> OrthancServer:
    # A plaintext modality, so that the TLS rules have something to refuse.
    plain = {"AET": PLAIN_MODALITY, "Host": "127.0.0.1", "Port": 1, "UseDicomTls": False}
    return start_orthanc_module(config={"DicomModalities": {PLAIN_MODALITY: plain}}, hardening={"Mode": "enforce"})


@pytest.fixture(scope="module")
def study(server: OrthancServer) -> dict[str, Any]:
    sop, study_uid, series_uid = new_uid(), new_uid(), new_uid()
    instance = server.upload(make_instance(patient_id="PERMS", sop_uid=sop, study_uid=study_uid,
                                           series_uid=series_uid), user="user")["ID"]
    parents = server.get(f"/instances/{instance}/study", user="user").json()
    return {"instance": instance, "study": parents["ID"], "patient": parents["ParentPatient"], "sop": sop,
            "uids": (study_uid, series_uid),
            "file": server.get(f"/instances/{instance}/file", user="user").content}


def alerts_for(server: OrthancServer, user: str) -> list[dict[str, Any]]:
    answer = server.get("/hardening/audit", user="auditor", params={"event": "110113", "user": user, "limit": 500})
    assert answer.status_code == 200, answer.text
    events: list[dict[str, Any]] = answer.json()["events"]
    return events


def assert_refused_and_audited(server: OrthancServer, answer: Any, route: str, permission: str) -> None:
    assert answer.status_code == 403, (route, answer.status_code, answer.text[:200])
    wanted = f"lacks the permission '{permission}' that {route} needs"
    details = [event["detail"] for event in alerts_for(server, "user") if event["route"] == route]
    assert any(wanted in detail for detail in details), (route, details[-3:])


def test_clinician_views_downloads_queries_and_uploads(server: OrthancServer, study: dict[str, Any]) -> None:
    for path in ("/studies", f"/studies/{study['study']}", f"/instances/{study['instance']}/tags",
                 f"/instances/{study['instance']}/preview", f"/studies/{study['study']}/archive", "/system",
                 f"/hardening/instances/{study['instance']}/seal", "/app/explorer.html"):
        assert server.get(path, user="user").status_code == 200, path
    assert server.post("/tools/find", user="user", json={"Level": "Study", "Query": {"PatientID": "PERMS"}}).json() \
        == [study["study"]]
    mine = server.get("/hardening/permissions", user="user").json()
    assert mine["permissions"] == ["download", "q-r-remote-modalities", "upload", "view"]


@pytest.mark.attack
def test_clinician_cannot_delete_a_study_a_patient_or_an_instance(server: OrthancServer, study: dict[str, Any]) -> None:
    for level in ("studies", "patients", "instances"):
        resource = study[{"studies": "study", "patients": "patient", "instances": "instance"}[level]]
        answer = server.delete(f"/{level}/{resource}", user="user")
        assert_refused_and_audited(server, answer, f"DELETE /{level}/{resource}", "delete")
    assert server.get(f"/instances/{study['instance']}/file").content == study["file"]


@pytest.mark.attack
def test_forged_instance_with_the_same_sop_uid_does_not_replace_the_original(
        server: OrthancServer, study: dict[str, Any]) -> None:
    # The forgery needs the original gone first; the delete is refused, so the upload of a
    # different file under the same SOP Instance UID does not replace what is stored.
    assert server.delete(f"/instances/{study['instance']}", user="user").status_code == 403
    study_uid, series_uid = study["uids"]
    forged = make_instance(patient_id="PERMS", sop_uid=study["sop"], study_uid=study_uid, series_uid=series_uid,
                           seed=666)
    answer = server.post("/instances", user="user", data=forged, headers={"Content-Type": "application/dicom"})
    assert answer.status_code == 200 and answer.json()["Status"] == "AlreadyStored"
    assert server.get(f"/instances/{study['instance']}/file").content == study["file"]


@pytest.mark.attack
def test_clinician_cannot_stop_reset_or_reconfigure_orthanc(server: OrthancServer) -> None:
    level = server.get("/tools/log-level").text
    modality = server.get("/modalities/TESTSCU/configuration").json()
    attacks = [
        ("POST", "/tools/shutdown", {}, "all"),
        ("POST", "/tools/reset", {}, "all"),
        ("PUT", "/tools/log-level", {"data": "trace"}, "settings"),
        ("PUT", "/tools/metrics", {"data": "0"}, "settings"),
        ("PUT", "/modalities/TESTSCU", {"json": {**modality, "Host": "203.0.113.9"}}, "settings"),
        ("PUT", "/peers/evil", {"json": {"Url": "https://203.0.113.9/"}}, "settings"),
        ("DELETE", "/changes", {}, "all"),
        ("DELETE", "/exports", {}, "all"),
        ("POST", "/tools/execute-script", {"data": "print(1)"}, "all"),
    ]
    for method, path, body, permission in attacks:
        answer = server.request(method, path, user="user", **body)
        assert_refused_and_audited(server, answer, f"{method} {path}", permission)
    assert server.get("/system").status_code == 200
    assert server.get("/tools/log-level").text == level
    assert server.get("/tools/metrics").text.strip() == "1"
    assert server.get("/modalities/TESTSCU/configuration").json()["Host"] == modality["Host"]
    assert "evil" not in server.get("/peers").json()
    assert server.get("/changes").json()["Changes"] != []


@pytest.mark.attack
def test_clinician_cannot_fabricate_modify_anonymize_send_or_cancel(server: OrthancServer,
                                                                     study: dict[str, Any]) -> None:
    before = server.get("/studies").json()
    attacks = [
        ("POST", "/tools/create-dicom", {"Tags": {"PatientID": "PERMS", "PatientName": "Forged"}}, "modify"),
        ("POST", f"/studies/{study['study']}/modify", {"Replace": {"PatientName": "X"}}, "modify"),
        ("POST", f"/instances/{study['instance']}/modify", {"Replace": {"PatientName": "X"}}, "modify"),
        ("POST", f"/studies/{study['study']}/anonymize", {}, "anonymize"),
        ("POST", "/modalities/TESTSCU/store", [study["instance"]], "send"),
        ("POST", "/jobs/00000000-0000-0000-0000-000000000000/cancel", {}, "all"),
        ("PUT", f"/studies/{study['study']}/labels/mine", None, "edit-labels"),
    ]
    for method, path, body, permission in attacks:
        answer = server.request(method, path, user="user", json=body)
        assert_refused_and_audited(server, answer, f"{method} {path}", permission)
    assert server.get("/studies").json() == before
    if orthanc_version() >= (1, 12, 0):  # labels are new in Orthanc 1.12
        assert server.get(f"/studies/{study['study']}/labels").json() == []


@pytest.mark.attack
def test_plugin_routes_refuse_with_json_naming_the_permission(server: OrthancServer) -> None:
    for path, permission in (("/hardening/audit", "audit"), ("/hardening/posture", "hardening-admin"),
                             ("/hardening/keys", "hardening-admin")):
        answer = server.get(path, user="user")
        assert answer.status_code == 403
        assert answer.json() | {"detail": ""} == {"error": "forbidden", "detail": "", "permission": permission,
                                                  "route": f"GET {path}", "user": "user"}
    # Separation of duties: Orthanc's administrator does not read the audit trail.
    assert server.get("/hardening/audit", user="admin").json()["permission"] == "audit"


@pytest.mark.attack
@pytest.mark.parametrize("spelling", [
    "/tools/log-level/", "/tools/log-level%2F", "/tools/log%2Dlevel", "/%74ools/log-level", "/tools/log-level?x=1",
])
def test_every_spelling_of_a_denied_route_is_refused(server: OrthancServer, spelling: str) -> None:
    level = server.get("/tools/log-level").text
    answer = server.request("PUT", spelling, user="user", data="trace")
    assert answer.status_code in (403, 400), answer.status_code
    assert server.get("/tools/log-level").text == level


@pytest.mark.attack
@pytest.mark.parametrize("faked", [{"params": {"_method": "DELETE"}},
                                   {"headers": {"X-HTTP-Method-Override": "DELETE"}}])
def test_method_faking_does_not_bypass_the_delete_permission(server: OrthancServer, study: dict[str, Any],
                                                             faked: dict[str, Any]) -> None:
    method = "GET" if "params" in faked else "POST"
    answer = server.request(method, f"/studies/{study['study']}", user="user", **faked)
    assert answer.status_code == 403
    assert server.get(f"/studies/{study['study']}").status_code == 200


@pytest.mark.attack
@pytest.mark.parametrize("suffix", ["/store", "/store/"])
def test_tls_rule_sees_every_spelling_of_a_send(server: OrthancServer, study: dict[str, Any], suffix: str) -> None:
    # The administrator may send, but not in plaintext: every spelling reaches the TLS rule.
    answer = server.post(f"/modalities/{PLAIN_MODALITY}{suffix}", user="admin", json=[study["instance"]])
    assert answer.status_code == 403, answer.text[:200]
    assert "TLS" in answer.text or answer.text == ""


@pytest.mark.parametrize("suffix", ["/file", "/file/"])
def test_audit_records_every_spelling_of_a_read(server: OrthancServer, study: dict[str, Any], suffix: str) -> None:
    route = f"GET /instances/{study['instance']}/file"

    def recorded() -> int:
        events = server.get("/hardening/audit", user="auditor",
                            params={"user": "user", "event": "110103", "limit": 500}).json()["events"]
        return sum(1 for event in events if event["route"] == route)

    before = recorded()
    assert server.get(f"/instances/{study['instance']}{suffix}", user="user").status_code == 200
    assert recorded() == before + 1
