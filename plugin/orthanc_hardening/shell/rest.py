"""Registration of the plugin's own REST routes under ``/hardening``, behind one guard.

A handler receives a ``RestCall`` and returns a ``Reply``; raising a ``HardeningError`` gives
the matching JSON error (DESIGN.md §5). Permission and role checks happen here, before the
handler runs: ``enforce`` is the one permission check of every HTTP route (``shell/permissions.py``
runs it in the HTTP filter for the routes not registered here).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

from orthanc_hardening.access.policy import check_access
from orthanc_hardening.access.routes import Permission, route_of
from orthanc_hardening.audit.event import Outcome
from orthanc_hardening.errors import AccessDeniedError, BadRequestError
from orthanc_hardening.identity import ADMINISTRATOR, AUDITOR, Requester
from orthanc_hardening.shell.guard import (
    JSON_CONTENT_TYPE,
    RestRefusal,
    answer_json,
    decide,
    mark_audited,
    security_alert,
    send_status,
)
from orthanc_hardening.shell.orthanc_api import core_call
from orthanc_hardening.shell.requester import rest_requester
from orthanc_hardening.shell.runtime import Runtime


@dataclass(frozen=True, slots=True)
class RestCall:
    """One call of a plugin REST route."""

    method: str
    uri: str
    groups: tuple[str, ...]
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: bytes
    requester: Requester


@dataclass(frozen=True, slots=True)
class Reply:
    """What a handler answers: JSON (``payload``) or raw bytes with a content type."""

    payload: Any = None
    status: int = 200
    raw: bytes | str | None = None
    content_type: str = JSON_CONTENT_TYPE
    headers: Mapping[str, str] = field(default_factory=dict)


Handler = Callable[[RestCall], Reply]
ACCESS_REFUSALS = "access_refusals"
_ALWAYS_ENFORCED = (Permission.AUDIT.value, Permission.HARDENING_ADMIN.value)


def forwarded_post(runtime: Runtime, uri: str, body: Any, content_type: str, writes: bool = True) -> Reply:
    """Hand ``body`` on to Orthanc's own ``POST uri`` and answer Orthanc's bytes as they are.

    ``writes``: Orthanc may store or delete through the plugin's storage area during the call,
    which then holds ``Runtime.index_writes``; a call that only waits (a modality query, on the
    network) does not, so that it never holds up the deletions and the manifest thread.

    Raises:
        OrthancCoreError: Orthanc refused (its status and code are answered, as Orthanc would).
    """
    with runtime.index_writes if writes else nullcontext():
        answer = core_call(runtime.orthanc.RestApiPost, uri, body)
    return Reply(raw=answer if answer is not None else b"", content_type=content_type)


def enforce(runtime: Runtime, requester: Requester, method: str, uri: str) -> None:
    """Check the requester's permission for ``method uri`` (``access/policy.py``); audit a refusal.

    Raises:
        AccessDeniedError: refused; its Security Alert (user, route, permission) is recorded,
            so the guard adds none.
        StoreUnavailableError: the Security Alert cannot be recorded (the request is refused).
    """
    try:
        check_access(runtime.access, requester.user, method, uri)
    except AccessDeniedError as exc:
        route = f"{method.upper()} {route_of(uri)}"
        permission = (exc.answer or {}).get("permission")
        if not runtime.config.is_enforcing and permission not in _ALWAYS_ENFORCED:
            # Monitor mode reports and never blocks Orthanc's routes (the plugin's own
            # audit and administration routes stay restricted).
            runtime.metrics.increment(ACCESS_REFUSALS)
            security_alert(runtime, requester, route, f"monitor mode, not refused: {exc}", Outcome.MINOR_FAILURE)
            return
        runtime.metrics.increment(ACCESS_REFUSALS)
        security_alert(runtime, requester, route, str(exc))
        raise mark_audited(exc) from None


def require_role(requester: Requester, role: str | None) -> None:
    """Refuse a requester that lacks ``role`` (``auditor``, ``administrator``).

    Raises:
        AccessDeniedError: the requester does not hold the role.
    """
    if role is None:
        return
    if role not in requester.roles:
        who = requester.user or "anonymous"
        raise AccessDeniedError(f"user {who!r} is not in Hardening.{_ROLE_KEYS[role]}")


_ROLE_KEYS = {AUDITOR: "Auditors", ADMINISTRATOR: "Administrators"}


def register(
    runtime: Runtime,
    pattern: str,
    handlers: Mapping[str, Handler],
    role: str | None = None,
    name: str | None = None,
    like_orthanc: bool = False,
) -> None:
    """Register ``pattern`` (a full-match regex) with one handler per HTTP method, behind the guard.

    Args:
        runtime: the plugin runtime.
        pattern: Orthanc route regex, e.g. ``/hardening/instances/([^/]+)/seal``.
        handlers: ``{"GET": fn, "POST": fn}``; other methods get 405.
        role: role required for every method, or ``None`` for any authenticated user.
        name: route name used in audit events and logs (defaults to the pattern).
        like_orthanc: the route stands in for one of Orthanc's own: its bad requests and
            Orthanc's errors are answered in Orthanc's error form.
    """
    route = name or pattern

    def callback(output: Any, uri: str, **request: Any) -> None:
        requester = rest_requester(runtime, uri, request)

        def handle() -> None:
            method = str(request.get("method", "GET")).upper()
            handler = handlers.get(method)
            if handler is None:
                output.SendMethodNotAllowed(",".join(sorted(handlers)))
                return
            enforce(runtime, requester, method, uri)
            require_role(requester, role)
            call = RestCall(
                method=method,
                uri=uri,
                groups=tuple(request.get("groups") or ()),
                query=dict(request.get("get") or {}),
                headers=dict(request.get("headers") or {}),
                body=request.get("body") or b"",
                requester=requester,
            )
            send(output, handler(call))

        refusal = RestRefusal(output, uri, str(request.get("method", "GET")), like_orthanc,
                              describe_errors(runtime))
        decide(runtime, route, requester, handle, refusal)

    runtime.checked_routes.append(re.compile(pattern))
    runtime.orthanc.RegisterRestCallback(pattern, callback)


def send(output: Any, reply: Reply) -> None:
    """Write a ``Reply`` to an Orthanc REST output."""
    for header, value in reply.headers.items():
        output.SetHttpHeader(header, value)
    if reply.raw is None:
        answer_json(output, reply.status, reply.payload)
        return
    if reply.status != 200:
        text = reply.raw.decode("utf-8") if isinstance(reply.raw, bytes) else reply.raw
        output.SetHttpHeader("Content-Type", reply.content_type)
        send_status(output, reply.status, text)
        return
    output.AnswerBuffer(reply.raw, reply.content_type)


def describe_errors(runtime: Runtime) -> bool:
    """Orthanc's ``HttpDescribeErrors`` (default true): whether its errors carry a JSON body."""
    return bool(runtime.orthanc_config.get("HttpDescribeErrors", True))


def int_param(query: Mapping[str, str], name: str, default: int, minimum: int = 0, maximum: int | None = None) -> int:
    """Read an integer query parameter.

    Raises:
        BadRequestError: not an integer, or below ``minimum``. Values above ``maximum`` are capped.
    """
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise BadRequestError(name, f"must be an integer, not {raw[:40]!r}") from exc
    if value < minimum:
        raise BadRequestError(name, f"must be at least {minimum}")
    return min(value, maximum) if maximum is not None else value
