"""Prometheus metrics pushed to Orthanc's ``/tools/metrics-prometheus`` (prefix ``hardening_``).

``orthanc.SetMetricsValue`` must not be called from inside an Orthanc operation that holds the
plugin context: Orthanc up to 1.12.1 locks it exclusively while a plugin reads an instance
(``GetDicomForInstance``, the DICOMweb plugin's rendering), and ``SetMetricsValue`` locks it
again, so a push from the storage read of that instance deadlocks the thread, with Python's
lock held, and every other callback after it (the DICOMweb ``/rendered`` hang). So a push is
deferred while the thread runs a storage callback (``no_orthanc_calls``) and, on Orthanc
before 1.12.2, always (``defer_pushes``); deferred values are pushed at the next push from a
safe place and when Prometheus scrapes (``flush``, from the HTTP filter), so a scrape always
reads current values.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

PREFIX = "hardening_"


class _QuietBlock:
    """``Metrics.no_orthanc_calls``: one object for every storage callback (no generator per call)."""

    __slots__ = ("_local",)

    def __init__(self, local: threading.local) -> None:
        self._local = local

    def __enter__(self) -> None:
        self._local.depth = getattr(self._local, "depth", 0) + 1

    def __exit__(self, *_exc: object) -> None:
        self._local.depth -= 1


class Metrics:
    """Counters and gauges, forwarded to ``orthanc.SetMetricsValue`` on every change.

    Orthanc refuses ``SetMetricsValue`` while plugins initialise (it logs an error), so values
    set before ``start()`` (called when Orthanc reports it has started) are kept and pushed then.
    """

    def __init__(self, orthanc: Any) -> None:
        self._orthanc = orthanc
        self._lock = threading.Lock()
        self._values: dict[str, float] = {}
        self._started = False
        self._deferred = False
        self._dirty: dict[str, float] = {}
        self._quiet = threading.local()
        self._quiet_block = _QuietBlock(self._quiet)

    def defer_pushes(self) -> None:
        """Push only from ``flush`` (Orthanc before 1.12.2: see the module docstring)."""
        self._deferred = True

    def no_orthanc_calls(self) -> contextlib.AbstractContextManager[None]:
        """Within this block, this thread's updates are kept for a later push."""
        return self._quiet_block

    def _is_quiet(self) -> bool:
        return int(getattr(self._quiet, "depth", 0)) > 0

    def flush(self) -> None:
        """Push every deferred value (from a thread that holds no Orthanc lock)."""
        if self._is_quiet():
            return
        with self._lock:
            pending, self._dirty = self._dirty, {}
            if not self._started or self._orthanc is None:
                return
            for name, value in pending.items():
                self._orthanc.SetMetricsValue(PREFIX + name, value, self._orthanc.MetricsType.DEFAULT)

    def start(self) -> None:
        """Orthanc has started: push every value set so far, then push on each change."""
        with self._lock:
            self._started = True
            self._dirty = {}
            if self._orthanc is None:
                return
            for name, value in self._values.items():
                self._orthanc.SetMetricsValue(PREFIX + name, value, self._orthanc.MetricsType.DEFAULT)

    def increment(self, name: str, by: float = 1.0) -> None:
        """Add ``by`` to the counter ``hardening_<name>``."""
        with self._lock:
            value = self._values.get(name, 0.0) + by
            self._values[name] = value
            self._push(name, value)

    def set(self, name: str, value: float) -> None:
        """Set the gauge ``hardening_<name>``."""
        with self._lock:
            self._values[name] = float(value)
            self._push(name, float(value))

    def value(self, name: str) -> float:
        """Return the current value (0 when never set)."""
        with self._lock:
            return self._values.get(name, 0.0)

    def _push(self, name: str, value: float) -> None:
        # Called with the lock held, so that pushes reach Orthanc in the order of the updates
        # (a stale value pushed late would otherwise overwrite a newer one).
        if self._orthanc is None or not self._started:
            return
        if self._deferred or self._is_quiet():
            self._dirty.pop(name, None)
            self._dirty[name] = value  # kept in update order
            return
        kind = self._orthanc.MetricsType.DEFAULT
        for pending, pending_value in self._dirty.items():
            self._orthanc.SetMetricsValue(PREFIX + pending, pending_value, kind)
        self._dirty = {}
        self._orthanc.SetMetricsValue(PREFIX + name, value, kind)
