"""The SQL layer and the stores on it against a real PostgreSQL (Debian's, started here), and on SQLite.

Several nodes share one PostgreSQL database: two stores (two connections, as two nodes have)
append to one audit chain at once, re-sign one study's manifest at once, and the chain verifies
with nothing lost; DDL run by two nodes at once does not fail; errors hide the URL's password.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from orthanc_hardening.audit.chain import verify_chain
from orthanc_hardening.errors import StoreUnavailableError
from orthanc_hardening.seal.keys import KeyRing
from orthanc_hardening.services.audit_writer import AuditWriter
from orthanc_hardening.stores.audit_store import open_store
from orthanc_hardening.stores.sql import Database, sqlite_url
from tests.support.postgres import PostgresServer
from tests.unit.audit.conftest import FixedClock, make_event, signer_from_seed

pytestmark = [pytest.mark.integration]


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return sqlite_url(tmp_path / "store.db")
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.url()


def test_one_sql_for_both_dialects(database_url: str, request: pytest.FixtureRequest) -> None:
    schema = f"t_{request.node.callspec.id}_{id(request) % 10000}"
    database = Database(database_url, schema=schema)
    database.create_schema("CREATE TABLE IF NOT EXISTS items (id {id}, body {blob} NOT NULL, n {bigint} NOT NULL)")
    database.create_schema("CREATE TABLE IF NOT EXISTS items (id {id}, body {blob} NOT NULL, n {bigint} NOT NULL)")
    with database.transaction() as tx:
        first = tx.insert_id("INSERT INTO items (body, n) VALUES (?, ?)", (b"\x00one'; DROP TABLE items; --", 1))
        tx.executemany("INSERT INTO items (body, n) VALUES (?, ?)", [(b"two", 2), (b"three", 3)])
    assert first == 1
    assert [bytes(r[0]) for r in database.read("SELECT body FROM items ORDER BY id")] == [
        b"\x00one'; DROP TABLE items; --", b"two", b"three"]
    with pytest.raises(RuntimeError), database.transaction() as tx:
        tx.execute("DELETE FROM items")
        raise RuntimeError("rolled back")
    assert database.read_one("SELECT count(*) FROM items") == (3,)
    with pytest.raises(StoreUnavailableError, match="cannot write"):
        database.write("INSERT INTO missing_table VALUES (?)", (1,))
    assert database.read_one("SELECT count(*) FROM items") == (3,)  # usable after the error
    database.close()


def test_postgres_errors_hide_the_password(postgres: PostgresServer) -> None:
    url = f"postgresql://{postgres.user}:s3cret-pw@127.0.0.1:1/postgres"
    with pytest.raises(StoreUnavailableError) as caught:
        Database(url, schema="hardening_x")
    assert "s3cret-pw" not in str(caught.value) and "***" in str(caught.value)


def test_two_nodes_creating_the_schema_at_once_both_succeed(postgres: PostgresServer) -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def start() -> None:
        try:
            barrier.wait()
            store = open_store(postgres.url(), schema="ddl_race")
            store.close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_two_nodes_appending_to_one_postgres_chain_never_fork_or_lose_events(postgres: PostgresServer) -> None:
    signer = signer_from_seed(7)
    writers = [AuditWriter(open_store(postgres.url(), schema="two_nodes"), lambda: signer, FixedClock(),
                           checkpoint_every=25, checkpoint_seconds=1e6) for _ in range(2)]

    def node(index: int) -> None:
        for n in range(60):
            writers[index].record(make_event(n, series=f"NODE{index}"))

    threads = [threading.Thread(target=node, args=(i,)) for i in range(2) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for writer in writers:
        writer.flush()
        writer.close()
    reader = open_store(postgres.url(), schema="two_nodes")
    rows = list(reader.iter_rows())
    report = verify_chain(iter(rows), reader.checkpoints(), KeyRing(signer))
    assert (report.rows, report.unsigned_tail) == (240, 0)
    assert [r.seq for r in rows] == list(range(1, 241))
    assert sorted(r.event.series_uid for r in rows) == ["NODE0"] * 120 + ["NODE1"] * 120
    reader.close()


def test_audit_store_down_then_back_refuses_then_resumes(postgres: PostgresServer) -> None:
    store = open_store(postgres.url(), schema="outage")
    store.set_cursor("x", 1)
    with psycopg.connect(postgres.url(), autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
                      "AND datname = current_database()")
    with pytest.raises(StoreUnavailableError):
        store.get_cursor("x")
    assert store.get_cursor("x") == 1  # a new connection at the next call
    store.close()
