"""No single request hangs the PACS: every read path of a tampered instance, under concurrent load.

Orthanc up to 1.12.1 holds the plugin context while the DICOMweb plugin reads an instance; a
call back into Orthanc from the storage read (a metrics push on the failure path) locked it
again and hung the thread with Python's lock held, and with it every later request (the
DICOMweb ``/rendered`` hang, shell/metrics.py). Here several clients read a tampered instance
on every path at once while others use the server; each request gets an answer in bounded
time, the tampered bytes are never served, and the server keeps answering afterwards.

On Orthanc before 1.12.2 (bookworm's 1.10.1, whose Python plugin 4.0 keeps Python's lock during
every call into Orthanc) a call of the plugin into Orthanc that meets a DICOMweb read in flight
can deadlock (README, "No single request stops, hangs or crashes it": the cycle GIL →
plugin-context lock → storage read → GIL, seen in a dump of the hung server). The HTTP filter of
a DICOMweb read (the audit trail's resolution of its UIDs, the read-binding gate) and the storage
read's index binding read the index facts there (``integrity/index_facts.py``) and make no call
into Orthanc, so on every target the DICOMweb reads (WADO-RS instance, metadata, frames,
rendered) run concurrently. What still calls Orthanc on bookworm (the QIDO-RS gate's
``/tools/find``, REST stand-ins such as the verified ``/studies``, the metrics push at scrape
time, the audit of REST routes) runs concurrently with the REST reads, apart from the DICOMweb
reads, and the QIDO-RS search one at a time; on 1.12.7 and 1.13.0 every path runs concurrently.
The start-up warning of that residual is checked last.
"""

from __future__ import annotations

import sqlite3
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from tests.support.dicom import make_instance, new_uid
from tests.support.server import DICOMWEB_PLUGIN, PYTHON_PLUGIN, OrthancServer, orthanc_version

pytestmark = [pytest.mark.integration]

REQUEST_TIMEOUT = 20  # a hung server fails the test instead of blocking it


@pytest.fixture(scope="module")
def server(start_orthanc_module: Any) -> OrthancServer:
    return start_orthanc_module(config={"Plugins": [PYTHON_PLUGIN, DICOMWEB_PLUGIN]})


def tamper(server: OrthancServer, instance: str) -> None:
    uuid = server.get(f"/instances/{instance}/attachments/dicom/info").json()["Uuid"]
    path = server.storage_dir / uuid[0:2] / uuid[2:4] / uuid
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.attack
def test_reads_of_a_tampered_instance_under_load_never_hang_the_server(server: OrthancServer) -> None:
    study_uid, series_uid = new_uid(), new_uid()
    files = {server.upload(make_instance(study_uid=study_uid, series_uid=series_uid, seed=n,
                                         instance_number=n + 1))["ID"]: n for n in range(2)}
    bad, good = list(files)
    sop = server.get(f"/instances/{bad}/simplified-tags").json()["SOPInstanceUID"]
    good_bytes = server.get(f"/instances/{good}/file").content
    tamper(server, bad)
    wado = f"/dicom-web/studies/{study_uid}/series/{series_uid}/instances/{sop}"
    bad_paths = [f"{wado}/rendered", f"{wado}/frames/1/rendered", f"{wado}/frames/1", wado, f"{wado}/metadata",
                 f"/instances/{bad}/file", f"/instances/{bad}/preview", f"/instances/{bad}/frames/0/rendered",
                 f"/instances/{bad}/tags", f"/instances/{bad}/numpy"]
    other_paths = ["/system", "/tools/metrics-prometheus", f"/instances/{good}/file", "/studies",
                   f"/dicom-web/studies/{study_uid}/series"]

    def fetch(path: str) -> tuple[str, int, bytes]:
        answer = server.get(path, user="admin", timeout=REQUEST_TIMEOUT)
        return path, answer.status_code, answer.content

    # Orthanc before 1.12.2 holds its plugin-context lock while orthanc-dicomweb reads an instance
    # (module docstring): there the DICOMweb reads run concurrently with each other, apart from
    # the paths that still call Orthanc from Python, and the QIDO-RS search one at a time after;
    # from 1.12.2 every path runs concurrently.
    shared_context = orthanc_version() >= (1, 12, 2)
    everything = bad_paths + other_paths
    qido = [p for p in everything if p.startswith("/dicom-web/") and p.endswith("/series")]
    dicomweb_reads = [p for p in everything if p.startswith("/dicom-web/") and p not in qido]
    rounds = [everything] if shared_context else [[p for p in everything if not p.startswith("/dicom-web/")],
                                                  dicomweb_reads]
    one_at_a_time = [] if shared_context else qido
    results: list[tuple[str, int, bytes]] = []
    with ThreadPoolExecutor(max_workers=8) as pool:
        try:
            for paths in rounds:
                results += list(pool.map(fetch, paths * 3))
            results += [fetch(path) for path in one_at_a_time]
        except requests.Timeout as exc:
            pytest.fail(f"a request hung the server: {exc}")
    assert {path for path, _status, _body in results} == set(everything)
    for path, status, body in results:
        if path in bad_paths and not path.endswith(("/tags", "/metadata")):
            # The stored bytes are refused as on every direct path (Orthanc's error when the
            # storage read raises); tags and metadata may come from the index (1.12 and later).
            assert status in (409, 415, 500), (path, status)
        elif path in other_paths:
            assert status == 200, (path, status)
        if path == f"/instances/{good}/file":
            assert body == good_bytes
    assert server.get("/system", timeout=REQUEST_TIMEOUT).status_code == 200
    metrics = server.get("/tools/metrics-prometheus", timeout=REQUEST_TIMEOUT).text
    failures = next(line for line in metrics.splitlines() if line.startswith("hardening_integrity_failures_total "))
    assert float(failures.split()[1]) >= 1
    alerts = server.get("/hardening/audit", user="auditor", params={"event": "110113", "limit": 50}).json()["events"]
    assert any("stored bytes do not match the seal" in event["detail"] for event in alerts)


def test_orthanc_holds_its_sqlite_index_exclusively_while_it_runs(server: OrthancServer) -> None:
    # What makes the index facts exact (README): nobody edits the index while Orthanc runs, so
    # every change comes through the storage area's callbacks. Read and write are both refused.
    db = sqlite3.connect(f"file:{server.index_db}?mode=rw", uri=True, timeout=1)
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            db.execute("BEGIN IMMEDIATE")
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            db.execute("SELECT COUNT(*) FROM Resources").fetchone()
    finally:
        db.close()
    assert server.get("/system", timeout=REQUEST_TIMEOUT).status_code == 200


def test_start_warns_that_dicomweb_under_load_can_hang_orthanc_before_1_12_2(server: OrthancServer) -> None:
    log = server.log_path.read_text(errors="replace")
    warned = "can hang Orthanc for good" in log and "libOrthancDicomWeb.so" in log
    assert warned == (orthanc_version() < (1, 12, 2)), log[-2000:]
