"""The single audit writer: group commit from one thread, checkpoints, recovery.

``AuditWriter.record(event)`` queues the event and blocks until the writer thread has committed
the batch holding it (one transaction, one fsync for every request waiting at that moment), so
an event is durable before the caller answers the request it records. ``submit(events)`` queues
without blocking and returns a ``Pending`` whose ``wait()`` is that same block: a caller starts
the append, does the work the event records (write and flush a file) and waits for both, so the
commit overlaps the work instead of adding to it. The writer thread alone
extends the hash chain, so rows are linked in commit order.

Checkpoints (``audit/chain.py``) are signed every ``checkpoint_every`` events or
``checkpoint_seconds`` (whichever comes first), at the first commit after opening and at ``flush``, with the signer the
caller provides (the key ring's current key).

When the store cannot write (disk full, read-only file, lock held), the batch is rolled back and
every caller in it gets ``StoreUnavailableError``: enforce mode refuses the request, monitor mode
logs. Rows already committed are never touched. With ``keep_failed`` (monitor mode) the failed
events are kept (up to ``backlog_limit``) and written first once the store works again; each
batch tries the store again, so writing resumes by itself. This module starts a thread; the
clock and the signer are injected.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from orthanc_hardening.audit.chain import Checkpoint, StoredEvent, link, make_checkpoint
from orthanc_hardening.audit.event import AuditEvent
from orthanc_hardening.errors import StoreUnavailableError
from orthanc_hardening.seal.keys import SigningKey
from orthanc_hardening.stores.audit_store import AuditStore

logger = logging.getLogger(__name__)

GATHER_SECONDS = 0.0004
RECORD_TIMEOUT_SECONDS = 30.0
OUTAGE_LOG_SECONDS = 60.0  # while the store stays unavailable, one reminder a minute


@dataclass(eq=False)
class _Batch:
    """The callers whose events go into one commit: they share its fate.

    Each caller waits on a lock of its own (taken when it joins, released by the writer once the
    batch is decided), so waking a batch is one release per caller and no woken caller has to
    take a lock the others share (a ``threading.Event`` makes each woken waiter re-acquire its
    condition's lock in turn, a hand-over per caller on the writer's cycle).
    """

    waiters: list[threading.Lock] = field(default_factory=list)
    error: BaseException | None = None
    finished: bool = False

    def join(self) -> threading.Lock:
        """A lock that is released when the batch is decided (called under the writer's lock)."""
        waiter = threading.Lock()
        waiter.acquire()
        self.waiters.append(waiter)
        return waiter

    def finish(self) -> None:
        """Release every caller (once ``error`` is set, if the batch failed)."""
        self.finished = True
        for waiter in self.waiters:
            waiter.release()


@dataclass(frozen=True, eq=False)
class Pending:
    """An append started by ``AuditWriter.submit``; ``wait`` returns once it is durable.

    Raises (``wait``):
        StoreUnavailableError: the batch holding the events was not committed.
    """

    batch: _Batch | None
    waiter: threading.Lock | None = None
    message: str = "audit event not recorded"

    def wait(self) -> None:
        if self.batch is not None and self.waiter is not None:
            AuditWriter._wait(self.batch, self.waiter, self.message)


DONE = Pending(None)


class AuditWriter:
    """Group-committing writer over an ``AuditStore``; satisfies ``AuditSink``."""

    def __init__(
        self,
        store: AuditStore,
        signer: Callable[[], SigningKey],
        clock: Callable[[], datetime],
        checkpoint_every: int = 1000,
        checkpoint_seconds: float = 60.0,
        keep_failed: bool = False,
        backlog_limit: int = 100_000,
        on_commit: Callable[[list[StoredEvent]], None] | None = None,
        on_checkpoint: Callable[[Checkpoint], None] | None = None,
    ) -> None:
        """Open the writer on ``store`` and start its thread.

        ``on_commit`` observes each committed batch (rows with their ``seq`` and ``hash``) on
        the writer's thread, after the callers were released; its errors are logged, never
        raised: the events are durable whatever it does. ``on_checkpoint`` likewise observes
        each committed checkpoint (the witnesses, ``services/audit_witness.py``).

        Raises:
            StoreUnavailableError: the store's head cannot be read.
        """
        self.store = store
        self._signer = signer
        self._clock = clock
        self._every = checkpoint_every
        self._seconds = checkpoint_seconds
        self._keep_failed = keep_failed
        self._backlog_limit = backlog_limit
        self._on_commit = on_commit
        self._on_checkpoint = on_checkpoint
        self._head = store.head()
        last = store.last_checkpoint()
        self._signed_seq = last.seq if last else 0
        self._signed_at = time.monotonic()
        # The first commit after opening signs the head, so that a chain left unsigned by a crash
        # (kill -9 between checkpoints) gets its checkpoint as soon as the writer runs again.
        self._sign_next = True
        self._queue: list[AuditEvent] = []
        self._open = _Batch()
        self._flush_wanted = False
        self._backlog: list[AuditEvent] = []
        self._cond = threading.Condition()
        self._stopping = False
        self._last_batch = 1
        self.failures = 0
        self.batches = 0
        self.is_healthy = True
        self._outage_logged_at = 0.0
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

    # -- callers -------------------------------------------------------------------------

    def record(self, event: AuditEvent) -> None:
        """Append ``event`` durably; return once its batch is committed.

        Raises:
            StoreUnavailableError: the store could not commit the batch (or the writer stopped).
        """
        self.record_many([event])

    def record_many(self, events: list[AuditEvent]) -> None:
        """Append several events durably, in one commit; return once they are committed.

        Raises:
            StoreUnavailableError: they could not be committed (none of them was).
        """
        self.submit(events).wait()

    def submit(self, events: list[AuditEvent]) -> Pending:
        """Queue events for the next commit without waiting; ``wait()`` on the result blocks until durable.

        Raises:
            StoreUnavailableError: the writer is stopped.
        """
        if not events:
            return DONE
        with self._cond:
            if self._stopping:
                raise StoreUnavailableError("the audit writer is stopped")
            was_empty = not self._queue
            self._queue.extend(events)
            batch = self._open
            waiter = batch.join()
            # Only the writer thread waits on this condition: wake it when it may be idle (the queue
            # was empty) or when the batch it gathers is complete, not at every event in between.
            if was_empty or len(self._queue) >= self._last_batch:
                self._cond.notify()
        return Pending(batch, waiter)

    def flush(self) -> None:
        """Write a checkpoint over everything committed so far (blocks until done).

        Raises:
            StoreUnavailableError: the checkpoint could not be written.
        """
        with self._cond:
            if self._stopping:
                return
            self._flush_wanted = True
            batch = self._open
            waiter = batch.join()
            self._cond.notify()
        self._wait(batch, waiter, "audit checkpoint not written")

    @staticmethod
    def _wait(batch: _Batch, waiter: threading.Lock, message: str) -> None:
        if not waiter.acquire(timeout=RECORD_TIMEOUT_SECONDS):
            raise StoreUnavailableError("the audit store did not commit within the time limit")
        waiter.release()  # a second wait() returns at once
        if batch.error is not None:
            raise StoreUnavailableError(f"{message}: {batch.error}") from batch.error

    def close(self) -> None:
        """Flush, stop the thread and close the store (later ``record`` calls raise)."""
        try:
            self.flush()
        except StoreUnavailableError:
            logger.error("final audit checkpoint could not be written")
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(RECORD_TIMEOUT_SECONDS)
        self.store.close()

    @property
    def head(self) -> tuple[int, str] | None:
        """``(seq, hash)`` of the newest committed row."""
        return self._head

    @property
    def backlog(self) -> int:
        """Events kept in memory after a failed write (monitor mode)."""
        return len(self._backlog)

    # -- the writer thread ---------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._queue and not self._flush_wanted and not self._stopping:
                    self._cond.wait(timeout=self._wait_seconds())
                if self._stopping and not self._queue and not self._flush_wanted:
                    return
                self._gather()
                events, self._queue = self._queue, []
                batch, self._open = self._open, _Batch()
                flush, self._flush_wanted = self._flush_wanted, False
            self._last_batch = max(1, len(events))
            committed: list[StoredEvent] = []
            signed: list[Checkpoint] = []
            try:
                batch.error = self._commit(events, flush, committed, signed)
            except Exception as exc:
                logger.exception("audit writer failed unexpectedly")
                batch.error = StoreUnavailableError(f"audit writer failure: {type(exc).__name__}")
            # The witnesses get the checkpoint before the callers are released, so that a
            # flush() returns once the witnesses hold it (one fsync per checkpoint, not per event).
            if signed and self._on_checkpoint is not None:
                try:
                    self._on_checkpoint(signed[-1])
                except Exception:
                    logger.exception("audit checkpoint observer failed (the checkpoint is stored)")
            batch.finish()
            if committed and self._on_commit is not None:
                try:
                    self._on_commit(committed)
                except Exception:
                    logger.exception("audit commit observer failed (the events are stored)")

    def _gather(self) -> None:
        # Group commit: the callers released by the previous commit are re-entering record()
        # right now; wait a fraction of an fsync for as many as were in the last batch, so that
        # they share this commit instead of each paying for one. Called with the lock held.
        if not self._queue or len(self._queue) >= self._last_batch:
            return
        deadline = time.monotonic() + GATHER_SECONDS
        while len(self._queue) < self._last_batch and not self._stopping:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._cond.wait(remaining)

    def _wait_seconds(self) -> float:
        if self._backlog or not self.is_healthy:
            return 1.0  # the store failed: retry once a second, not at the checkpoint's pace
        if self._head is not None and self._head[0] > self._signed_seq:
            return max(0.05, self._seconds - (time.monotonic() - self._signed_at))
        return self._seconds

    def _commit(self, events: list[AuditEvent], flush: bool, committed: list[StoredEvent],
                signed: list[Checkpoint]) -> StoreUnavailableError | None:
        """Commit the backlog and ``events`` (and a checkpoint when due); return the error, if any.

        The committed rows are appended to ``committed``.
        """
        retried = list(self._backlog)
        pending = (*retried, *events)

        def build(head: tuple[int, str] | None) -> tuple[list[StoredEvent], Checkpoint | None]:
            # Called inside the store's serialised transaction with the head read there: another
            # node may have appended since this writer last looked, so the rows link to *that* head.
            rows: list[StoredEvent] = []
            previous: StoredEvent | None = None
            for event in pending:
                previous = link(previous, event, head if previous is None else None)
                rows.append(previous)
            new_head = (rows[-1].seq, rows[-1].hash) if rows else head
            checkpoint = None
            if new_head is not None and new_head[0] > self._signed_seq and (
                flush
                or self._sign_next
                or new_head[0] - self._signed_seq >= self._every
                or time.monotonic() - self._signed_at >= self._seconds
            ):
                checkpoint = make_checkpoint(new_head, self._signer(), self._clock())
            return rows, checkpoint

        if not pending and not (self._head is not None and self._head[0] > self._signed_seq):
            return None
        try:
            rows, checkpoint, linked_to = self.store.append_linked(build)
        except StoreUnavailableError as exc:
            self._failed(exc, events)
            return exc
        if not rows and checkpoint is None:
            return None
        head = (rows[-1].seq, rows[-1].hash) if rows else linked_to
        if retried:
            logger.warning("audit store writable again: %d kept events written", len(retried))
            self._backlog.clear()
        self._head = head
        committed.extend(rows)
        self.batches += 1
        self.is_healthy = True
        if checkpoint is not None:
            signed.append(checkpoint)
            self._signed_seq = checkpoint.seq
            self._signed_at = time.monotonic()
            self._sign_next = False
        return None

    def _failed(self, exc: StoreUnavailableError, events: list[AuditEvent]) -> None:
        self.failures += 1
        first = self.is_healthy
        self.is_healthy = False
        # Refused events are always logged; a retry of a pending checkpoint alone (no event) is
        # logged when the outage begins and then at most once a minute, not at every retry.
        now = time.monotonic()
        if events or first or now - self._outage_logged_at >= OUTAGE_LOG_SECONDS:
            self._outage_logged_at = now
            logger.error("audit store cannot write (%d events refused): %s", len(events), exc)
        if self._keep_failed:
            room = max(0, self._backlog_limit - len(self._backlog))
            self._backlog.extend(events[:room])
