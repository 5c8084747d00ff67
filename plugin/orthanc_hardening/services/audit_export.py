"""Durable export of the audit trail to a collector (IHE ATNA over syslog), at least once, in order.

The audit store is the spool. ``AuditExporter`` keeps a named, durable cursor in the store: it
reads the rows after the cursor (``read_after``), sends them in ascending ``seq`` order, and
advances the cursor only after the transport reports the batch delivered. A failed send leaves
the cursor where it was; the batch is sent again after a reconnect with exponential backoff, so
an event is never lost and is duplicated only around a failure (at least once). The backlog
(newest ``seq`` minus cursor) is reported as ``hardening_audit_export_backlog``.

The exporter owns one background thread (``start``/``stop``). Its collaborators are injected:
the store, the transport, the formatter and a ``report`` callback for metrics, so tests drive
it with fakes and ``step()`` without threads.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Protocol

from orthanc_hardening.audit.chain import Checkpoint, StoredEvent
from orthanc_hardening.errors import StoreUnavailableError

logger = logging.getLogger(__name__)

CURSOR_NAME = "syslog"


class ExportStore(Protocol):
    """What the exporter needs from the audit store."""

    def head(self) -> tuple[int, str] | None:
        """``(seq, hash)`` of the newest row."""

    def read_after(self, seq: int, limit: int) -> list[StoredEvent]:
        """Rows after ``seq``, ascending."""

    def get_cursor(self, name: str) -> int:
        """The durable position of a named exporter."""

    def set_cursor(self, name: str, seq: int) -> None:
        """Durably set the position of a named exporter."""


class ExportTransport(Protocol):
    """Delivers frames to the collector."""

    def send(self, frames: list[bytes]) -> None:
        """Deliver every frame in order, or raise ``OSError``."""

    def close(self) -> None:
        """Drop the connection."""


Report = Callable[[str, float], None]


class AuditExporter:
    """Sends every audit row after the durable cursor, in order, at least once."""

    def __init__(self, store: ExportStore, transport: ExportTransport, formatter: Callable[[StoredEvent], bytes],
                 report: Report | None = None, cursor_name: str = CURSOR_NAME, batch: int = 200,
                 poll_seconds: float = 0.5, backoff_seconds: tuple[float, float] = (0.5, 30.0),
                 checkpoint_formatter: Callable[[Checkpoint, Checkpoint | None], bytes] | None = None,
                 last_checkpoint: Callable[[], Checkpoint | None] | None = None) -> None:
        """Prepare the exporter (no thread yet).

        Args:
            store: the audit store (spool and cursor).
            transport: the collector connection.
            formatter: one row -> one framed message.
            report: ``report(metric, value)`` for ``audit_export_backlog`` (gauge) and
                ``audit_exported_total`` (gauge of the running count).
            cursor_name: the cursor's name in the store.
            batch: rows per send.
            poll_seconds: idle wait between looks at the store.
            backoff_seconds: first and longest wait after a failure (doubling in between).
            checkpoint_formatter: ``(checkpoint, previous sent) -> framed message``: with
                ``last_checkpoint`` (the store's), each delivered batch that reaches the newest
                signed checkpoint carries it too, after its rows, so that the collector is a
                witness of the log's signed heads (``audit/witness.py``).
            last_checkpoint: the store's newest checkpoint.
        """
        if batch < 1:
            raise ValueError("batch must be at least 1")
        self._store = store
        self._transport = transport
        self._formatter = formatter
        self._report = report or (lambda _name, _value: None)
        self._cursor_name = cursor_name
        self._batch = batch
        self._poll = poll_seconds
        self._backoff = backoff_seconds
        self._checkpoint_formatter = checkpoint_formatter
        self._last_checkpoint = last_checkpoint
        self._sent_checkpoint: Checkpoint | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.exported = 0
        self.failures = 0
        self.last_error = ""

    @property
    def cursor(self) -> int:
        """The durable position: every row up to it was delivered."""
        return self._store.get_cursor(self._cursor_name)

    def backlog(self) -> int:
        """Rows stored but not yet delivered."""
        head = self._store.head()
        return max((head[0] if head else 0) - self.cursor, 0)

    def step(self) -> int:
        """Send the next batch after the cursor; advance the cursor once it is delivered.

        Returns:
            The number of rows delivered (0 when there was nothing to send).

        Raises:
            OSError: the transport failed; the cursor did not move.
            StoreUnavailableError: the store could not be read or the cursor not written.
        """
        start = self._store.get_cursor(self._cursor_name)
        rows = self._store.read_after(start, self._batch)
        if not rows:
            self._report("audit_export_backlog", 0)
            return 0
        frames = [self._formatter(row) for row in rows]
        checkpoint = self._checkpoint_for(start, rows[-1].seq)
        if checkpoint is not None and self._checkpoint_formatter is not None:
            frames.append(self._checkpoint_formatter(checkpoint, self._sent_checkpoint))
        self._transport.send(frames)
        if checkpoint is not None:
            self._sent_checkpoint = checkpoint
        # Only now is the batch delivered: the cursor moves past it, durably.
        self._store.set_cursor(self._cursor_name, rows[-1].seq)
        self.exported += len(rows)
        self._report("audit_exported_total", self.exported)
        self._report("audit_export_backlog", self.backlog())
        return len(rows)

    def _checkpoint_for(self, start: int, end: int) -> Checkpoint | None:
        if self._last_checkpoint is None:
            return None
        newest = self._last_checkpoint()
        if newest is None or not start < newest.seq <= end:
            return None
        return newest

    def run(self, wait: Callable[[float], bool] | None = None) -> None:
        """Loop until ``stop()``: send while there is a backlog, back off after failures.

        Args:
            wait: ``wait(seconds) -> stopped`` (defaults to the stop event's wait).
        """
        pause = wait or self._wait
        delay = self._backoff[0]
        while not self._stop.is_set():
            try:
                sent = self.step()
            except (OSError, StoreUnavailableError) as exc:
                self.failures += 1
                self.last_error = str(exc)[:300]
                self._transport.close()
                self._report_backlog()
                logger.warning("audit export failed (retry in %.1f s): %s", delay, self.last_error)
                if pause(delay):
                    return
                delay = min(delay * 2, self._backoff[1])
                continue
            except Exception:  # an observer never dies silently: log, wait, retry
                self.failures += 1
                logger.exception("audit export error")
                if pause(self._backoff[1]):
                    return
                continue
            delay = self._backoff[0]
            if sent < self._batch and pause(self._poll):
                return

    def _report_backlog(self) -> None:
        with contextlib.suppress(StoreUnavailableError):
            self._report("audit_export_backlog", self.backlog())

    def _wait(self, seconds: float) -> bool:
        self._wake.wait(seconds)
        self._wake.clear()
        return self._stop.is_set()

    def notify(self) -> None:
        """Wake the thread (new rows were written)."""
        self._wake.set()

    def start(self) -> None:
        """Start the background thread."""
        if self._thread is not None:
            raise RuntimeError("exporter already started")
        self._thread = threading.Thread(target=self.run, name="hardening-audit-export", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread (a batch in flight finishes or fails; the cursor stays consistent)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._transport.close()
