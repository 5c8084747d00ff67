"""Prometheus metrics pushed to Orthanc's ``/tools/metrics-prometheus`` (prefix ``hardening_``)."""

from __future__ import annotations

import threading
from typing import Any

PREFIX = "hardening_"


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

    def start(self) -> None:
        """Orthanc has started: push every value set so far, then push on each change."""
        with self._lock:
            self._started = True
            for name, value in self._values.items():
                self._push(name, value)

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
        kind = self._orthanc.MetricsType.DEFAULT
        self._orthanc.SetMetricsValue(PREFIX + name, value, kind)
