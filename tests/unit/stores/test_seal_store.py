"""The SQLite seal store: durability-related behaviour, states, failures and reconciliation marks."""

from __future__ import annotations

import sqlite3

import pytest

from orthanc_hardening.errors import SealInvalidError, StoreUnavailableError
from orthanc_hardening.seal.identity import InstanceIdentity
from orthanc_hardening.seal.record import seal_attachment
from orthanc_hardening.stores.seal_store import ABANDONED, REMOVED, STORED, SQLiteSealStore, SQLSealStore
from orthanc_hardening.stores.sql import Database, sqlite_url
from tests.unit.seal.conftest import NOW, fixed_signer

UUIDS = ["0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f" + str(i) for i in range(4)]


def make_seal(uuid: str, content_type: int = 1):
    identity = InstanceIdentity(sop_instance_uid="1.2." + uuid[-1])
    return seal_attachment(uuid, content_type, b"data" + uuid.encode(), identity, fixed_signer(), NOW)


def test_put_get_survives_reopen_and_keeps_removed_rows(tmp_path):
    store = SQLiteSealStore(tmp_path / "seals.db")
    seal = make_seal(UUIDS[0])
    store.put(seal)
    store.put(make_seal(UUIDS[0], 3))
    store.close()
    store = SQLiteSealStore(tmp_path / "seals.db")
    assert store.get(UUIDS[0], 1) == seal
    assert store.get(UUIDS[1], 1) is None
    assert {s.content_type for s in store.seals_of_instance("1.2.0")} == {1, 3}
    store.mark_removed(UUIDS[0], 1, NOW)
    row = store.get_row(UUIDS[0], 1)
    assert row is not None and row.state == REMOVED and row.seal == seal
    assert store.count(STORED) == 1


def test_failures_are_counted_in_order(tmp_path):
    store = SQLiteSealStore(tmp_path / "seals.db")
    mark = store.last_failure_id()
    first = store.record_failure(UUIDS[0], 1, "SealMismatchError: x", NOW)
    store.record_failure(UUIDS[1], 1, "UnknownKeyError: y", NOW)
    assert [f.uuid for f in store.failures_since(mark)] == UUIDS[:2]
    assert [f.uuid for f in store.failures_since(first)] == [UUIDS[1]]
    assert store.last_failure_id() == first + 1


def test_suspect_rows_are_those_after_the_last_clean_stop(tmp_path):
    store = SQLiteSealStore(tmp_path / "seals.db")
    store.put(make_seal(UUIDS[0]))
    store.mark_clean()
    store.put(make_seal(UUIDS[1]))
    store.put(make_seal(UUIDS[2]))
    store.abandon(UUIDS[2], 1, NOW)
    assert [r.seal.uuid for r in store.suspect_rows()] == [UUIDS[1]]
    assert store.get_row(UUIDS[2], 1).state == ABANDONED


def test_a_node_never_takes_another_nodes_write_in_flight_for_a_suspect(tmp_path):
    """Two nodes on one database: node B's seal row, committed while its file is still being
    written, is not node A's to reconcile when A restarts (A would abandon a write B acknowledges)."""
    url = sqlite_url(tmp_path / "seals.db")
    node_a = SQLSealStore(Database(url), writer="A")
    node_b = SQLSealStore(Database(url), writer="B")
    node_a.put(make_seal(UUIDS[0]))
    node_a.mark_clean()
    node_b.put(make_seal(UUIDS[1]))  # B's write in flight
    node_a.put(make_seal(UUIDS[2]))  # A crashes after this row
    assert [r.seal.uuid for r in node_a.suspect_rows()] == [UUIDS[2]]
    assert [r.seal.uuid for r in node_b.suspect_rows()] == [UUIDS[1]]
    node_b.mark_clean()
    assert node_b.suspect_rows() == []
    assert [r.seal.uuid for r in node_a.suspect_rows()] == [UUIDS[2]]


def test_a_seal_store_from_before_writers_gains_the_column_and_keeps_its_suspects(tmp_path):
    path = tmp_path / "seals.db"
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE seals (uuid TEXT NOT NULL, content_type INTEGER NOT NULL, record BLOB NOT NULL, "
                "sop_instance_uid TEXT NOT NULL, study_uid TEXT NOT NULL, key_id TEXT NOT NULL, "
                "state TEXT NOT NULL DEFAULT 'stored', changed_at TEXT NOT NULL DEFAULT '', "
                "PRIMARY KEY (uuid, content_type))")
    seal = make_seal(UUIDS[0])
    old.execute("INSERT INTO seals (uuid, content_type, record, sop_instance_uid, study_uid, key_id) "
                "VALUES (?, 1, ?, ?, '', ?)", (seal.uuid, seal.to_bytes(), seal.sop_instance_uid, seal.key_id))
    old.commit()
    old.close()
    store = SQLiteSealStore(path)
    assert [r.seal.uuid for r in store.suspect_rows()] == [UUIDS[0]]
    store.put(make_seal(UUIDS[1]))
    assert store.get(UUIDS[0], 1) == seal and len(store.suspect_rows()) == 2


@pytest.mark.attack
def test_corrupted_row_raises_seal_invalid(tmp_path):
    store = SQLiteSealStore(tmp_path / "seals.db")
    store.put(make_seal(UUIDS[0]))
    store.database.write("UPDATE seals SET record = ?", (b'{"version": 1}',))
    with pytest.raises(SealInvalidError):
        store.get(UUIDS[0], 1)


def test_unopenable_store_raises_store_unavailable(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreUnavailableError):
        SQLiteSealStore(blocker / "seals.db")


@pytest.mark.parametrize(("synchronous", "pragma"), [("NORMAL", 1), ("FULL", 2)])
def test_synchronous_level_is_applied_and_record_bytes_round_trip(tmp_path, synchronous, pragma):
    store = SQLiteSealStore(tmp_path / "seals.db", synchronous)
    assert store.database.read_one("PRAGMA synchronous")[0] == pragma
    seal = make_seal(UUIDS[0])
    record = store.put(seal)
    assert store.get_record(UUIDS[0], 1) == record == seal.to_bytes()
    assert store.get_record(UUIDS[1], 1) is None


def test_unknown_synchronous_level_is_refused(tmp_path):
    with pytest.raises(ValueError, match="synchronous"):
        SQLiteSealStore(tmp_path / "seals.db", "OFF")


def test_a_put_is_one_statement_committed_when_it_returns(tmp_path):
    store = SQLiteSealStore(tmp_path / "seals.db", "NORMAL")
    statements: list[str] = []
    store.database._conn.set_trace_callback(statements.append)
    seal = make_seal(UUIDS[2])
    record = store.put(seal)
    assert [s.split()[0] for s in statements] == ["INSERT"]
    # Another connection (as after a kill -9 of this process) sees the row at once.
    with sqlite3.connect(tmp_path / "seals.db") as other:
        assert other.execute("SELECT record, state FROM seals WHERE uuid = ?", (UUIDS[2],)).fetchone() == \
            (record, STORED)
    statements.clear()
    assert store.get_record(UUIDS[2], 1) == record
    assert store.get_record(UUIDS[3], 1) is None
    assert [s.split()[0] for s in statements] == ["SELECT", "SELECT"]
