"""Which HTTP request a storage read serves, on every Orthanc version.

Orthanc 1.10 and 1.12 read the storage area on the HTTP thread of the request, so the request
the HTTP filter saw on the same native thread is the one served. Orthanc 1.13 reads on its
storage-loader threads (``StorageLoaderThreadsCount``) while the HTTP thread waits, so a read
no longer shares a thread with its request. There a read is matched to the request in flight
whose **scope** (the series the audit gate resolved from its URI) holds the series of the
instance read, else to the newest request in flight whose scope could not be resolved (WebDAV,
a route the gate does not know), else to none (a C-GET, or an Orthanc job).

A request stays in flight until its HTTP thread starts the next one or its window ends
(``SCOPED_SECONDS`` / ``UNSCOPED_SECONDS``): Orthanc has no "request finished" callback. The
match is by series, not by instance: two clients reading the same series at the same moment
may be attributed to each other (both did ask for that series).

``threading.local`` does not survive between Orthanc callbacks (a fresh Python thread state
each time), hence the registry keyed by the native thread id.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from orthanc_hardening.identity import HttpRequest

SCOPED_SECONDS = 120.0
UNSCOPED_SECONDS = 15.0


@dataclass
class _InFlight:
    request: HttpRequest
    started: float
    # The series the request reads; None: it may read but the gate could not tell which.
    series: frozenset[str] | None = frozenset()


@dataclass
class InFlightRequests:
    """HTTP requests by native thread, and the match of a read to its request."""

    clock: Callable[[], float] = time.monotonic
    _by_thread: dict[int, _InFlight] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def begin(self, thread: int, request: HttpRequest) -> None:
        """``request`` is now what ``thread`` serves (its previous request has ended)."""
        with self._lock:
            self._by_thread[thread] = _InFlight(request, self.clock())

    def set_scope(self, thread: int, request: HttpRequest, series: Iterable[str] | None) -> None:
        """The series ``request`` (served on ``thread``) reads, as the audit gate resolved them.

        A request starts with an empty scope (it reads no stored bytes); ``None`` means it may
        read bytes of series the gate could not resolve (WebDAV).
        """
        with self._lock:
            entry = self._by_thread.get(thread)
            if entry is not None and entry.request is request:
                entry.series = None if series is None else frozenset(s for s in series if s)

    def on_thread(self, thread: int) -> HttpRequest | None:
        """The request the HTTP filter last saw on ``thread``."""
        with self._lock:
            entry = self._by_thread.get(thread)
            return entry.request if entry is not None else None

    def for_read(self, thread: int, series_uid: str) -> tuple[int, HttpRequest] | None:
        """``(HTTP thread, request)`` a read of an instance of ``series_uid`` on ``thread`` serves."""
        now = self.clock()
        with self._lock:
            entry = self._by_thread.get(thread)
            if entry is not None:
                return thread, entry.request
            scoped: tuple[int, _InFlight] | None = None
            unscoped: tuple[int, _InFlight] | None = None
            for other, candidate in self._by_thread.items():
                if candidate.series is None:
                    if now - candidate.started <= UNSCOPED_SECONDS and (
                            unscoped is None or candidate.started > unscoped[1].started):
                        unscoped = (other, candidate)
                elif series_uid in candidate.series and now - candidate.started <= SCOPED_SECONDS and (
                        scoped is None or candidate.started > scoped[1].started):
                    scoped = (other, candidate)
            chosen = scoped or unscoped
            return (chosen[0], chosen[1].request) if chosen is not None else None
