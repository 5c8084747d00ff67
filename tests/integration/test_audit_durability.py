"""Durability of the audit trail: ``kill -9`` during a burst loses no event of an answered request,
and an audit store that cannot write makes enforce mode refuse requests."""

from __future__ import annotations

import sqlite3
import threading
import time
from typing import Any

import pytest
import requests

from tests.support.dicom import make_instance, new_uid
from tests.support.server import OrthancServer


@pytest.mark.attack
def test_kill_during_burst_keeps_every_answered_event(start_orthanc: Any) -> None:
    server: OrthancServer = start_orthanc(hardening={"Audit": {"CheckpointEvery": 50}})
    readable = []
    for _ in range(8):
        series_uid = new_uid()
        readable.append((series_uid, server.upload(make_instance(series_uid=series_uid), user="admin")["ID"]))
    answered: list[tuple[str, str]] = []  # (kind, series uid) of every request that got a 200
    lock = threading.Lock()
    stop = threading.Event()

    def burst(index: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            try:
                if n % 2:
                    series_uid = new_uid()
                    answer = server.post("/instances", user="user", data=make_instance(series_uid=series_uid),
                                         timeout=10)
                    kind = "upload"
                else:
                    series_uid, instance_id = readable[index]
                    answer = server.get(f"/instances/{instance_id}/file", user="user", timeout=10)
                    kind = "read"
            except requests.RequestException:
                return  # the server died under us: this request was not answered
            if answer.status_code == 200:
                with lock:
                    answered.append((kind, series_uid))

    workers = [threading.Thread(target=burst, args=(i,)) for i in range(8)]
    for worker in workers:
        worker.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with lock:
            if len(answered) >= 120:
                break
        time.sleep(0.05)
    server.kill()
    stop.set()
    for worker in workers:
        worker.join(20)
    assert len(answered) >= 120

    conn = sqlite3.connect(server.data_dir / "audit.db")
    rows = conn.execute("SELECT event, series_uid FROM events WHERE user = 'user'").fetchall()
    conn.close()
    recorded = {(event, series) for event, series in rows}
    expected = {("110107" if kind == "upload" else "110103", series) for kind, series in answered}
    assert expected - recorded == set()

    server.restart()
    report = server.get("/hardening/audit/verify", user="auditor")
    assert report.status_code == 200, report.text
    assert report.json()["ok"] is True


@pytest.mark.attack
def test_unwritable_audit_store_refuses_requests_in_enforce_mode(start_orthanc: Any) -> None:
    server: OrthancServer = start_orthanc()
    instance_id = server.upload(make_instance(), user="admin")["ID"]
    blocker = sqlite3.connect(server.data_dir / "audit.db", isolation_level=None, timeout=30)
    blocker.execute("BEGIN EXCLUSIVE")  # the audit database is locked by someone else
    try:
        refused = server.get(f"/instances/{instance_id}/file", user="user", timeout=60)
        assert refused.status_code == 403
        plugin_route = server.get("/hardening/audit", user="auditor", timeout=60)
        assert plugin_route.status_code == 503
        assert plugin_route.json()["error"] == "store unavailable"
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert server.get(f"/instances/{instance_id}/file", user="user").status_code == 200  # recovered
    trail = server.get("/hardening/audit", user="auditor", params={"user": "user"}).json()["events"]
    assert [e["event"] for e in trail] == ["110103"]


@pytest.mark.attack
def test_unattributed_cget_is_refused_when_configured(start_orthanc: Any) -> None:
    from tests.support import dimse

    server: OrthancServer = start_orthanc(hardening={"Audit": {"RefuseUnattributedReads": True}})
    study_uid = new_uid()
    instance_id = server.upload(make_instance(study_uid=study_uid), user="admin")["ID"]
    result = dimse.c_get(server, study_uid)
    assert result.received == {}
    assert result.status != 0
    alerts = server.get("/hardening/audit", user="auditor", params={"event": "110113"}).json()["events"]
    assert any("RefuseUnattributedReads" in e["detail"] for e in alerts)
    # Reads on a jobs-engine thread (an archive) are attributed to their request and still served.
    study_id = server.get(f"/instances/{instance_id}/study").json()["ID"]
    assert server.get(f"/studies/{study_id}/archive", user="user").status_code == 200
