"""The single registration of each Orthanc callback kind, dispatching to the runtime's chains.

Orthanc's Python plugin keeps one callable per hook kind, so features never register the HTTP
filter, the C-STORE filter or the change callback themselves: they append to
``runtime.http_gates`` / ``cstore_gates`` / ``change_observers``.
"""

from __future__ import annotations

import atexit
import logging
from typing import Any

from orthanc_hardening.errors import HardeningError
from orthanc_hardening.identity import HttpRequest, Requester, http_requester, method_name, transport_of_uri
from orthanc_hardening.shell.guard import alert_for, observer
from orthanc_hardening.shell.runtime import Runtime

logger = logging.getLogger(__name__)

# DIMSE status "Refused: Out of resources" is what Orthanc itself sends on a failed store;
# 0x0124 "Refused: Not authorized" (PS3.7 C) says why we refuse.
DIMSE_NOT_AUTHORIZED = 0x0124
DIMSE_PROCESSING_FAILURE = 0x0110


def install_hooks(runtime: Runtime) -> None:
    """Register the HTTP filter, the C-STORE filter and the change callback."""
    orthanc = runtime.orthanc

    def http_filter(uri: str, **kwargs: Any) -> bool:
        requester = Requester(transport=transport_of_uri(uri))
        try:
            headers = dict(kwargs.get("headers") or {})
            requester = http_requester(headers, str(kwargs.get("ip", "")), runtime.config, transport_of_uri(uri))
            request = HttpRequest(
                method=method_name(kwargs.get("method", 1)),
                uri=uri,
                query=dict(kwargs.get("get") or {}),
                headers=headers,
                requester=requester,
            )
            runtime.remember_request(request)
            for gate in runtime.http_gates:
                gate(request)
            return True
        except HardeningError as exc:
            logger.warning("HTTP %s refused: %s", uri, exc)
            alert_for(runtime, exc, requester, uri)
            return False
        except Exception:
            logger.exception("HTTP filter failed on %s", uri)
            return False

    orthanc.RegisterIncomingHttpRequestFilter(http_filter)

    def cstore_filter(instance: Any) -> int:
        try:
            for gate in runtime.cstore_gates:
                status = gate(instance)
                if status != 0:
                    return status
            return 0
        except Exception:
            logger.exception("C-STORE filter failed")
            return DIMSE_PROCESSING_FAILURE

    orthanc.RegisterIncomingCStoreInstanceFilter(cstore_filter)

    stopped = orthanc.ChangeType.ORTHANC_STOPPED
    started = orthanc.ChangeType.ORTHANC_STARTED

    def on_change(change_type: int, level: int, resource_id: str) -> None:
        if change_type == started:
            with observer("metrics"):
                runtime.metrics.start()
        for watch in runtime.change_observers:
            with observer(getattr(watch, "__name__", "change observer")):
                watch(change_type, level, resource_id)
        if change_type == stopped:
            runtime.stop()

    orthanc.RegisterOnChangeCallback(on_change)
    # Orthanc finalises the plugin without ORTHANC_STOPPED when its start fails (a port in use):
    # the interpreter's exit then stops the threads, before the plugin frees anything.
    atexit.register(runtime.stop)
