"""Load: 8 concurrent clients for a bounded time mixing ingest, retrieve, query and audit reads.

No request fails, none hangs (each has a timeout; every worker ends), and no event is lost: each
answered upload and read has its audit event."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import pytest
import requests

from tests.reliability.conftest import audit_rows, audit_verifies
from tests.support.dicom import make_instance, new_uid
from tests.support.server import OrthancServer

CLIENTS = 8
SECONDS = 30
REQUEST_TIMEOUT = 30


@pytest.mark.integration
def test_eight_clients_mixed_load_no_error_no_deadlock_no_lost_event(start_orthanc: Any) -> None:
    server: OrthancServer = start_orthanc()
    study_uid = new_uid()
    readable = []
    for i in range(CLIENTS):
        series_uid = new_uid()
        data = make_instance(patient_id="LOAD", study_uid=study_uid, series_uid=series_uid, seed=i)
        readable.append((series_uid, server.upload(data)["ID"]))

    lock = threading.Lock()
    errors: list[str] = []
    served: Counter[str] = Counter()
    uploaded_series: list[str] = []
    read_series: list[str] = []
    deadline = time.monotonic() + SECONDS

    def client(index: int) -> None:
        n = 0
        while time.monotonic() < deadline:
            n += 1
            kind = ("upload", "read", "find", "audit")[(n + index) % 4]
            try:
                if kind == "upload":
                    series_uid = new_uid()
                    answer = server.post("/instances", user="user", timeout=REQUEST_TIMEOUT,
                                         data=make_instance(patient_id=f"LOAD-{index}", series_uid=series_uid, seed=n),
                                         headers={"Content-Type": "application/dicom"})
                elif kind == "read":
                    series_uid, instance_id = readable[index]
                    answer = server.get(f"/instances/{instance_id}/file", user="user", timeout=REQUEST_TIMEOUT)
                elif kind == "find":
                    answer = server.post("/tools/find", user="user", timeout=REQUEST_TIMEOUT,
                                         json={"Level": "Series", "Query": {"PatientID": "LOAD*"}, "Limit": 50})
                else:
                    answer = server.get("/hardening/audit", user="auditor", timeout=REQUEST_TIMEOUT,
                                        params={"series": readable[index][0], "limit": 20})
            except requests.RequestException as exc:
                with lock:
                    errors.append(f"{kind}: no answer within {REQUEST_TIMEOUT}s: {exc}")
                return
            with lock:
                if answer.status_code != 200:
                    errors.append(f"{kind}: {answer.status_code} {answer.text[:200]}")
                    continue
                served[kind] += 1
                if kind == "upload":
                    uploaded_series.append(series_uid)
                elif kind == "read":
                    read_series.append(series_uid)

    workers = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(SECONDS + 2 * REQUEST_TIMEOUT)
    hung = sum(worker.is_alive() for worker in workers)
    assert hung == 0, f"{hung} clients still waiting: deadlock?"
    print(f"\nload: {sum(served.values())} requests served in {SECONDS}s by {CLIENTS} clients: {dict(served)}")
    assert errors == [], f"{len(errors)} failed requests, first: {errors[:5]}"
    assert server.get("/system", timeout=10).status_code == 200

    rows = audit_rows(server, 'WHERE "user" = ?', ("user",))
    imports = Counter(series for event, _u, series, _o, _t in rows if event == "110107")
    reads = Counter(series for event, _u, series, _o, _t in rows if event == "110103")
    lost_uploads = [series for series in uploaded_series if imports[series] < 1]
    assert lost_uploads == [], f"{len(lost_uploads)} answered uploads without their audit event"
    for series_uid, count in Counter(read_series).items():
        assert reads[series_uid] >= count, f"read events lost for {series_uid}: {reads[series_uid]} < {count}"
    audit_verifies(server)
