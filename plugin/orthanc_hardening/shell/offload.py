"""Orthanc calls that must not run on the HTTP thread of the request that needs them.

Orthanc 1.13.0 segfaults when a plugin's REST callback calls
``orthanc.RestApiPost('/studies/{id}/archive', …)``: the ZIP writer runs out of the ≈ 104 KiB
stack of civetweb's worker thread (measured; the same call from a Python thread, whose stack is
the process default, answers 200, and plain Orthanc archives fine). ``Offloader`` runs such
calls on a small pool of the plugin's own threads; the HTTP thread waits for the result with
Python's lock released, so the job threads the call needs keep running.

The pool is stopped and joined with the plugin's other threads when Orthanc stops.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Offloader:
    """A pool of plugin threads that run Orthanc calls for REST callbacks."""

    def __init__(self, workers: int = 4) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hardening-offload")

    def run(self, function: Callable[[], T]) -> T:
        """Run ``function`` on a pool thread and return its result (or raise its exception)."""
        return self._pool.submit(function).result()

    def stop(self) -> None:
        """Finish the calls in progress, then stop the threads."""
        self._pool.shutdown(wait=True, cancel_futures=True)
