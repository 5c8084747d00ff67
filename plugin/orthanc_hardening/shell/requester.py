"""Who is asking, from what each Orthanc callback gives (the one place that builds a requester).

* the HTTP filter gets the headers and the peer's IP: ``http_request``;
* a REST callback gets the headers but no IP; the filter saw the IP on this same thread, before
  Orthanc called the route: ``rest_requester``;
* C-FIND and C-MOVE callbacks get the AE titles (Python plugin 4.0+) or the DICOM connection
  with the peer's IP (7.0+): ``identity.dimse_requester``; C-STORE gets the calling AE title.

The user named by ``Authorization: Basic`` is an authenticated one: Orthanc checks the password
before any plugin code runs (``identity.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from orthanc_hardening.access.routes import route_of
from orthanc_hardening.audit.event import Transport
from orthanc_hardening.identity import HttpRequest, Requester, http_requester, method_name, transport_of_uri
from orthanc_hardening.shell.runtime import Runtime


def http_request(runtime: Runtime, uri: str, kwargs: Mapping[str, Any]) -> HttpRequest:
    """The request the HTTP filter sees (``filter(uri, method=, ip=, headers=, get=)``).

    Its ``uri`` is the route Orthanc serves (``access.routes.route_of``: one trailing slash and
    repeated slashes dropped), so that every HTTP gate decides on the route Orthanc routes to,
    whatever the spelling; the method is the one after Orthanc's method faking.
    """
    uri = route_of(uri)
    headers = dict(kwargs.get("headers") or {})
    requester = http_requester(headers, str(kwargs.get("ip", "")), runtime.config, transport_of_uri(uri))
    return HttpRequest(
        method=method_name(kwargs.get("method", 1)),
        uri=uri,
        query=dict(kwargs.get("get") or {}),
        headers=headers,
        requester=requester,
    )


def rest_requester(runtime: Runtime, uri: str, request: Mapping[str, Any]) -> Requester:
    """The requester of a REST callback (``cb(output, uri, method=, headers=, …)``)."""
    current = runtime.current_request()
    ip = current.requester.source_ip if current is not None else ""
    return http_requester(dict(request.get("headers") or {}), ip, runtime.config, transport_of_uri(uri))


def cstore_requester(runtime: Runtime, instance: Any) -> Requester:
    """The requester of an incoming C-STORE: its calling AE title (no IP in the plugin API)."""
    try:
        aet = str(instance.GetInstanceRemoteAet())
    except Exception:
        aet = ""
    return Requester(transport=Transport.DIMSE, calling_aet=aet,
                     called_aet=str(runtime.orthanc_config.get("DicomAet", "ORTHANC")))


def internal_requester() -> Requester:
    """The plugin itself (start-up checks, background work)."""
    return Requester(transport=Transport.INTERNAL)
