"""The PostgreSQL audit store against a real PostgreSQL server (Debian package, started here)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from orthanc_hardening.audit.chain import inspect_chain, verify_chain
from orthanc_hardening.audit.query import AuditQuery
from orthanc_hardening.audit.store import PostgresAuditStore, open_store
from orthanc_hardening.audit.writer import AuditWriter
from orthanc_hardening.seal.keys import KeyRing
from tests.support.server import free_port
from tests.unit.audit.conftest import FixedClock, make_event, signer_from_seed

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _as_postgres_user(args: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root: run it as "nobody" then.
    return ["runuser", "-u", "nobody", "--", *args] if os.geteuid() == 0 else args


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    if not (PG_BIN / "initdb").exists():
        pytest.skip("PostgreSQL server binaries are not installed")
    home = Path(tempfile.mkdtemp(prefix="audit-pg-"))
    if os.geteuid() == 0:
        shutil.chown(home, "nobody")
    data = home / "data"
    subprocess.run(_as_postgres_user([str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "audit"]),
                   check=True, capture_output=True)
    port = free_port()
    subprocess.run(_as_postgres_user([str(PG_BIN / "pg_ctl"), "-D", str(data), "-w", "-l", str(home / "log"),
                                      "-o", f"-k {home} -p {port} -c listen_addresses=127.0.0.1", "start"]),
                   check=True, capture_output=True)
    try:
        yield f"postgresql://audit@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(_as_postgres_user([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
                       capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


def test_postgres_store_chains_queries_and_verifies(postgres_url: str) -> None:
    signer = signer_from_seed(1)
    store = open_store(postgres_url)
    assert isinstance(store, PostgresAuditStore)
    writer = AuditWriter(store, lambda: signer, FixedClock(), checkpoint_every=10, checkpoint_seconds=1e6)
    threads = [threading.Thread(target=lambda i=i: [writer.record(make_event(n, series=f"S{i}")) for n in range(20)])
               for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    writer.close()

    reader = open_store(postgres_url)
    report = verify_chain(reader.iter_rows(), reader.checkpoints(), KeyRing(signer))
    assert (report.rows, report.unsigned_tail) == (80, 0)
    assert [r.event.series_uid for r in reader.query(AuditQuery(series="S2", limit=5))] == ["S2"] * 5
    assert [r.seq for r in reader.read_after(78, 10)] == [79, 80]
    reader.set_cursor("syslog", 42)
    assert reader.get_cursor("syslog") == 42

    # An attacker with database access edits one row: verification names it.
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute('UPDATE events SET "user" = %s WHERE seq = 33', ("mallory",))
    broken = inspect_chain(reader.iter_rows(), reader.checkpoints(), KeyRing(signer))
    assert not broken.ok and broken.first_broken_seq == 33
    reader.close()
