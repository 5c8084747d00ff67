"""Store benchmark on the SQL layer: SQLite (one WAL file) vs PostgreSQL (``Hardening.Database``).

    .venv/bin/python bench/bench_sql.py

Per back end: a single-row upsert of a 300-byte record (as a seal is written), a primary-key
read of it (as every verified read does), and ``AuditWriter.record`` from 4 threads (group
commit, each append serialised by the audit lock). PostgreSQL is Debian's, started on loopback
(``tests/support/postgres.py``). Nothing is asserted: compare within one run.
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "plugin")]

from orthanc_hardening.services.audit_writer import AuditWriter  # noqa: E402
from orthanc_hardening.stores.audit_store import open_store  # noqa: E402
from orthanc_hardening.stores.sql import Database, sqlite_url  # noqa: E402
from tests.support.postgres import PostgresServer  # noqa: E402
from tests.unit.audit.conftest import FixedClock, make_event, signer_from_seed  # noqa: E402

COUNT = 1000


def bench(url: str, schema: str | None) -> tuple[float, float, float]:
    """Microseconds per upsert, per read, per audit event."""
    db = Database(url, schema=schema, synchronous="NORMAL")
    db.create_schema("CREATE TABLE IF NOT EXISTS b (k TEXT PRIMARY KEY, v {blob} NOT NULL)")
    start = time.perf_counter()
    for i in range(COUNT):
        db.write("INSERT INTO b (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
                 (f"k{i}", b"x" * 300))
    write = (time.perf_counter() - start) / COUNT * 1e6
    start = time.perf_counter()
    for i in range(COUNT):
        db.read_one("SELECT v FROM b WHERE k = ?", (f"k{i}",))
    read = (time.perf_counter() - start) / COUNT * 1e6
    db.close()
    signer = signer_from_seed(1)
    writer = AuditWriter(open_store(url, "NORMAL", schema), lambda: signer, FixedClock(), checkpoint_every=1000,
                         checkpoint_seconds=1e6)
    start = time.perf_counter()
    threads = [threading.Thread(target=lambda: [writer.record(make_event(j)) for j in range(COUNT // 4)])
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    audit = (time.perf_counter() - start) / COUNT * 1e6
    writer.close()
    return write, read, audit


def line(name: str, figures: tuple[float, float, float]) -> str:
    write, read, audit = figures
    return f"{name:9} upsert {write:6.0f} us  read {read:5.0f} us  audit event (4 writers) {audit:5.0f} us"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        print(line("sqlite", bench(sqlite_url(Path(tmp) / "bench.db"), None)))
    server = PostgresServer().start()
    try:
        print(line("postgres", bench(server.url(), "bench")))
    finally:
        server.destroy()


if __name__ == "__main__":
    main()
