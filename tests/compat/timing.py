"""Times of the differential suite's requests on each server, for bench/RESULTS.md.

Every compared request is timed on the plain, monitor-mode and enforce-mode servers in turn
(same data, same request, one after the other); at the end of the session the totals per kind of
request and their ratios to plain Orthanc are printed and written to
``build/compat-timings-<target>.json``. They are measurements, never asserted.
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

SERVERS = ("plain", "monitor", "enforce")
_TOTALS: dict[str, dict[str, float]] = defaultdict(lambda: dict.fromkeys(SERVERS, 0.0))
_COUNTS: dict[str, int] = defaultdict(int)


def timed(kind: str, server: str, call: Callable[[], T]) -> T:
    """Run ``call`` and add its wall time to ``kind`` for ``server`` (one of ``SERVERS``)."""
    start = time.perf_counter()
    try:
        return call()
    finally:
        _TOTALS[kind][server] += time.perf_counter() - start
        if server == "plain":
            _COUNTS[kind] += 1


def report() -> list[str]:
    """The summary lines, and the JSON file written (nothing when nothing was timed)."""
    if not _TOTALS:
        return []
    rows = {kind: {**totals, "requests": _COUNTS[kind]} for kind, totals in sorted(_TOTALS.items())}
    target = os.environ.get("HARDENING_TARGET", "host")
    out = Path(__file__).resolve().parents[2] / "build" / f"compat-timings-{target}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2, sort_keys=True) + "\n")
    lines = [f"differential suite timings ({target}; wall seconds, ratio to plain) -> {out}"]
    for kind, row in rows.items():
        plain = row["plain"] or 1e-9
        lines.append(f"  {kind:<22} {row['requests']:>4} requests  plain {row['plain']:7.3f}  "
                     f"monitor {row['monitor']:7.3f} ({row['monitor'] / plain:5.2f})  "
                     f"enforce {row['enforce']:7.3f} ({row['enforce'] / plain:5.2f})")
    return lines
