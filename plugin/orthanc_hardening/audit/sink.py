"""The port through which every part of the plugin records audit events.

``AuditSink.record`` returns only once the event is durable; it raises
``StoreUnavailableError`` when it cannot be. The plugin's sink is the group-commit writer
(``services/audit_writer.py``); unit tests use an in-memory fake.
"""

from __future__ import annotations

from typing import Protocol

from orthanc_hardening.audit.event import AuditEvent


class Waiter(Protocol):
    """An append already started; ``wait`` returns once it is durable."""

    def wait(self) -> None:
        """Block until the events are durable.

        Raises:
            StoreUnavailableError: they could not be made durable.
        """


class AuditSink(Protocol):
    """Where audit events go."""

    def record(self, event: AuditEvent) -> None:
        """Append ``event`` durably.

        Raises:
            StoreUnavailableError: the event could not be made durable.
        """

    def record_many(self, events: list[AuditEvent]) -> None:
        """Append several events durably, all or none.

        Raises:
            StoreUnavailableError: they could not be made durable.
        """

    def submit(self, events: list[AuditEvent]) -> Waiter:
        """Start appending ``events`` (all or none) and return at once; ``wait()`` blocks until durable.

        Raises:
            StoreUnavailableError: the append cannot even start (sink stopped).
        """
