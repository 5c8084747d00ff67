"""Audit store benchmark: durable events per second (1 and 8 writers) and a series' trail query.

    .venv/bin/python bench/bench_audit.py [--quick]

* append: ``AuditWriter.record`` from 1 and from 8 threads on a SQLite file in WAL mode, at both
  ``Hardening.Durability`` levels: ``process`` (``synchronous=NORMAL``, the default: a returned
  call's event survives kill -9) and ``power`` (``synchronous=FULL``: also fsynced, survives power
  loss). Each call returns only once its event is committed (8 writers share commits: group
  commit). Goal: >= 10,000 events/s with 8 writers (issue 19).
* trail: a database of 1,000,000 chained events (built with ``executemany``, 500 events per series),
  then ``GET /hardening/audit?series=UID`` as the store runs it (newest first, limit 100).
  Goal: < 50 ms. Then a full verification of that chain (``/hardening/audit/verify``).
Nothing is asserted: compare within one run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "plugin")]

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from orthanc_hardening.audit.chain import inspect_chain, link, make_checkpoint  # noqa: E402
from orthanc_hardening.audit.event import Action, AuditEvent, EventCode, Outcome, Transport  # noqa: E402
from orthanc_hardening.audit.query import AuditQuery  # noqa: E402
from orthanc_hardening.seal.keys import KeyRing, Signer  # noqa: E402
from orthanc_hardening.services.audit_writer import AuditWriter  # noqa: E402
from orthanc_hardening.stores.audit_store import SQLiteAuditStore  # noqa: E402

START = datetime(2026, 1, 1, tzinfo=UTC)


def _event(n: int, series: str) -> AuditEvent:
    return AuditEvent(time=START + timedelta(microseconds=n), event=EventCode.INSTANCES_ACCESSED,
                      action=Action.READ, outcome=Outcome.SUCCESS, transport=Transport.REST, user=f"user{n % 50}",
                      source_ip="10.0.0.1", route="GET /instances/x/file", patient_id=f"P{n % 5000}",
                      study_uid=f"1.2.826.0.1.{n % 3000}", series_uid=series, instance_count=1,
                      detail="instance file")


def _signer() -> Signer:
    return Signer.of(Ed25519PrivateKey.from_private_bytes(bytes(32)))


def append_rate(directory: Path, writers: int, seconds: float, durability: str = "process") -> dict[str, Any]:
    synchronous = "FULL" if durability == "power" else "NORMAL"
    store = SQLiteAuditStore(directory / f"append-{writers}-{durability}.db", synchronous=synchronous)
    writer = AuditWriter(store, _signer, lambda: datetime.now(UTC), checkpoint_every=1000, checkpoint_seconds=60)
    counts = [0] * writers
    stop = threading.Event()
    barrier = threading.Barrier(writers + 1)

    def work(index: int) -> None:
        barrier.wait()
        n = 0
        while not stop.is_set():
            writer.record(_event(n, f"1.2.3.{index}"))
            n += 1
        counts[index] = n

    threads = [threading.Thread(target=work, args=(i,)) for i in range(writers)]
    for thread in threads:
        thread.start()
    barrier.wait()
    began = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    batches = writer.batches
    writer.close()
    total = sum(counts)
    return {"name": f"audit durable append, {writers} writer(s), Durability {durability}", "count": total,
            "hardened": {"events_per_s": total / elapsed, "events_per_commit": total / max(1, batches)}}


def build_big(path: Path, events: int, series_count: int) -> list[str]:
    # Bulk load through the store's own schema, in one transaction (a fixture, not a measured append).
    store = SQLiteAuditStore(path, synchronous="NORMAL")
    series = [f"1.2.840.99.{i}" for i in range(series_count)]
    previous = None
    chunk = []
    columns = ('seq, time, event, action, outcome, "user", roles, source_ip, calling_aet, called_aet, transport, '
               "route, patient_id, study_uid, series_uid, instance_count, detail, prev_hash, hash")
    insert = f"INSERT INTO events ({columns}) VALUES ({', '.join('?' * 19)})"
    from orthanc_hardening.stores.audit_store import _row_values

    with store.database.transaction(action="load") as tx:
        for n in range(events):
            previous = link(previous, _event(n, series[n % series_count]))
            chunk.append(_row_values(previous))
            if len(chunk) == 20000:
                tx.executemany(insert, chunk)
                chunk.clear()
        tx.executemany(insert, chunk)
        assert previous is not None
        checkpoint = make_checkpoint(previous, _signer(), START)
        tx.execute("INSERT INTO checkpoints VALUES (?, ?, ?, ?, ?)",
                   (checkpoint.seq, checkpoint.hash, checkpoint.time, checkpoint.key_id, checkpoint.signature))
    store.close()
    return series


def trail_query(directory: Path, events: int) -> dict[str, Any]:
    path = directory / "big.db"
    began = time.perf_counter()
    series = build_big(path, events, max(1, events // 500))
    build_s = time.perf_counter() - began
    store = SQLiteAuditStore(path, create=False)
    timings = []
    for i in range(50):
        target = series[(i * 37) % len(series)]
        start = time.perf_counter()
        rows = store.query(AuditQuery(series=target, limit=100))
        timings.append(time.perf_counter() - start)
        assert len(rows) == 100 and rows[0].event.series_uid == target
    start = time.perf_counter()
    report = inspect_chain(store.iter_rows(), store.checkpoints(), KeyRing(_signer()))
    verify_s = time.perf_counter() - start
    store.close()
    assert report.ok, report.problems
    return {"name": f"audit series trail among {events:,} events (limit 100)", "count": len(timings),
            "hardened": {"median_ms": statistics.median(timings) * 1000, "max_ms": max(timings) * 1000,
                         "build_s": build_s, "verify_s": verify_s, "verify_events_per_s": events / verify_s}}


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Return the benchmark rows (durable append rate with 1 and 8 writers; trail query)."""
    seconds = 1.0 if quick else 3.0
    events = 100_000 if quick else 1_000_000
    with tempfile.TemporaryDirectory(prefix="bench-audit-") as tmp:
        directory = Path(tmp)
        rows = [append_rate(directory, writers, seconds, durability)
                for durability in ("process", "power") for writers in (1, 8)]
        return [*rows, trail_query(directory, events)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    for row in run(args.quick):
        print(json.dumps(row))


if __name__ == "__main__":
    main()
