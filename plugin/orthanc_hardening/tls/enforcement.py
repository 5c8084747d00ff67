"""Enforcement rules: which destinations are secure and which HTTP requests to refuse.

Pure: callers pass Orthanc's modality, peer and DICOMweb-server definitions (from the
configuration or from ``/modalities?expand``) and the request's method and URI. The shell
decides what to do with a ``Verdict`` (refuse in enforce mode, log in monitor mode).

Rules (enforce mode):

* DICOM leaves Orthanc only towards modalities with ``UseDicomTls``.
* HTTP leaves Orthanc only towards peers and DICOMweb servers with an ``https://`` URL.
* A modality, peer or server definition that breaks these rules cannot be created.
* Routes that run code on the server (``POST /tools/execute-script``, Lua) or write to its
  filesystem (``POST /instances/{id}/export``) are refused.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlparse


class RouteKind(enum.Enum):
    """Why a route matters to TLS enforcement."""

    MODALITY = "modality"
    PEER = "peer"
    DICOMWEB_SERVER = "DICOMweb server"
    CODE_EXECUTION = "code execution"
    FILESYSTEM_WRITE = "filesystem write"


@dataclass(frozen=True, slots=True)
class Destination:
    """A modality, peer or DICOMweb server as Orthanc knows it."""

    kind: RouteKind
    name: str
    address: str
    is_secure: bool
    problem: str = ""


# Routes through which Orthanc opens a connection to the named destination (Orthanc 1.10
# REST API and the DICOMweb plugin). Any method: a wrong one is refused by Orthanc anyway.
_MODALITY_ACTIONS = (
    "echo|store|store-straight|move|get|query|find|find-patient|find-study|find-series|"
    "find-instance|find-worklist|storage-commitment"
)
_OUTGOING = (
    (re.compile(rf"/modalities/([^/]+)/({_MODALITY_ACTIONS})/?"), RouteKind.MODALITY),
    (re.compile(r"/peers/([^/]+)/(store|store-straight|system)/?"), RouteKind.PEER),
    (re.compile(r"/dicom-web/servers/([^/]+)/(stow|get|retrieve|qido|wado|delete)/?"), RouteKind.DICOMWEB_SERVER),
)
# (method, route, kind, Orthanc option that also guards it)
_FORBIDDEN = (
    ("POST", re.compile(r"/tools/execute-script/?"), RouteKind.CODE_EXECUTION, "ExecuteLuaEnabled"),
    ("POST", re.compile(r"/instances/[^/]+/export/?"), RouteKind.FILESYSTEM_WRITE, "RestApiWriteToFileSystemEnabled"),
)

MODALITY_DEFINITION = re.compile(r"/modalities/([^/]+)/?")
PEER_DEFINITION = re.compile(r"/peers/([^/]+)/?")


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """A request that TLS enforcement must judge: its kind and its destination name."""

    kind: RouteKind
    target: str = ""
    guarded_by: str = ""


def classify_route(method: str, uri: str) -> RouteMatch | None:
    """Return what an HTTP request does that enforcement cares about, or ``None``.

    Args:
        method: ``GET``/``POST``/``PUT``/``DELETE``.
        uri: the path without query string, as Orthanc passes it to plugins.

    Returns:
        The route's kind and destination name (percent-decoded), or ``None`` for any other
        route.
    """
    for pattern, kind in _OUTGOING:
        match = pattern.fullmatch(uri)
        if match is not None:
            return RouteMatch(kind=kind, target=unquote(match.group(1)))
    for forbidden_method, pattern, kind, option in _FORBIDDEN:
        if method.upper() == forbidden_method and pattern.fullmatch(uri):
            return RouteMatch(kind=kind, guarded_by=option)
    return None


def modality_destination(name: str, definition: Any) -> Destination:
    """Describe a modality from its Orthanc definition (array or object form).

    Orthanc's array form ``[AET, host, port(, manufacturer)]`` has no TLS; the object form
    uses DICOM TLS only with ``"UseDicomTls": true``.
    """
    if isinstance(definition, list | tuple):
        address = ":".join(str(part) for part in definition[1:3])
        return Destination(RouteKind.MODALITY, name, address, False, "array form without UseDicomTls")
    if not isinstance(definition, Mapping):
        return Destination(RouteKind.MODALITY, name, "", False, "unreadable definition")
    address = f"{definition.get('Host', '?')}:{definition.get('Port', '?')}"
    if definition.get("UseDicomTls") is True:
        return Destination(RouteKind.MODALITY, name, address, True)
    return Destination(RouteKind.MODALITY, name, address, False, "UseDicomTls is not true")


def peer_destination(name: str, definition: Any, kind: RouteKind = RouteKind.PEER) -> Destination:
    """Describe an Orthanc peer or DICOMweb server from its definition (array or object form)."""
    url = ""
    if isinstance(definition, list | tuple) and definition:
        url = str(definition[0])
    elif isinstance(definition, Mapping):
        url = str(definition.get("Url", ""))
    elif isinstance(definition, str):
        url = definition
    if urlparse(url).scheme.lower() == "https":
        return Destination(kind, name, _without_credentials(url), True)
    return Destination(kind, name, _without_credentials(url), False, "URL is not https://")


def _without_credentials(url: str) -> str:
    # A URL may carry user:password@; evidence and errors never show it.
    parsed = urlparse(url)
    if parsed.username is None and parsed.password is None:
        return url
    host = parsed.hostname or ""
    port = f":{parsed.port}" if parsed.port else ""
    return parsed._replace(netloc=f"{host}{port}").geturl()


def destinations(
    modalities: Mapping[str, Any], peers: Mapping[str, Any], dicomweb_servers: Mapping[str, Any]
) -> dict[tuple[RouteKind, str], Destination]:
    """Describe every configured destination, keyed by ``(kind, name)``."""
    known: dict[tuple[RouteKind, str], Destination] = {}
    for name, definition in modalities.items():
        known[(RouteKind.MODALITY, name)] = modality_destination(name, definition)
    for name, definition in peers.items():
        known[(RouteKind.PEER, name)] = peer_destination(name, definition)
    for name, definition in dicomweb_servers.items():
        known[(RouteKind.DICOMWEB_SERVER, name)] = peer_destination(name, definition, RouteKind.DICOMWEB_SERVER)
    return known


@dataclass(frozen=True, slots=True)
class Verdict:
    """The decision about one request: allowed, or refused with the reason."""

    allowed: bool
    reason: str = ""
    kind: RouteKind | None = None
    target: str = ""
    is_unknown_target: bool = False

    @property
    def body(self) -> dict[str, str]:
        """The JSON error body of a refusal (DESIGN.md §5)."""
        body = {"error": "forbidden", "detail": self.reason}
        if self.kind is not None:
            body["kind"] = self.kind.value
        if self.target and self.kind is not None:
            body[_TARGET_FIELD.get(self.kind, "target")] = self.target
        return body


_TARGET_FIELD = {
    RouteKind.MODALITY: "modality",
    RouteKind.PEER: "peer",
    RouteKind.DICOMWEB_SERVER: "server",
}

ALLOWED = Verdict(allowed=True)


def judge_request(method: str, uri: str, known: Mapping[tuple[RouteKind, str], Destination]) -> Verdict:
    """Decide whether enforce mode lets an HTTP request through.

    Outgoing routes are allowed only towards destinations known to be secure: an unknown name
    is refused too (``is_unknown_target``), so that the caller may refresh its list and ask
    again, and a destination it cannot see is never reached.

    Args:
        method: the HTTP method.
        uri: the request path without query string.
        known: ``destinations(...)`` of Orthanc's current configuration.

    Returns:
        ``ALLOWED`` or a refusal naming the destination or the route.
    """
    match = classify_route(method, uri)
    if match is None:
        return ALLOWED
    if match.kind is RouteKind.CODE_EXECUTION:
        return Verdict(
            False,
            f"{method} {uri} runs code on the server and is refused in enforce mode "
            f"(keep {match.guarded_by} false)",
            match.kind,
        )
    if match.kind is RouteKind.FILESYSTEM_WRITE:
        return Verdict(
            False,
            f"{method} {uri} writes to the server's filesystem and is refused in enforce mode "
            f"(keep {match.guarded_by} false)",
            match.kind,
        )
    destination = known.get((match.kind, match.target))
    if destination is None:
        return Verdict(
            False,
            f"{match.kind.value} {match.target!r} is not known to use TLS",
            match.kind,
            match.target,
            is_unknown_target=True,
        )
    if destination.is_secure:
        return ALLOWED
    return Verdict(False, _insecure_reason(destination), match.kind, match.target)


def _insecure_reason(destination: Destination) -> str:
    transport = "DICOM TLS" if destination.kind is RouteKind.MODALITY else "HTTPS"
    return (
        f"{destination.kind.value} {destination.name!r} ({destination.address}) does not use {transport}: "
        f"{destination.problem}; sending to it is refused in enforce mode"
    )


def judge_definition(kind: RouteKind, name: str, body: bytes) -> tuple[Verdict, Destination | None]:
    """Decide whether a ``PUT /modalities/{name}`` or ``PUT /peers/{name}`` body may be created.

    Args:
        kind: ``RouteKind.MODALITY`` or ``RouteKind.PEER``.
        name: the symbolic name from the URI.
        body: the request body (Orthanc accepts the array or the object form).

    Returns:
        The verdict and, when the body is readable, the destination it describes. A body that
        is not JSON is let through: Orthanc refuses it itself with 400.
    """
    try:
        definition = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return ALLOWED, None
    if kind is RouteKind.MODALITY:
        destination = modality_destination(name, definition)
    elif kind is RouteKind.PEER:
        destination = peer_destination(name, definition)
    else:
        raise ValueError(f"no definition route for {kind}")
    if destination.is_secure:
        return ALLOWED, destination
    reason = (
        f"{kind.value} {name!r} ({destination.address}) would not use "
        f"{'DICOM TLS' if kind is RouteKind.MODALITY else 'HTTPS'}: {destination.problem}; "
        "creating it is refused in enforce mode"
    )
    return Verdict(False, reason, kind, name), destination
