"""The audit rewrite of issue 16 against a running Orthanc: an intruder without any key deletes a
user's DELETE events, renumbers, recomputes the chain and deletes the checkpoints after the
edit. The witness file (outside DataDirectory, as ``make run`` sets it up) catches it: the
plugin refuses to start rather than sign over the forged head, and ``audit verify`` names it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from orthanc_hardening.audit.event import Action
from orthanc_hardening.stores.audit_store import SQLiteAuditStore
from tests.support.audit_rewrite import rewrite_audit_log
from tests.support.dicom import make_instance
from tests.support.server import REPO, OrthancServer

pytestmark = [pytest.mark.integration]


def cli(server: OrthancServer, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "plugin")}
    return subprocess.run([sys.executable, "-m", "orthanc_hardening", *args], capture_output=True, text=True,
                          env=env, timeout=60, check=False)


@pytest.mark.attack
def test_rewritten_audit_trail_is_detected_and_never_blessed_at_start(start_orthanc):
    server: OrthancServer = start_orthanc()
    witness = server.home / "witness" / "audit.witness"
    instance_id = server.upload(make_instance(patient_id="WITNESS-1"))["ID"]
    assert server.delete(f"/instances/{instance_id}").status_code == 200
    deletes = server.get("/hardening/audit", user="auditor", params={"action": "D"}).json()["events"]
    assert deletes, "the DELETE was audited"
    server.stop()
    assert witness.is_file() and not witness.is_relative_to(server.data_dir)
    assert cli(server, "audit", "verify", "--config", str(server.config_path)).returncode == 0
    witnessed = witness.read_bytes()

    database = server.data_dir / "audit.db"
    rewrite_audit_log(database, lambda row: row.event.action is Action.DELETE)

    result = cli(server, "audit", "verify", "--config", str(server.config_path), "--json")
    assert result.returncode == 1, result.stdout
    report = json.loads(result.stdout)
    assert report["witnesses"][0]["problems"], report
    assert any("not the one the witness saw" in p or "rows were removed" in p for p in report["problems"])

    server.start(wait=False)
    assert server.wait_exit(timeout=60) != 0
    assert "orthanc-hardening refuses to start: AuditChainError:" in server.log_text()
    # Nothing trusted changed: the witness has no new line, and no checkpoint was signed over the
    # forged head.
    assert witness.read_bytes() == witnessed
    store = SQLiteAuditStore(database, create=False)
    try:
        head = store.head()
        assert head is not None
        assert all(cp.seq < deletes[-1]["seq"] for cp in store.checkpoints())
    finally:
        store.close()


@pytest.mark.attack
def test_audit_rewritten_under_a_running_server_fails_the_online_verification(start_orthanc):
    server: OrthancServer = start_orthanc(hardening={"Audit": {"CheckpointEvery": 5}})
    instance_id = server.upload(make_instance(patient_id="WITNESS-2"))["ID"]
    assert server.delete(f"/instances/{instance_id}").status_code == 200
    for _ in range(6):  # enough events for a checkpoint after the DELETE
        assert server.get("/studies", user="user").status_code == 200
    before = server.get("/hardening/audit/verify", user="auditor")
    assert before.status_code == 200, before.text
    assert before.json()["witness"]["problems"] == [] and before.json()["witness"]["lines"] >= 2

    rewrite_audit_log(server.data_dir / "audit.db", lambda row: row.event.action is Action.DELETE)
    after = server.get("/hardening/audit/verify", user="auditor")
    assert after.status_code == 409, after.text
    assert after.json()["witness"]["problems"]
    alerts = server.get("/hardening/audit", user="auditor", params={"event": "110113"}).json()["events"]
    assert any("audit chain broken" in event["detail"] for event in alerts)
