"""Smoke run of the benchmark driver (``bench/run.py --quick --floor``): every figure is produced for
the plain and the hardened Orthanc and the null plugin's ("floor"). No assertion on times (machines are noisy)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ORTHANC_ROWS = [
    "ingest REST, 1 client", "ingest REST, 4 clients", "ingest REST, 8 clients", "ingest C-STORE storescu +tls",
    "ingest C-STORE pynetdicom TLS", "retrieve /file, 1 client", "retrieve /file, 4 clients", "retrieve study archives",
    "retrieve C-GET pynetdicom TLS", "retrieve C-MOVE pynetdicom TLS",
    "retrieve C-MOVE pynetdicom TLS, one MR image each", "query /tools/find x20",
    "query C-FIND findscu x5",
]
COMPONENT_ROWS = ["audit durable append, 1 writer", "audit durable append, 8 writer", "audit series trail among",
                  "scrub read+verify vs raw SHA-256"]


@pytest.mark.integration
def test_quick_benchmark_produces_every_row_for_plain_hardened_and_floor(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    run = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--floor", "--json", str(out)],
                         cwd=REPO, capture_output=True, text=True, timeout=170, check=False)
    assert run.returncode == 0, f"bench/run.py --quick failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    report = json.loads(out.read_text())
    rows = {row["name"]: row for row in report["orthanc"]}
    assert list(rows) == ORTHANC_ROWS
    for name, row in rows.items():
        for label in ("plain", "hardened", "floor"):
            assert row[label]["wall_s"] > 0, f"{name}: no {label} figure"
        for ratio in ("ratio_wall", "floor_ratio_wall", "hardened_floor_ratio_wall"):
            assert row[ratio] is not None, f"{name}: no {ratio}"
    components = [row["name"] for row in report["components"]]
    for prefix in COMPONENT_ROWS:
        assert any(name.startswith(prefix) for name in components), f"no component row '{prefix}…' in {components}"
    assert report["versions"], "versions missing"
