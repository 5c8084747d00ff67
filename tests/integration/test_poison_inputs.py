"""Known crash inputs of Orthanc's core are refused before they reach it, and Orthanc stays up.

A 10 KB DICOM file with 50 nested sequences, stored by C-STORE, crashes Orthanc 1.10.1 at the
first ``GET /instances/{id}/tags`` (a poison instance). C-STORE refuses it with DIMSE 0xC000 and
a Security Alert, nothing is stored, and Orthanc keeps serving (REST upload: README).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

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
