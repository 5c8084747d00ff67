"""Waiting, from a plugin callback, for a job the plugin started asynchronously.

A callback cannot hand Orthanc a *synchronous* job: the job thread reads storage through the
plugin's storage area, which needs Python's lock, held by the callback waiting in the
``orthanc.RestApiPost`` (Python plugin 4.0 never releases it during an ``orthanc.*`` call). So
the plugin starts the job asynchronously and polls ``/jobs/{id}``, sleeping between polls:
``time.sleep`` releases Python's lock, an ``orthanc.*`` call does not. The sleeps start short
and double up to ``JOB_POLL_SECONDS`` (``poll_delays``): a job of one instance (a viewer's
C-MOVE of one image) is answered within a millisecond or two of its end instead of a whole poll
period later, and a long job is still polled 50 times a second at most.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

from orthanc_hardening.shell.runtime import Runtime

JOB_POLL_SECONDS = 0.02
FIRST_POLL_SECONDS = 0.001
ENDED = ("Success", "Failure")


def poll_delays(first: float = FIRST_POLL_SECONDS, longest: float = JOB_POLL_SECONDS) -> Iterator[float]:
    """The sleeps before each poll: ``first``, doubled each time, then ``longest`` for ever."""
    delay = min(first, longest)
    while True:
        yield delay
        delay = min(delay * 2, longest)


def wait_for_job(runtime: Runtime, job_id: str, timeout: float | None = None) -> dict[str, Any]:
    """Wait until the job ``job_id`` succeeds or fails (or ``timeout`` seconds pass); its state.

    Returns:
        Orthanc's ``GET /jobs/{id}`` of the job when it ended, or the last one read at the
        timeout (its ``State`` then neither ``Success`` nor ``Failure``).
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    for delay in poll_delays():
        # time.sleep releases Python's lock: the job thread needs it to run the storage area.
        time.sleep(delay)
        state: dict[str, Any] = json.loads(runtime.orthanc.RestApiGet(f"/jobs/{job_id}"))
        if state.get("State") in ENDED or (deadline is not None and time.monotonic() > deadline):
            return state
    raise AssertionError("poll_delays never ends")  # pragma: no cover
