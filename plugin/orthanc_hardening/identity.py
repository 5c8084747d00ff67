"""Who is asking: the HTTP user, client IP, calling/called AE titles, transport, roles.

Pure: callers pass the request's headers, peer address and configuration. Orthanc checks the
password before the plugin's HTTP filter ever runs (a request with bad credentials gets 401
from Orthanc), so the user decoded here from ``Authorization: Basic`` is an authenticated one
when Orthanc's authentication is on; when it is off, nobody checked the header, and the
request is anonymous whatever it claims.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass

from orthanc_hardening.access.policy import AccessPolicy, holds, policy_of
from orthanc_hardening.access.routes import Permission
from orthanc_hardening.audit.event import Transport
from orthanc_hardening.config import HardeningConfig

AUDITOR = "auditor"
ADMINISTRATOR = "administrator"

_METHODS = {1: "GET", 2: "POST", 3: "PUT", 4: "DELETE"}


@dataclass(frozen=True, slots=True)
class Requester:
    """The party behind one request, as far as Orthanc lets the plugin see it."""

    transport: Transport
    user: str = ""
    roles: tuple[str, ...] = ()
    source_ip: str = ""
    calling_aet: str = ""
    called_aet: str = ""
    tls_subject: str = ""

    @property
    def is_auditor(self) -> bool:
        return AUDITOR in self.roles

    @property
    def is_administrator(self) -> bool:
        return ADMINISTRATOR in self.roles


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """One incoming HTTP request as the plugin's HTTP filter sees it (no body)."""

    method: str
    uri: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    requester: Requester


def method_name(method: int | str) -> str:
    """Return ``GET``/``POST``/``PUT``/``DELETE`` for Orthanc's integer or string method.

    Raises:
        ValueError: an unknown method value (a caller bug).
    """
    if isinstance(method, str):
        return method.upper()
    try:
        return _METHODS[int(method)]
    except (KeyError, ValueError) as exc:
        raise ValueError(f"unknown HTTP method {method!r}") from exc


def user_from_authorization(headers: Mapping[str, str]) -> str:
    """Return the user name of an ``Authorization: Basic`` header, or ``""``.

    Header names are matched case-insensitively. A malformed header gives ``""``: Orthanc has
    already authenticated the request, so a name we cannot decode is simply unknown.
    """
    value = ""
    for name, content in headers.items():
        if name.lower() == "authorization":
            value = content
            break
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "basic" or not token:
        return ""
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return ""
    user, sep, _password = decoded.partition(":")
    return user if sep else ""


def roles_of(user: str, config: HardeningConfig) -> tuple[str, ...]:
    """Return the plugin roles of an authenticated HTTP user (``auditor``, ``administrator``).

    ``auditor``: the user holds ``audit`` (``Hardening.Auditors`` or a role of
    ``Hardening.Permissions``); ``administrator``: ``hardening-admin`` (or ``all``).
    """
    if not user:
        return ()
    granted = _policy(config).permissions_of(user)
    roles = []
    if holds(granted, Permission.AUDIT):
        roles.append(AUDITOR)
    if holds(granted, Permission.HARDENING_ADMIN):
        roles.append(ADMINISTRATOR)
    return tuple(roles)


_POLICIES: dict[int, tuple[HardeningConfig, AccessPolicy]] = {}


def _policy(config: HardeningConfig) -> AccessPolicy:
    # One policy per configuration object (the configuration is parsed once, at start).
    cached = _POLICIES.get(id(config))
    if cached is None or cached[0] is not config:
        cached = (config, policy_of(config))
        _POLICIES[id(config)] = cached
    return cached[1]


def http_requester(
    headers: Mapping[str, str], ip: str, config: HardeningConfig, transport: Transport = Transport.REST
) -> Requester:
    """Build the requester of an HTTP request from its headers and peer address.

    The user of the ``Authorization`` header counts only when Orthanc authenticates requests.
    """
    user = user_from_authorization(headers) if config.http_authentication else ""
    return Requester(transport=transport, user=user, roles=roles_of(user, config), source_ip=ip)


def dimse_requester(connection: object) -> Requester:
    """The requester of a DIMSE operation from the plugin's ``DicomConnection`` (Python plugin 7.0+).

    ``connection`` has ``GetConnectionRemoteIp``, ``GetConnectionRemoteAet`` and
    ``GetConnectionCalledAet`` (duck-typed: this module does not know the ``orthanc`` module).
    """
    return Requester(
        transport=Transport.DIMSE,
        source_ip=str(connection.GetConnectionRemoteIp() or ""),  # type: ignore[attr-defined]
        calling_aet=str(connection.GetConnectionRemoteAet() or ""),  # type: ignore[attr-defined]
        called_aet=str(connection.GetConnectionCalledAet() or ""),  # type: ignore[attr-defined]
    )


def transport_of_uri(uri: str) -> Transport:
    """Classify an HTTP URI as plain REST, DICOMweb or WebDAV."""
    if uri.startswith("/dicom-web/") or uri == "/dicom-web":
        return Transport.DICOMWEB
    if uri.startswith("/webdav/") or uri == "/webdav":
        return Transport.WEBDAV
    return Transport.REST
