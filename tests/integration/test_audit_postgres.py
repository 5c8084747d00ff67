"""The PostgreSQL audit store against a real PostgreSQL server (Debian package, started here)."""

from __future__ import annotations

import threading

import pytest

from orthanc_hardening.audit.chain import inspect_chain, verify_chain
from orthanc_hardening.audit.query import AuditQuery
from orthanc_hardening.seal.keys import KeyRing
from orthanc_hardening.services.audit_writer import AuditWriter
from orthanc_hardening.stores.audit_store import PostgresAuditStore, open_store
from tests.support.postgres import PostgresServer
from tests.unit.audit.conftest import FixedClock, make_event, signer_from_seed


@pytest.fixture(scope="module")
def postgres_url(postgres: PostgresServer) -> str:
    return postgres.url()


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
