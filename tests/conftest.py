"""Pytest set-up shared by every test: the plugin package on ``sys.path``, and a time budget.

The budget bounds one target's whole run (``HARDENING_SUITE_BUDGET`` seconds, default 1200;
``0`` turns it off): a suite that hangs on a broken Orthanc stops at the first test that ends
past it, and the run fails naming the budget, instead of timing every remaining test out in
turn and eating the time of the other targets.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PLUGIN = REPO / "plugin"
if str(PLUGIN) not in sys.path:
    sys.path.insert(0, str(PLUGIN))

_STARTED = time.monotonic()


def suite_budget() -> float:
    """Seconds the whole run may take (0 = no budget)."""
    raw = os.environ.get("HARDENING_SUITE_BUDGET", "1200")
    try:
        return max(0.0, float(raw))
    except ValueError:
        raise pytest.UsageError(f"HARDENING_SUITE_BUDGET must be a number of seconds, not {raw!r}") from None


_BUDGET: list[float] = []


def pytest_configure(config: pytest.Config) -> None:
    _BUDGET[:] = [suite_budget()]  # read once; a bad value stops the run before any test


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    budget = _BUDGET[0] if _BUDGET else 0.0
    spent = time.monotonic() - _STARTED
    if budget and nextitem is not None and spent > budget:
        item.session.shouldfail = (
            f"the suite ran past its budget of {budget:.0f} s (HARDENING_SUITE_BUDGET) after {spent:.0f} s"
        )
