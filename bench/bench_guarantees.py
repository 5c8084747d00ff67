"""What the guarantees alone cost per instance: the work no implementation of them can skip.

    .venv/bin/python bench/bench_guarantees.py [--quick]

Every ingested byte is hashed into its seal and the seal is signed; every served byte is hashed
again and compared with its seal; every answered request has one durable audit event before any
byte leaves (DESIGN). This times those three in this process, on this machine, for the
benchmark's 512 KB CT file (``hashlib.sha256``, Ed25519 over a seal's signed bytes, one audit
event appended and waited for by a single writer, the latency a lone request sees). Added to
plain Orthanc's own time per instance (``bench/run.py``), they give the lowest ratio any design
keeping the guarantees can reach on this machine (bench/RESULTS.md, "where each goal stands").
Best of several runs: the floor, not the typical cost. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "plugin"), str(REPO / "bench")]

from bench_audit import _event, _signer  # noqa: E402

from orthanc_hardening.seal.identity import InstanceIdentity  # noqa: E402
from orthanc_hardening.seal.record import seal_attachment  # noqa: E402
from orthanc_hardening.services.audit_writer import AuditWriter  # noqa: E402
from orthanc_hardening.stores.audit_store import SQLiteAuditStore  # noqa: E402
from tests.support.dicom import make_instance  # noqa: E402


def best_of(operation: Callable[[], object], runs: int, loops: int) -> float:
    """The lowest mean time of ``operation`` over ``runs`` runs of ``loops`` calls, in seconds."""
    best = float("inf")
    for _ in range(runs):
        began = time.perf_counter()
        for _ in range(loops):
            operation()
        best = min(best, (time.perf_counter() - began) / loops)
    return best


def durable_event_latency(directory: Path, events: int) -> float:
    """Mean seconds for one audit event to be durable, one writer waiting for each (``Durability: process``)."""
    store = SQLiteAuditStore(directory / "latency.db", synchronous="NORMAL")
    writer = AuditWriter(store, _signer, lambda: datetime.now(UTC), checkpoint_every=100_000,
                         checkpoint_seconds=3600)
    try:
        for n in range(50):  # warm the statement cache and the file
            writer.record(_event(n, "1.2.3"))
        began = time.perf_counter()
        for n in range(events):
            writer.record(_event(n, "1.2.3"))
        return (time.perf_counter() - began) / events
    finally:
        writer.close()


def run(quick: bool = False) -> list[dict[str, Any]]:
    """One row per guaranteed operation: microseconds per 512 KB instance (best of several runs)."""
    data = make_instance(rows=512, cols=512, seed=1)
    runs, loops = (3, 20) if quick else (7, 200)
    signer = _signer()
    identity = InstanceIdentity(sop_instance_uid="1.2.3.4")
    seal = seal_attachment("0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9", 1, data, identity, signer,
                           datetime(2026, 1, 1, tzinfo=UTC))
    signed = seal.signed_bytes()
    latencies = []
    for _ in range(3):
        with tempfile.TemporaryDirectory(prefix="bench-guarantees-") as tmp:
            latencies.append(durable_event_latency(Path(tmp), 200 if quick else 2000))
    rows = [
        ("SHA-256 of the file (seal on ingest, check on every read)", best_of(lambda: hashlib.sha256(data).digest(),
                                                                              runs, loops)),
        ("Ed25519 signature of the seal (ingest)", best_of(lambda: signer.sign(signed), runs, loops)),
        ("one durable audit event, a lone writer waiting (every request)", min(latencies)),
    ]
    return [{"name": f"guarantee: {name}", "count": len(data), "hardened": {"us_per_instance": seconds * 1e6}}
            for name, seconds in rows]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    for row in run(args.quick):
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
