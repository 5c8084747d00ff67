"""The port through which every part of the plugin records audit events.

``AuditSink.record`` returns only once the event is durable; it raises
``StoreUnavailableError`` when it cannot be. ``MemoryAuditSink`` serves unit tests.
"""

from __future__ import annotations

import threading
from typing import Protocol

from orthanc_hardening.audit.event import AuditEvent


class AuditSink(Protocol):
    """Where audit events go."""

    def record(self, event: AuditEvent) -> None:
        """Append ``event`` durably.

        Raises:
            StoreUnavailableError: the event could not be made durable.
        """


class MemoryAuditSink:
    """An in-memory sink for tests and for the time before the real store is open."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.events: list[AuditEvent] = []

    def record(self, event: AuditEvent) -> None:
        with self._lock:
            self.events.append(event)

    def last(self) -> AuditEvent:
        """Return the newest event.

        Raises:
            IndexError: nothing was recorded.
        """
        return self.events[-1]
