"""Known crash inputs of Orthanc's core are refused before they reach it, and Orthanc stays up.

A 10 KB DICOM file with 50 nested sequences segfaults Orthanc 1.10.1 on REST upload and, stored
by C-STORE, at the first ``GET /instances/{id}/tags``. Each ingest path covered here refuses
it with its own error (400 JSON, DIMSE 0xC000) and a Security Alert, nothing is stored, and
Orthanc keeps serving.
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
def test_deeply_nested_upload_is_refused_and_orthanc_stays_up(server: OrthancServer) -> None:
    before = server.get("/instances").json()
    answer = server.post("/instances", user="user", data=nested_instance(50),
                         headers={"Content-Type": "application/dicom"})
    assert answer.status_code == 400, answer.text[:200]
    assert answer.json()["error"] == "bad request" and "levels deep" in answer.json()["detail"]
    assert poison_alerts(server)
    assert server.get("/system").status_code == 200
    assert server.get("/instances").json() == before
    # An ordinary file with sequences is still stored, through the same route.
    assert server.upload(make_instance(with_sequence=True), user="user")["Status"] == "Success"


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
