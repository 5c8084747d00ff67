"""Waiting, from a plugin callback, for a job the plugin started asynchronously.

A callback cannot hand Orthanc a *synchronous* job: the job thread reads storage through the
plugin's storage area, which needs Python's lock, held by the callback waiting in the
``orthanc.RestApiPost`` (Python plugin 4.0 never releases it during an ``orthanc.*`` call). So
the plugin starts the job asynchronously and polls ``/jobs/{id}``, sleeping between polls:
``time.sleep`` releases Python's lock, an ``orthanc.*`` call does not.
"""

from __future__ import annotations

import json
import time
from typing import Any

from orthanc_hardening.shell.runtime import Runtime

JOB_POLL_SECONDS = 0.02
ENDED = ("Success", "Failure")


def wait_for_job(runtime: Runtime, job_id: str, timeout: float | None = None) -> dict[str, Any]:
    """Wait until the job ``job_id`` succeeds or fails (or ``timeout`` seconds pass); its state.

    Returns:
        Orthanc's ``GET /jobs/{id}`` of the job when it ended, or the last one read at the
        timeout (its ``State`` then neither ``Success`` nor ``Failure``).
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        # time.sleep releases Python's lock: the job thread needs it to run the storage area.
        time.sleep(JOB_POLL_SECONDS)
        state: dict[str, Any] = json.loads(runtime.orthanc.RestApiGet(f"/jobs/{job_id}"))
        if state.get("State") in ENDED or (deadline is not None and time.monotonic() > deadline):
            return state
