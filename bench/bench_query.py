"""Verified queries and the archive scrub: hardened Orthanc against plain Orthanc, one run.

    .venv/bin/python bench/bench_query.py [--quick]

* Query: the same studies (one small instance each) in a plain and a hardened Orthanc; the
  median time of ``POST /tools/find`` (Level Study, Expand), ``GET /studies?expand`` and a
  study-level C-FIND over TLS answering every study. Goal: hardened ≤ 1.2× plain.
* Scrub: the hardened server's scrub (hash every stored file, check its seal) against a raw
  SHA-256 pass over the same files in this process (page cache warm for both). Goal: ≥ 50 %.

Nothing is asserted: compare within one run. ``bench/run.py`` runs this module too.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "plugin")]

import requests  # noqa: E402
from bench_seal import raw_sha256  # noqa: E402
from pydicom.dataset import Dataset  # noqa: E402

from tests.support.dicom import make_instance, new_uid  # noqa: E402
from tests.support.dimse import c_find  # noqa: E402
from tests.support.pki import make_pki  # noqa: E402
from tests.support.server import OrthancServer, make_server  # noqa: E402


def upload(server: OrthancServer, files: list[bytes]) -> None:
    with requests.Session() as session:
        session.auth = server.auth("admin")
        for data in files:
            r = session.post(server.url + "/instances", data=data, verify=str(server.pki.ca),
                             headers={"Content-Type": "application/dicom", "Accept-Encoding": "identity"})
            r.raise_for_status()


def median_time(action: Any, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        action()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def query_actions(server: OrthancServer, studies: int) -> dict[str, Any]:
    session = requests.Session()
    session.auth = server.auth("admin")
    verify = str(server.pki.ca)
    headers = {"Accept-Encoding": "identity"}

    def find() -> None:
        r = session.post(server.url + "/tools/find", json={"Level": "Study", "Query": {}, "Expand": True},
                         verify=verify, headers=headers)
        assert r.status_code == 200 and len(r.json()) == studies, r.status_code

    def studies_expand() -> None:
        r = session.get(server.url + "/studies?expand", verify=verify, headers=headers)
        assert r.status_code == 200 and len(r.json()) == studies

    def cfind() -> None:
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.PatientName = ""
        query.StudyInstanceUID = ""
        _status, matches = c_find(server, query)
        assert len(matches) == studies, len(matches)

    return {"tools/find Expand": find, "studies?expand": studies_expand, "C-FIND study": cfind}


def scrub_figures(server: OrthancServer, label: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    run_id = server.post("/hardening/scrub", json={}).json()["run_id"]
    while True:
        body = server.get("/hardening/scrub").json()
        if body.get("run_id") == run_id and body.get("state") == "finished":
            break
        time.sleep(0.05)
    wall = time.perf_counter() - t0
    progress = body["report"]["progress"]
    files = [p for p in server.storage_dir.rglob("*") if p.is_file() and len(p.name) == 36]
    raw, _cpu, size = raw_sha256(files)
    raw_rate = size / raw
    return {
        "name": f"scrub read+verify vs raw SHA-256 ({label})",
        "count": progress["done"],
        "scrub_mb_per_s": round(progress["bytes"] / progress["elapsed_seconds"] / 1e6, 1),
        "scrub_wall_s_incl_index_listing": round(wall, 3),
        "raw_sha256_mb_per_s": round(raw_rate / 1e6, 1),
        "ratio_rate": round((progress["bytes"] / progress["elapsed_seconds"]) / raw_rate, 2),
        "findings": sum(body["report"]["counts"].values()),
    }


def run(quick: bool) -> list[dict[str, Any]]:
    studies = 200 if quick else 1000
    repeat = 3 if quick else 5
    size = 512  # 0.5 MB CT slices, as in ORTHANC-NOTES.md
    files = [make_instance(patient_id=f"Q-{i:05d}", patient_name=f"Bench^{i}", study_uid=new_uid(),
                           rows=size, cols=size, seed=i) for i in range(studies)]
    home = Path(tempfile.mkdtemp(prefix="bench-query-"))
    pki = make_pki(home / "pki")
    servers = {
        "plain": make_server(home / "plain", pki, plugin=False),
        "hardened": make_server(home / "hardened", pki),
    }
    results: list[dict[str, Any]] = []
    try:
        for server in servers.values():
            server.start()
            upload(server, files)
        actions = {label: query_actions(server, studies) for label, server in servers.items()}
        cold = median_time(actions["hardened"]["tools/find Expand"], 1)
        for name in actions["plain"]:
            row: dict[str, Any] = {"name": f"query {name} ({studies} studies)", "count": studies}
            for label in servers:
                actions[label][name]()  # warm-up
                row[label] = {"wall_s": median_time(actions[label][name], repeat)}
            row["ratio_wall"] = round(row["hardened"]["wall_s"] / row["plain"]["wall_s"], 2)
            results.append(row)
            print(f"{row['name']:<44} plain {row['plain']['wall_s']:.3f}s  hardened {row['hardened']['wall_s']:.3f}s"
                  f"  ratio {row['ratio_wall']:.2f}", flush=True)
        print(f"first verified query after ingest (reads each new file once): {cold:.3f}s", flush=True)
        results.append({"name": "first verified tools/find after ingest", "count": studies, "hardened_wall_s": cold})
        for label in ("first run", "second run, signatures cached"):
            scrub = scrub_figures(servers["hardened"], label)
            print(f"[{label}] scrub {scrub['scrub_mb_per_s']} MB/s vs raw SHA-256 {scrub['raw_sha256_mb_per_s']} MB/s "
                  f"(ratio {scrub['ratio_rate']}); whole scrub incl. index listing "
                  f"{scrub['scrub_wall_s_incl_index_listing']}s", flush=True)
            results.append(scrub)
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(home, ignore_errors=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    os.environ.setdefault("HARDENING_SHIM_DIR", str(REPO / "build" / "libssl-shim"))
    results = run(args.quick)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
