"""Crash: ``kill -9`` of a hardened Orthanc in the middle of a mixed ingest storm (REST uploads from
threads, C-STORE over DICOM TLS) and reads; after a restart on the same home every acknowledged
instance is present and its seal verifies, every answered request has its audit event, and the
audit chain verifies."""

from __future__ import annotations

import sys
import threading
import time
import traceback
from typing import Any

import pytest
import requests

from tests.reliability.conftest import audit_rows, audit_verifies, lookup_instance, seal_report
from tests.support import dimse
from tests.support.dicom import make_instance, new_uid
from tests.support.server import OrthancServer

IMPORT = "110107"
INSTANCES_ACCESSED = "110103"
STORM_SECONDS = 25  # upper bound; the kill comes as soon as enough requests were answered
ANSWERED_BEFORE_KILL = 150
CLIENT_JOIN_SECONDS = 60  # after the kill, for all client threads together


@pytest.mark.attack
def test_kill_9_during_mixed_storm_loses_no_acknowledged_instance_or_event(start_orthanc: Any) -> None:
    server: OrthancServer = start_orthanc(hardening={"Audit": {"CheckpointEvery": 50}})
    readable: list[tuple[str, str]] = []  # (series uid, instance id) read during the storm
    for _ in range(4):
        series_uid = new_uid()
        readable.append((series_uid, server.upload(make_instance(series_uid=series_uid))["ID"]))

    lock = threading.Lock()
    stop = threading.Event()
    acknowledged: dict[str, str] = {}  # sop uid -> series uid (REST 200 or DIMSE 0x0000)
    rest_uploads: list[str] = []  # series uid of every answered REST upload (user "user")
    dimse_stores: list[str] = []  # series uid of every C-STORE answered 0x0000
    reads: list[str] = []  # series uid of every answered read (user "user")

    def rest_uploader(worker: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            series_uid, sop_uid = new_uid(), new_uid()
            data = make_instance(patient_id=f"CRASH-{worker}", series_uid=series_uid, sop_uid=sop_uid, seed=n)
            try:
                answer = server.post("/instances", user="user", data=data, timeout=15,
                                     headers={"Content-Type": "application/dicom"})
            except requests.RequestException:
                return  # the server died under us: not acknowledged
            if answer.status_code == 200:
                with lock:
                    acknowledged[sop_uid] = series_uid
                    rest_uploads.append(series_uid)

    def dimse_storer() -> None:
        while not stop.is_set():
            batch = [(new_uid(), new_uid()) for _ in range(5)]
            files = [make_instance(patient_id="CRASH-DIMSE", series_uid=series, sop_uid=sop) for series, sop in batch]
            try:
                statuses = dimse.c_store(server, files)
            except Exception:  # association refused or aborted by the crash
                return
            with lock:
                for (series, sop), status in zip(batch, statuses, strict=False):
                    if status == 0:
                        acknowledged[sop] = series
                        dimse_stores.append(series)

    def reader(index: int) -> None:
        series_uid, instance_id = readable[index]
        while not stop.is_set():
            try:
                answer = server.get(f"/instances/{instance_id}/file", user="user", timeout=15)
            except requests.RequestException:
                return
            if answer.status_code == 200:
                with lock:
                    reads.append(series_uid)

    workers = [threading.Thread(target=rest_uploader, args=(i,), name=f"rest-{i}", daemon=True) for i in range(3)]
    workers += [threading.Thread(target=dimse_storer, name=f"c-store-{i}", daemon=True) for i in range(2)]
    workers += [threading.Thread(target=reader, args=(i,), name=f"reader-{i}", daemon=True) for i in range(2)]
    for worker in workers:
        worker.start()
    deadline = time.monotonic() + STORM_SECONDS
    while time.monotonic() < deadline:
        with lock:
            if len(rest_uploads) + len(dimse_stores) + len(reads) >= ANSWERED_BEFORE_KILL and dimse_stores:
                break
        time.sleep(0.05)
    server.kill()
    stop.set()
    # Every client call is bounded (HTTP 15 s per socket operation; DICOM connect, ACSE, DIMSE and
    # network 15 s each), so a client still running a minute after the kill is hung.
    join_deadline = time.monotonic() + CLIENT_JOIN_SECONDS
    for worker in workers:
        worker.join(max(0.0, join_deadline - time.monotonic()))
    hung = {worker.name: worker.ident for worker in workers if worker.is_alive()}
    frames = sys._current_frames()
    assert hung == {}, "client threads hung after the crash:\n" + "\n".join(
        f"{name}:\n{''.join(traceback.format_stack(frames[ident]))}" for name, ident in hung.items() if ident in frames)
    with lock:
        acked = dict(acknowledged)
        uploads, stores, answered_reads = list(rest_uploads), list(dimse_stores), list(reads)
    assert uploads and stores and answered_reads, (len(uploads), len(stores), len(answered_reads))

    server.start()  # the same home: index, storage, seals and audit database survive the crash

    # Every acknowledged instance is present and its seal verifies.
    missing, unverified = [], []
    for sop_uid in acked:
        instance_id = lookup_instance(server, sop_uid)
        if instance_id is None:
            missing.append(sop_uid)
        elif seal_report(server, instance_id).get("verified") is not True:
            unverified.append(instance_id)
    assert missing == [], f"{len(missing)} acknowledged instances lost after kill -9"
    assert unverified == [], f"{len(unverified)} acknowledged instances whose seal does not verify"

    # Every answered request has its audit event.
    rows = audit_rows(server)
    imports = {series for event, _user, series, _outcome, _transport in rows if event == IMPORT}
    rest_reads = [series for event, user, series, _o, _t in rows if event == INSTANCES_ACCESSED and user == "user"]
    lost_imports = [series for series in uploads + stores if series not in imports]
    assert lost_imports == [], f"{len(lost_imports)} acknowledged stores without their audit event"
    for series_uid in set(answered_reads):
        assert rest_reads.count(series_uid) >= answered_reads.count(series_uid), f"read events lost for {series_uid}"

    body = audit_verifies(server)
    print(f"\ncrash: {len(acked)} acknowledged instances checked ({len(uploads)} REST, {len(stores)} C-STORE), "
          f"{len(answered_reads)} answered reads, {len(rows)} audit events on disk, verify {body}")
