"""Known crash inputs of Orthanc's core are refused before they reach it, and Orthanc stays up.

A 10 KB DICOM file with 50 nested sequences, stored by C-STORE, crashes Orthanc 1.10.1 at the
first ``GET /instances/{id}/tags`` (a poison instance). C-STORE refuses it with DIMSE 0xC000 and
a Security Alert, nothing is stored, and Orthanc keeps serving (REST upload: README).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.dicom import make_instance
from tests.support.poison import nested_instance
from tests.support.server import OrthancServer

pytestmark = [pytest.mark.integration]


@pytest.fixture(scope="module")
def server(start_orthanc_module: Any) -> OrthancServer:
    return start_orthanc_module()


def poison_alerts(server: OrthancServer) -> list[dict[str, Any]]:
    events = server.get("/hardening/audit", user="auditor", params={"event": "110113", "limit": 200}).json()["events"]
    return [event for event in events if "levels deep" in event["detail"]]


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
@pytest.mark.parametrize("route", ["/instances/{id}/modify", "/instances/{id}/anonymize"])
def test_deeply_nested_json_body_is_refused_and_orthanc_stays_up(server: OrthancServer, route: str) -> None:
    instance = server.upload(make_instance(patient_id="BODY"), user="admin")["ID"]
    before = server.get("/instances").json()
    body = "[" * 50000 + "]" * 50000
    answer = server.post(route.format(id=instance), user="admin", data=body)
    assert answer.status_code == 400, answer.text[:200]
    assert "levels deep" in answer.json()["detail"]
    assert server.get("/system").status_code == 200
    assert server.get("/instances").json() == before


def test_synchronous_body_routes_still_answer_as_orthanc(server: OrthancServer) -> None:
    instance = server.upload(make_instance(patient_id="BODY2"), user="admin")["ID"]
    modified = server.post(f"/instances/{instance}/modify", user="admin", json={"Replace": {"PatientName": "B^B"}})
    assert modified.status_code == 200 and modified.content[128:132] == b"DICM"
    assert modified.headers["Content-Type"].startswith("application/dicom")
    assert server.post(f"/instances/{instance}/modify", user="user", json={}).status_code == 403
