"""The one guard every shell callback goes through: errors become replies, never crashes.

Gatekeepers (HTTP filter, storage read, C-STORE filter, REST routes) fail closed: any
exception, expected or not, ends in a refusal and, for security outcomes, a Security Alert.
Observers (change callbacks, metrics) only log: an observer never takes Orthanc down.
The HTTP client gets ``{"error", "detail"}`` with no key material, paths or tracebacks.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from orthanc_hardening.audit.event import Action, AuditEvent, EventCode, Outcome, Transport
from orthanc_hardening.errors import (
    AccessDeniedError,
    BadRequestError,
    ConfigError,
    HardeningError,
    IntegrityError,
    NotFoundError,
    StoreUnavailableError,
)
from orthanc_hardening.identity import Requester
from orthanc_hardening.shell.orthanc_api import Capabilities
from orthanc_hardening.shell.runtime import Runtime

logger = logging.getLogger(__name__)

_STATUS = (
    (BadRequestError, 400, "bad request"),
    (ConfigError, 400, "bad request"),
    (AccessDeniedError, 403, "forbidden"),
    (NotFoundError, 404, "not found"),
    (IntegrityError, 409, "integrity check failed"),
    (StoreUnavailableError, 503, "store unavailable"),
)


def status_of(exc: BaseException) -> tuple[int, str]:
    """Return the HTTP status and short error name for an exception (DESIGN.md §5)."""
    for kind, status, name in _STATUS:
        if isinstance(exc, kind):
            return status, name
    return 500, "internal error"


def error_body(exc: BaseException) -> dict[str, str]:
    """Return the client-facing ``{"error", "detail"}`` body for an exception."""
    _status, name = status_of(exc)
    detail = str(exc) if isinstance(exc, HardeningError) else "see the Orthanc log"
    return {"error": name, "detail": detail}


# Python plugin 4.0/4.1 take ``SendHttpStatus(status, body, length)``; 4.2 and newer take
# ``(status, body)`` (a third argument is a TypeError). Set once by ``shell.install``.
_status_takes_length = True


def use_capabilities(capabilities: Capabilities) -> None:
    """Choose the ``SendHttpStatus`` form of the running Python plugin (called once at start)."""
    global _status_takes_length
    _status_takes_length = not capabilities.two_argument_status


def send_status(output: Any, status: int, body: str) -> None:
    """Answer a REST callback with a non-200 status and a text body, on every plugin version."""
    if _status_takes_length:
        output.SendHttpStatus(status, body, len(body.encode("utf-8")))
    else:
        output.SendHttpStatus(status, body)


def answer_json(output: Any, status: int, payload: Any) -> None:
    """Answer a REST callback with JSON and an HTTP status."""
    body = json.dumps(payload, ensure_ascii=True, sort_keys=True, indent=2)
    if status == 200:
        output.AnswerBuffer(body, "application/json")
        return
    output.SetHttpHeader("Content-Type", "application/json")
    send_status(output, status, body)


def answer_error(output: Any, exc: BaseException) -> None:
    """Answer a REST callback with the JSON error body of ``exc``."""
    status, _ = status_of(exc)
    answer_json(output, status, error_body(exc))


def security_alert(
    runtime: Runtime,
    requester: Requester,
    route: str,
    detail: str,
    outcome: Outcome = Outcome.SERIOUS_FAILURE,
    **identity: Any,
) -> None:
    """Record a Security Alert (110113). Raises ``StoreUnavailableError`` if it cannot."""
    runtime.audit.record(
        AuditEvent(
            time=runtime.clock(),
            event=EventCode.SECURITY_ALERT,
            action=Action.EXECUTE,
            outcome=outcome,
            transport=requester.transport,
            user=requester.user,
            roles=requester.roles,
            source_ip=requester.source_ip,
            calling_aet=requester.calling_aet,
            called_aet=requester.called_aet,
            route=route,
            detail=detail,
            **identity,
        )
    )


def alert_for(runtime: Runtime, exc: BaseException, requester: Requester, route: str) -> None:
    """Record a Security Alert for an integrity failure or a refusal; log if the store is down."""
    if not isinstance(exc, IntegrityError | AccessDeniedError):
        return
    try:
        security_alert(runtime, requester, route, str(exc))
    except HardeningError:
        logger.error("could not audit security alert on %s: %s", route, exc)


@contextmanager
def gatekeeper(
    runtime: Runtime, output: Any, route: str, requester: Requester | None = None
) -> Iterator[None]:
    """Run a REST callback body; turn any exception into a JSON error reply (fail closed)."""
    who = requester or Requester(transport=Transport.REST)
    try:
        yield
    except HardeningError as exc:
        logger.warning("refused %s: %s", route, exc)
        alert_for(runtime, exc, who, route)
        answer_error(output, exc)
    except Exception as exc:
        logger.exception("internal error in %s", route)
        answer_error(output, exc)


@contextmanager
def observer(name: str) -> Iterator[None]:
    """Run an observer body; log any exception and carry on."""
    try:
        yield
    except Exception:
        logger.exception("observer %s failed", name)
