"""``POST /tools/reset`` by an administrator leaves a hardened Orthanc serving again.

Orthanc's in-process reset cannot re-initialise the plugin's cryptography (``shell/reset.py``):
the plugin turns it into a clean exit plus ``restart-requested``, and the supervisor (here the
test, as ``make run`` does) starts Orthanc again. After the restart the plugin enforces as
before: permissions, seals, the audit trail.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.dicom import make_instance
from tests.support.server import OrthancServer

pytestmark = [pytest.mark.integration]


@pytest.mark.attack
def test_reset_by_an_administrator_is_a_clean_exit_and_the_restart_is_hardened(start_orthanc: Any) -> None:
    server: OrthancServer = start_orthanc()
    instance = server.upload(make_instance(patient_id="RESET"), user="user")["ID"]
    original = server.get(f"/instances/{instance}/file", user="user").content

    refused = server.post("/tools/reset", user="user")
    assert refused.status_code == 403 and refused.json()["permission"] == "all"
    assert server.get("/system").status_code == 200

    answer = server.post("/tools/reset", user="admin")
    assert answer.status_code == 200, answer.text
    assert server.wait_exit(timeout=60) == 0
    marker = server.data_dir / "restart-requested"
    assert marker.read_text().strip() == "admin"
    assert "Segmentation fault" not in server.log_text() and "NameError" not in server.log_text()

    marker.unlink()  # what make run does before it starts Orthanc again
    server.start()
    assert server.get(f"/instances/{instance}/file", user="user").content == original
    assert server.get(f"/hardening/instances/{instance}/seal", user="user").json()["verified"] is True
    assert server.delete(f"/instances/{instance}", user="user").status_code == 403
    trail = server.get("/hardening/audit", user="auditor", params={"event": "110100", "user": "admin"}).json()
    assert any(event["route"] == "POST /tools/reset" for event in trail["events"])
    verify = server.get("/hardening/audit/verify", user="auditor").json()
    assert verify["ok"] is True, verify
