"""The single registration of each Orthanc callback kind that several features share.

Orthanc's Python plugin keeps one callable per hook kind, so features never register the HTTP
filter, the C-STORE filter or the change callback themselves: they append to the runtime's
chains, which the callbacks here run through the one guard (``shell/guard.py``):

* HTTP filter: every gate in ``runtime.http_gates`` (a refusal is Orthanc's empty 403), then
  every observer in ``runtime.http_observers`` (metrics refreshers; never refuse).
* C-STORE filter: every gate in ``runtime.cstore_gates`` (a refusal is a DIMSE failure status).
* Change callback: every observer in ``runtime.change_observers``; ``ORTHANC_STARTED`` starts
  the metrics, ``ORTHANC_STOPPED`` stops the plugin's threads (``Runtime.stop``).
"""

from __future__ import annotations

import atexit
import logging
from typing import Any

from orthanc_hardening.shell.guard import decide, observe, refuse_http, refuse_store
from orthanc_hardening.shell.requester import cstore_requester, http_request, internal_requester
from orthanc_hardening.shell.runtime import Runtime

logger = logging.getLogger(__name__)

METRICS_ROUTE = "/tools/metrics-prometheus"


def install_callbacks(runtime: Runtime) -> None:
    """Register the HTTP filter, the C-STORE filter and the change callback."""
    orthanc = runtime.orthanc

    def http_filter(uri: str, **kwargs: Any) -> bool:
        seen: list[Any] = []

        def gates() -> bool:
            request = http_request(runtime, uri, kwargs)
            seen.append(request)
            runtime.remember_request(request)
            for gate in runtime.http_gates:
                gate(request)
            for watch in runtime.http_observers:
                observe(runtime, getattr(watch, "__name__", "http observer"), watch, request)
            if request.uri == METRICS_ROUTE:
                # A scrape: push what was deferred, before Orthanc answers (shell/metrics.py).
                observe(runtime, "metrics flush", runtime.metrics.flush)
            return True

        def requester() -> Any:
            return seen[0].requester if seen else internal_requester()

        return decide(runtime, f"HTTP {uri}", requester, gates, refuse_http)

    orthanc.RegisterIncomingHttpRequestFilter(http_filter)

    def cstore_filter(instance: Any) -> int:
        def gates() -> int:
            for gate in runtime.cstore_gates:
                gate(instance)
            return 0

        return decide(runtime, "C-STORE", lambda: cstore_requester(runtime, instance), gates, refuse_store)

    orthanc.RegisterIncomingCStoreInstanceFilter(cstore_filter)

    stopped = orthanc.ChangeType.ORTHANC_STOPPED
    started = orthanc.ChangeType.ORTHANC_STARTED

    def on_change(change_type: int, level: int, resource_id: str) -> None:
        if change_type == started:
            observe(runtime, "metrics", runtime.metrics.start)
        for watch in runtime.change_observers:
            # No partial per observer: an ingest runs every observer four times per instance.
            observe(runtime, getattr(watch, "__name__", "change observer"), watch, change_type, level, resource_id)
        if change_type == stopped:
            runtime.stop()

    orthanc.RegisterOnChangeCallback(on_change)
    # Orthanc finalises the plugin without ORTHANC_STOPPED when its start fails (a port in use):
    # the interpreter's exit then stops the threads, before the plugin frees anything.
    atexit.register(runtime.stop)
