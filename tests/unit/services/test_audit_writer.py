"""The group-commit writer: concurrency, durability order, store unavailable and recovery."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from orthanc_hardening.audit.chain import verify_chain
from orthanc_hardening.audit.query import AuditQuery
from orthanc_hardening.errors import StoreUnavailableError
from orthanc_hardening.seal.keys import KeyRing, Signer
from orthanc_hardening.services.audit_writer import AuditWriter
from orthanc_hardening.stores.audit_store import SQLiteAuditStore, open_store
from tests.unit.audit.conftest import FixedClock, make_event


def writer_on(path: Path, signer: Signer, **kw: object) -> AuditWriter:
    store = SQLiteAuditStore(path, busy_timeout=float(kw.pop("busy_timeout", 5.0)))  # type: ignore[arg-type]
    return AuditWriter(store, lambda: signer, FixedClock(), checkpoint_seconds=1e6, **kw)  # type: ignore[arg-type]


def test_concurrent_writers_share_commits_and_keep_the_chain(db_path: Path, signer: Signer,
                                                             keyring: KeyRing) -> None:
    writer = writer_on(db_path, signer, checkpoint_every=50)
    threads = 16
    per_thread = 40
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []

    def work(index: int) -> None:
        barrier.wait()
        try:
            for n in range(per_thread):
                writer.record(make_event(n, user=f"user{index}"))
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    batches = writer.batches
    writer.close()
    assert errors == []
    reader = SQLiteAuditStore(db_path, create=False)
    rows = list(reader.iter_rows())
    assert [r.seq for r in rows] == list(range(1, threads * per_thread + 1))
    assert batches < threads * per_thread  # events shared commits (group commit)
    report = verify_chain(rows, reader.checkpoints(), keyring)
    assert report.unsigned_tail == 0  # close() signs the head


def test_record_returns_only_after_commit(db_path: Path, signer: Signer) -> None:
    writer = writer_on(db_path, signer)
    writer.record(make_event(1, series="9.9"))
    # A separate connection (another process would see the same) finds the row at once.
    conn = sqlite3.connect(db_path)
    assert conn.execute("SELECT count(*) FROM events WHERE series_uid = '9.9'").fetchone()[0] == 1
    conn.close()
    writer.close()


def test_checkpoint_every_n_events(db_path: Path, signer: Signer) -> None:
    writer = writer_on(db_path, signer, checkpoint_every=3)
    for n in range(7):
        writer.record(make_event(n))
    store = writer.store
    assert [c.seq for c in store.checkpoints()] == [1, 4, 7]  # the first commit signs, then every 3
    writer.close()


def test_reopened_writer_continues_the_chain(db_path: Path, signer: Signer, keyring: KeyRing) -> None:
    first = writer_on(db_path, signer)
    first.record(make_event(1))
    first.close()
    second = writer_on(db_path, signer)
    second.record(make_event(2))
    second.close()
    reader = SQLiteAuditStore(db_path, create=False)
    assert verify_chain(reader.iter_rows(), reader.checkpoints(), keyring).last_seq == 2


def test_locked_store_raises_then_recovers_without_losing_rows(db_path: Path, signer: Signer,
                                                               keyring: KeyRing) -> None:
    writer = writer_on(db_path, signer, busy_timeout=0.05)
    writer.record(make_event(1))
    blocker = sqlite3.connect(db_path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # another process holds the database
    with pytest.raises(StoreUnavailableError, match="not recorded"):
        writer.record(make_event(2))
    assert not writer.is_healthy
    blocker.execute("ROLLBACK")
    blocker.close()
    writer.record(make_event(3))  # writing resumes by itself
    writer.close()
    reader = SQLiteAuditStore(db_path, create=False)
    rows = list(reader.iter_rows())
    assert [r.event.detail for r in rows] == ["event 1", "event 3"]
    verify_chain(rows, reader.checkpoints(), keyring)


def test_an_unavailable_store_is_retried_once_a_second_and_logged_once_per_outage(
        db_path: Path, signer: Signer, caplog: pytest.LogCaptureFixture) -> None:
    store = SQLiteAuditStore(db_path, busy_timeout=0.05)
    writer = AuditWriter(store, lambda: signer, FixedClock(), checkpoint_seconds=0.3)
    writer.record(make_event(1))  # the first commit is signed at once
    writer.record(make_event(2))  # committed; its checkpoint falls due 0.3 s later
    blocker = sqlite3.connect(db_path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    with caplog.at_level(logging.ERROR, logger="orthanc_hardening"):
        time.sleep(2.0)  # the checkpoint is retried while the store stays locked
    blocker.execute("ROLLBACK")
    blocker.close()
    logged = [r for r in caplog.records if "audit store cannot write" in r.getMessage()]
    assert not writer.is_healthy
    assert 1 <= writer.failures <= 3, writer.failures  # paced at one retry a second, not 20
    assert len(logged) == 1, [r.getMessage() for r in logged]
    writer.record(make_event(3))  # writing (and the overdue checkpoint) resumes by itself
    assert writer.is_healthy
    writer.close()


def test_monitor_mode_keeps_failed_events_and_writes_them_later(db_path: Path, signer: Signer) -> None:
    writer = writer_on(db_path, signer, busy_timeout=0.05, keep_failed=True)
    blocker = sqlite3.connect(db_path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    with pytest.raises(StoreUnavailableError):
        writer.record(make_event(1))
    assert writer.backlog == 1
    blocker.execute("ROLLBACK")
    blocker.close()
    writer.record(make_event(2))
    assert writer.backlog == 0
    details = [r.event.detail for r in writer.store.read_after(0, 10)]
    writer.close()
    assert details == ["event 1", "event 2"]


def test_unwritable_directory_is_store_unavailable(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    with pytest.raises(StoreUnavailableError):
        SQLiteAuditStore(blocked / "audit.db")


def test_not_a_database_is_store_unavailable(db_path: Path) -> None:
    db_path.write_bytes(b"garbage" * 1000)
    with pytest.raises(StoreUnavailableError):
        SQLiteAuditStore(db_path)


def test_stopped_writer_refuses(db_path: Path, signer: Signer) -> None:
    writer = writer_on(db_path, signer)
    writer.close()
    with pytest.raises(StoreUnavailableError, match="stopped"):
        writer.record(make_event(1))


def test_read_after_and_cursors_for_exporters(db_path: Path, signer: Signer) -> None:
    writer = writer_on(db_path, signer)
    for n in range(5):
        writer.record(make_event(n))
    writer.close()
    store = open_store(f"sqlite://{db_path}")
    assert [r.seq for r in store.read_after(2, 2)] == [3, 4]
    assert store.get_cursor("syslog") == 0
    store.set_cursor("syslog", 4)
    store.close()
    assert SQLiteAuditStore(db_path).get_cursor("syslog") == 4


def test_query_filters_and_pages_newest_first(db_path: Path, signer: Signer) -> None:
    writer = writer_on(db_path, signer)
    for n in range(10):
        writer.record(make_event(n, series="A" if n % 2 else "B", user="bob" if n < 5 else "eve"))
    store = writer.store
    page = store.query(AuditQuery(series="A", limit=3))
    assert [r.seq for r in page] == [10, 8, 6]
    assert [r.seq for r in store.query(AuditQuery(series="A", limit=3, after=6))] == [4, 2]
    assert [r.seq for r in store.query(AuditQuery(series="A", user="bob"))] == [4, 2]
    writer.close()


def test_submit_starts_the_append_and_wait_returns_once_it_is_committed(db_path: Path, signer: Signer,
                                                                         keyring: KeyRing) -> None:
    writer = writer_on(db_path, signer)
    pending = [writer.submit([make_event(i, series=f"7.{i}")]) for i in range(5)]
    for waiter in pending:
        waiter.wait()
    conn = sqlite3.connect(db_path)
    assert conn.execute("SELECT count(*) FROM events WHERE series_uid LIKE '7.%'").fetchone()[0] == 5
    conn.close()
    writer.close()
    reader = SQLiteAuditStore(db_path, create=False)
    verify_chain(list(reader.iter_rows()), reader.checkpoints(), keyring)


def test_a_submitted_append_that_cannot_commit_raises_at_wait(db_path: Path, signer: Signer) -> None:
    writer = writer_on(db_path, signer, busy_timeout=0.05)
    writer.record(make_event(1))
    blocker = sqlite3.connect(db_path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    waiter = writer.submit([make_event(2)])
    with pytest.raises(StoreUnavailableError, match="not recorded"):
        waiter.wait()
    with pytest.raises(StoreUnavailableError):
        waiter.wait()  # every caller waiting on it is told, however often it asks
    blocker.execute("ROLLBACK")
    blocker.close()
    writer.close()


def test_submit_to_a_stopped_writer_refuses_at_once(db_path: Path, signer: Signer) -> None:
    writer = writer_on(db_path, signer)
    writer.close()
    with pytest.raises(StoreUnavailableError, match="stopped"):
        writer.submit([make_event(1)])


def test_every_caller_of_a_batch_is_released_even_when_one_never_waits(db_path: Path, signer: Signer) -> None:
    writer = writer_on(db_path, signer)
    abandoned = writer.submit([make_event(1)])  # e.g. a request that failed before waiting
    pending = [writer.submit([make_event(i)]) for i in range(2, 6)]
    for waiter in pending:
        waiter.wait()
        waiter.wait()  # a second wait returns at once
    writer.flush()
    abandoned.wait()
    writer.close()
    assert SQLiteAuditStore(db_path, create=False).count() == 5
