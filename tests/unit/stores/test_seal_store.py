"""The SQLite seal store: durability-related behaviour, states, failures and reconciliation marks."""

from __future__ import annotations

import pytest

from orthanc_hardening.errors import SealInvalidError, StoreUnavailableError
from orthanc_hardening.seal.identity import InstanceIdentity
from orthanc_hardening.seal.record import seal_attachment
from orthanc_hardening.stores.seal_store import ABANDONED, REMOVED, STORED, SQLiteSealStore
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
