"""The SQL layer and the stores on it against a real PostgreSQL (Debian's, started here), and on SQLite.

Several nodes share one PostgreSQL database: two stores (two connections, as two nodes have)
append to one audit chain at once, re-sign one study's manifest at once, and the chain verifies
with nothing lost; DDL run by two nodes at once does not fail; errors hide the URL's password; the
scrub lease passes to another node when its holder dies, and that node resumes the run.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from orthanc_hardening.audit.chain import verify_chain
from orthanc_hardening.errors import StoreUnavailableError
from orthanc_hardening.seal.keys import KeyRing
from orthanc_hardening.seal.manifest import Manifest, build_manifest
from orthanc_hardening.services.audit_writer import AuditWriter
from orthanc_hardening.stores.audit_store import open_store
from orthanc_hardening.stores.manifest_store import ManifestStore
from orthanc_hardening.stores.scrub_state import ScrubLeaseLost, ScrubState
from orthanc_hardening.stores.sql import Database, sqlite_url
from tests.support.postgres import PostgresServer
from tests.unit.audit.conftest import FixedClock, make_event, signer_from_seed

pytestmark = [pytest.mark.integration]


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


def test_a_connection_killed_while_idle_is_replaced_before_the_transaction_starts(postgres: PostgresServer) -> None:
    store = open_store(postgres.url(), schema="outage")
    store.set_cursor("x", 1)
    with psycopg.connect(postgres.url(), autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
                      "AND datname = current_database()")
    assert store.get_cursor("x") == 1  # found dead at BEGIN (nothing ran yet): replaced once
    store.close()


def test_two_nodes_resigning_one_study_keep_the_latest_view(postgres: PostgresServer) -> None:
    # Node A reads the index (view 1) and is slow to sign; node B deletes an instance (view 2) and
    # re-signs meanwhile. Under the per-study lock B's read waits for A's write, so the stored
    # manifest is B's (the latest), never A's stale one written last.
    signer = signer_from_seed(3)
    clock = FixedClock()
    index = {"view": "view-1"}
    a_reading, order = threading.Event(), []
    node_a, node_b = (ManifestStore(Database(postgres.url(), schema="manifests_race")) for _ in range(2))

    def sign(store: ManifestStore, name: str) -> None:
        def build() -> Manifest:
            seen = index["view"]
            order.append((name, seen))
            if name == "A":
                a_reading.set()
                b_started.wait(30)
            return build_manifest(seen, "study-1", [], signer, clock())
        store.update("study-1", build)

    b_started = threading.Event()
    thread_a = threading.Thread(target=sign, args=(node_a, "A"))
    thread_a.start()
    assert a_reading.wait(30)
    index["view"] = "view-2"  # B deleted an instance

    def node_b_signs() -> None:
        b_started.set()
        sign(node_b, "B")

    thread_b = threading.Thread(target=node_b_signs)
    thread_b.start()
    thread_a.join(30)
    thread_b.join(30)
    assert order == [("A", "view-1"), ("B", "view-2")]
    stored = node_a.get("study-1")
    assert stored is not None and stored.study_uid == "view-2"
    node_a.close()
    node_b.close()


def test_scrub_lease_is_taken_over_after_its_holder_dies_and_the_run_resumes(postgres: PostgresServer) -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    node_a = ScrubState(Database(postgres.url(), schema="scrub_lease"), holder="node-a")
    node_b = ScrubState(Database(postgres.url(), schema="scrub_lease"), holder="node-b")
    assert node_a.take_lease(now)
    run = node_a.start_run(now, {"pause_seconds": 0})
    node_a.record(run, [("file-1", 1), ("file-2", 1)], [], 1.0, 200, 4, now)
    # Node A dies (kill -9: no release). While its lease is live, B refuses to scrub too.
    assert not node_b.take_lease(now + timedelta(seconds=30))
    assert node_b.lease_holder(now + timedelta(seconds=30)) == "node-a"
    later = now + timedelta(seconds=node_a.lease_seconds + 1)
    assert node_b.take_lease(later)
    latest = node_b.latest()
    assert latest is not None and latest["id"] == run and latest["state"] == "running"
    assert node_b.done(run) == {("file-1", 1), ("file-2", 1)}  # resumes where A stopped
    node_b.record(run, [("file-3", 1)], [], 2.0, 300, 4, later)
    # A comes back from a pause: its lease is gone, it writes nothing of its batch.
    with pytest.raises(ScrubLeaseLost):
        node_a.record(run, [("file-4", 1)], [], 3.0, 400, 4, later)
    assert node_b.done(run) == {("file-1", 1), ("file-2", 1), ("file-3", 1)}
    node_b.finish(run, "finished", later, {"state": "finished"})
    assert node_a.take_lease(later)  # released at the end of the run
    node_a.database.close()
    node_b.database.close()
