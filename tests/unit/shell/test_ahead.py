"""An upload's hash and identity prepared while Orthanc parses it (``shell/ahead.py``)."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator

import pytest

from orthanc_hardening.seal.identity import NO_IDENTITY
from orthanc_hardening.shell.ahead import Ahead, FileFacts, prepare_file, read_identity
from tests.support.dicom import make_instance


def settle(pool: Ahead) -> None:
    """Wait until no preparation runs (a take right after an offer finds it still queued, and a
    queued offer is never waited for; the next offer is not made while one runs)."""
    deadline = time.monotonic() + 10
    while pool.preparing():
        assert time.monotonic() < deadline, "a preparation did not finish"
        time.sleep(0.001)


@pytest.fixture
def ahead() -> Iterator[Ahead]:
    pool = Ahead()
    yield pool
    pool.stop()


_parked: list[threading.Event] = []


def on_other_thread(function) -> None:  # type: ignore[no-untyped-def]
    """Run ``function`` on a new thread that stays alive until the test ends (its ident is not reused)."""
    done, release = threading.Event(), threading.Event()

    def run() -> None:
        function()
        done.set()
        release.wait(30)

    threading.Thread(target=run, daemon=True).start()
    assert done.wait(10)
    _parked.append(release)


@pytest.fixture(autouse=True)
def release_parked_threads() -> Iterator[None]:
    yield
    while _parked:
        _parked.pop().set()


def test_offered_file_is_taken_with_its_hash_identity_and_index_tags(ahead: Ahead) -> None:
    data = make_instance(patient_id="AHEAD-1", seed=1)
    ahead.offer(data)
    settle(ahead)
    facts = ahead.take(bytes(bytearray(data)))  # equal bytes, another object: as Orthanc hands them over
    assert facts is not None
    assert facts.sha256 == hashlib.sha256(data).hexdigest()
    assert (facts.identity, facts.tags) == read_identity(data)
    assert facts.identity.patient_id == "AHEAD-1"
    assert ahead.held_bytes() == 0
    assert ahead.take(data) is None  # taken once


@pytest.mark.attack
def test_offer_of_other_bytes_is_never_taken(ahead: Ahead) -> None:
    # What Orthanc stores differs from what it received (a Lua script or a plugin modified the
    # file, compression, transcoding), down to one byte of the same length: the create never
    # gets the facts of other bytes, and computes them from what it stores.
    data = make_instance(patient_id="AHEAD-2", seed=2)
    stored = data[:-1] + bytes([data[-1] ^ 1])
    ahead.offer(data)
    settle(ahead)
    assert ahead.take(stored) is None
    assert ahead.held_bytes() == 0


def test_offer_of_another_thread_is_not_taken(ahead: Ahead) -> None:
    data = make_instance(seed=3)
    on_other_thread(lambda: ahead.offer(data))
    assert ahead.take(data) is None
    assert ahead.held_bytes() == len(data)  # until that thread's next offer, or the budget drops it


def test_next_offer_of_a_thread_replaces_one_whose_create_never_came(ahead: Ahead) -> None:
    refused, stored = make_instance(seed=4), make_instance(seed=5)
    ahead.offer(refused)
    settle(ahead)
    ahead.offer(stored)
    settle(ahead)
    assert ahead.held_bytes() == len(stored)
    assert ahead.take(stored) is not None


def test_file_received_while_every_worker_is_busy_is_left_to_the_create() -> None:
    started, release = threading.Event(), threading.Event()

    def slow(data: bytes) -> FileFacts:
        started.set()
        release.wait(10)
        return prepare_file(data)

    pool = Ahead(prepare=slow, workers=1)
    try:
        busy, next_file = make_instance(seed=6), make_instance(seed=7)
        on_other_thread(lambda: pool.offer(busy))
        assert started.wait(10)
        pool.offer(next_file)  # not queued behind the busy one
        assert pool.held_bytes() == len(busy)
        assert pool.take(next_file) is None
    finally:
        release.set()
        pool.stop()


def test_offers_replaced_and_taken_at_once_never_block() -> None:
    # An offer dropped while its preparation is still pending is cancelled with the lock held.
    pool = Ahead()
    try:
        files = [make_instance(seed=20 + n) for n in range(3)]
        for n in range(300):
            pool.offer(files[n % 3])
            if n % 2:
                pool.take(files[n % 3])
        pool.take(files[0])
        assert pool.held_bytes() == 0
    finally:
        pool.stop()


def test_file_received_while_another_ingest_is_in_flight_is_left_to_the_create() -> None:
    now = [0.0]
    pool = Ahead(concurrent=1.0, clock=lambda: now[0])
    try:
        other, mine = make_instance(seed=10), make_instance(seed=11)
        on_other_thread(lambda: pool.offer(other))  # that thread's create has not come yet
        settle(pool)
        now[0] = 0.5
        pool.offer(mine)
        assert pool.held_bytes() == len(other) and pool.take(mine) is None
        now[0] = 2.0  # the other offer is old now: its create never came (a refused file)
        pool.offer(mine)
        settle(pool)
        assert pool.take(mine) is not None
    finally:
        pool.stop()


def test_failed_preparation_is_not_taken(caplog: pytest.LogCaptureFixture) -> None:
    called = threading.Event()

    def broken(_data: bytes) -> FileFacts:
        called.set()
        raise RuntimeError("preparation failed")

    pool = Ahead(prepare=broken)
    try:
        data = make_instance(seed=8)
        pool.offer(data)
        assert called.wait(10)
        settle(pool)
        assert pool.take(data) is None
        assert "preparing a received file failed" in caplog.text
    finally:
        pool.stop()


def test_bytes_that_are_not_dicom_are_prepared_without_identity(ahead: Ahead) -> None:
    data = b"not a DICOM file" * 100
    ahead.offer(data)
    settle(ahead)
    facts = ahead.take(data)
    assert facts == FileFacts(hashlib.sha256(data).hexdigest(), NO_IDENTITY, None)


def test_large_and_mutable_files_are_not_offered() -> None:
    pool = Ahead(max_file_bytes=1000)
    try:
        pool.offer(b"x" * 1001)
        pool.offer(bytearray(b"y" * 10))  # could change after the offer
        assert pool.held_bytes() == 0
    finally:
        pool.stop()


def test_budget_drops_stale_offers_first_and_refuses_beyond_it() -> None:
    now = [0.0]
    pool = Ahead(budget_bytes=2500, max_age=30.0, concurrent=0.0, clock=lambda: now[0])
    try:
        first, second, third = b"a" * 1000, b"b" * 1000, b"c" * 1000
        on_other_thread(lambda: pool.offer(first))
        settle(pool)
        now[0] = 20.0
        on_other_thread(lambda: pool.offer(second))
        settle(pool)
        pool.offer(third)  # over the budget, nothing stale yet: not held
        assert pool.held_bytes() == 2000 and pool.take(third) is None
        now[0] = 40.0  # the first is stale now, the second not
        pool.offer(third)
        assert pool.held_bytes() == 2000
        settle(pool)
        assert pool.take(third) is not None
    finally:
        pool.stop()


def test_stopped_pool_holds_nothing_and_takes_no_offer() -> None:
    pool = Ahead()
    data = make_instance(seed=9)
    pool.offer(data)
    pool.stop()
    assert pool.held_bytes() == 0
    pool.offer(data)
    assert pool.held_bytes() == 0 and pool.take(data) is None
