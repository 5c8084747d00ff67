"""A received file's hash and identity, worked out while Orthanc parses it.

On a REST upload (and a zip entry, STOW-RS, WebDAV, Lua, another plugin) Orthanc hands the
received file to the received-instance callback (``shell/ingest_limits.py``), then parses it,
computes its MD5 and builds its summary, and only then calls the storage area's create with
the bytes to store, on the same thread: 1.5 ms later for the benchmark's 512 KB CT file on
bookworm, 0.75–2 ms on forky (measured, bench/RESULTS.md). The create needs the file's SHA-256
and its identity (the parse of its index tags): about 1 ms of that thread's time on bookworm,
while the second core is idle when a single client waits. C-STORE is not offered: measured on
1.13, a C-STORE's offer was still queued when its create came (the worker had not had Python's
lock yet), so the create computed both itself and the hand-off only cost CPU.

``Ahead.offer`` (called by the received-instance callback once the file passed the ingest
limits) starts that work on a plugin thread; ``Ahead.take`` (called by the create of a DICOM
attachment on the same thread) returns it **only when the bytes to store are equal to the
bytes offered** — compared in full, never by length, name or time — and otherwise ``None``,
so the create computes both itself as before: a compressed or transcoded file, one a Lua script
or a plugin modified, a preparation the worker has not started yet (cancelled, never waited
for), a preparation that failed. The result is a pure function of those bytes (``prepare_file``), so
a seal made from it is the seal the create would have made.

Only while one ingest is in flight: a file is not offered while another thread holds an offer
younger than ``concurrent`` seconds (another ingest between its received callback and its
create) or while the worker is busy, and nothing is queued. Several clients keep both cores
busy, so there is no idle core to use; handing their files over would only add the hand-off's
CPU (measured: bench/RESULTS.md), and the create computes them as before.

Bounded: a file larger than ``max_file_bytes`` is not offered; the offered bytes held at once
(one offer per thread: a thread's next offer replaces one whose create never came, such as a
file Orthanc refused or already had) stay under ``budget_bytes``, older offers are dropped first.

The work moves to another thread, it does not shrink: the process's CPU per instance stays
about what it was (bench/RESULTS.md), only the wait of the thread that stores the file is shorter.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple

from orthanc_hardening.seal.identity import NO_IDENTITY, InstanceIdentity, identity_of_dataset, parse_dataset
from orthanc_hardening.seal.index_tags import IndexTags

logger = logging.getLogger(__name__)

MAX_FILE_BYTES = 64 << 20
BUDGET_BYTES = 256 << 20
MAX_AGE_SECONDS = 30.0
# An offer younger than this that another thread holds: an ingest in flight there.
CONCURRENT_SECONDS = 1.0


class FileFacts(NamedTuple):
    """What the create of a DICOM file derives from its bytes alone."""

    sha256: str  # hex SHA-256 of the bytes
    identity: InstanceIdentity  # ``NO_IDENTITY`` when the bytes are not readable DICOM
    tags: IndexTags | None  # the index tags parsed; ``None``: not readable DICOM


def read_identity(data: bytes) -> tuple[InstanceIdentity, IndexTags | None]:
    """The identity and index tags of DICOM bytes; ``(NO_IDENTITY, None)`` when pydicom cannot read them."""
    try:
        return identity_of_dataset(parse_dataset(data))
    except ValueError:
        return NO_IDENTITY, None


def prepare_file(data: bytes) -> FileFacts:
    """The SHA-256, identity and index tags of ``data`` (hashlib releases Python's lock while it hashes)."""
    return FileFacts(hashlib.sha256(data).hexdigest(), *read_identity(data))


@dataclass
class _Offer:
    data: bytes
    facts: Future[FileFacts]
    at: float


class Ahead:
    """Per-thread offers of received files, prepared on a small pool of plugin threads."""

    def __init__(self, prepare: Callable[[bytes], FileFacts] = prepare_file, workers: int = 1,
                 max_file_bytes: int = MAX_FILE_BYTES, budget_bytes: int = BUDGET_BYTES,
                 max_age: float = MAX_AGE_SECONDS, concurrent: float = CONCURRENT_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._prepare = prepare
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hardening-ahead")
        self._max_file = max_file_bytes
        self._budget = budget_bytes
        self._max_age = max_age
        self._concurrent = concurrent
        self._clock = clock
        # Re-entrant: cancelling a pending preparation (lock held) runs its done callback at once.
        self._lock = threading.RLock()
        self._offers: dict[int, _Offer] = {}
        self._held = 0
        self._workers = workers
        self._running = 0  # preparations submitted and not finished
        self._stopped = False
        self._pool.submit(lambda: None)  # start the worker now, not on the first upload

    def offer(self, data: bytes) -> None:
        """Start preparing ``data`` (immutable ``bytes``) for this thread's next create. Never raises."""
        if type(data) is not bytes or len(data) > self._max_file:
            return
        thread = threading.get_ident()
        with self._lock:
            self._drop(thread)
            if self._stopped:
                return
            now = self._clock()
            if any(now - other.at < self._concurrent for other in self._offers.values()):
                return  # another ingest is in flight: both cores have work, the create computes it
            if self._held + len(data) > self._budget:
                for stale in [t for t, o in self._offers.items() if now - o.at > self._max_age]:
                    self._drop(stale)
            if self._held + len(data) > self._budget or self._running >= self._workers:
                return  # every worker busy: no core to spare, the create computes it
            try:
                facts = self._pool.submit(self._prepare, data)
            except RuntimeError:  # the pool is shutting down
                return
            self._running += 1
            self._offers[thread] = _Offer(data, facts, now)
            self._held += len(data)
        facts.add_done_callback(self._finished)

    def _finished(self, _facts: Future[FileFacts]) -> None:
        with self._lock:
            self._running -= 1

    def take(self, data: bytes) -> FileFacts | None:
        """The facts of this thread's offer if it offered exactly ``data``; else ``None`` (compute them)."""
        with self._lock:
            offer = self._drop(threading.get_ident())
        if offer is None or offer.data != data:
            return None
        if offer.facts.cancel():  # not started yet (the worker has not had Python's lock): computing here is sooner
            return None
        try:
            return offer.facts.result()
        except Exception:  # not cancelled: ``cancel()`` above failed, so it runs or has finished
            logger.exception("preparing a received file failed; the create computes its hash and identity")
            return None

    def held_bytes(self) -> int:
        """The bytes of the offers held now."""
        with self._lock:
            return self._held

    def preparing(self) -> int:
        """The preparations submitted and not finished (a new file is not offered while it is ``workers``)."""
        with self._lock:
            return self._running

    def stop(self) -> None:
        """Drop every offer and stop the pool's threads (the preparations in progress finish)."""
        with self._lock:
            self._stopped = True
            for thread in list(self._offers):
                self._drop(thread)
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _drop(self, thread: int) -> _Offer | None:
        """Remove ``thread``'s offer (the lock held) and return it."""
        offer = self._offers.pop(thread, None)
        if offer is not None:
            self._held -= len(offer.data)
            offer.facts.cancel()
        return offer
