"""The one guard every Orthanc callback goes through, and the one map from errors to answers.

Two kinds of callback (after pynetdicom's *intervention* and *notification* events):

* **Gatekeepers** make a decision: the HTTP filter, the REST routes, the C-STORE filter, the
  C-FIND and C-MOVE handlers, the storage area. ``decide`` runs the decision; any exception,
  expected or not, becomes a refusal in the form the callback needs (``refuse_http``,
  ``RestRefusal``, ``refuse_store``, ``refuse_raise``) and, when it matters for security, a
  Security Alert (110113) in the audit trail. A gatekeeper never fails open.
* **Observers** only watch: change callbacks, metrics refreshers, the manifest queue. ``observe``
  logs and counts an exception (``hardening_observer_failures_total``) and carries on; an
  observer never refuses anything and never takes Orthanc down.

Which errors raise a Security Alert: integrity failures, refusals, an unavailable store (a
check could not be made) and unexpected exceptions (a gate failed: it refused, and the security
officer must know). A client's bad parameter, an unknown id, and Orthanc's own error on a
forwarded call are answered, not alerted. An exception that its raiser already audited (with
more context, e.g. the seal's patient and series) is not alerted twice.

The HTTP client gets ``{"error", "detail"}`` with no key material, paths or tracebacks
(DESIGN.md §5); a route that stands in for one of Orthanc's answers Orthanc's error format.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from orthanc_hardening.audit.event import Action, AuditEvent, EventCode, Outcome, Transport
from orthanc_hardening.errors import (
    AccessDeniedError,
    BadRequestError,
    ConfigError,
    HardeningError,
    HostileInputError,
    IntegrityError,
    NotFoundError,
    StoreUnavailableError,
)
from orthanc_hardening.identity import Requester
from orthanc_hardening.shell.orthanc_api import Capabilities, OrthancCoreError
from orthanc_hardening.shell.runtime import Runtime

logger = logging.getLogger(__name__)

T = TypeVar("T")

# DESIGN.md §5: our errors and their HTTP statuses.
_STATUS: tuple[tuple[type[BaseException], int, str], ...] = (
    (BadRequestError, 400, "bad request"),
    (ConfigError, 400, "bad request"),
    (AccessDeniedError, 403, "forbidden"),
    (HostileInputError, 400, "bad request"),
    (NotFoundError, 404, "not found"),
    (IntegrityError, 409, "integrity check failed"),
    (StoreUnavailableError, 503, "store unavailable"),
)
# Errors that are answered, never alerted: a client's bad request or unknown id, Orthanc's own
# answer to a forwarded call, and a file that is neither stored nor sealed (Orthanc's usual
# "inexistent file"; the scrub names such index entries).
_NOT_ALERTED = (BadRequestError, ConfigError, NotFoundError, OrthancCoreError, FileNotFoundError)
OBSERVER_FAILURES = "observer_failures_total"
# What Orthanc itself answers JSON with (a client comparing headers sees no difference).
JSON_CONTENT_TYPE = "application/json; charset=utf-8"
GATE_FAILURES = "gate_failures_total"

# DIMSE statuses a refused C-STORE gets (PS3.4 Annex B / PS3.7 Annex C).
DIMSE_NOT_AUTHORIZED = 0x0124  # Refused: Not authorized
DIMSE_OUT_OF_RESOURCES = 0xA700  # Refused: Out of resources (what Orthanc sends on a failed store)
DIMSE_PROCESSING_FAILURE = 0x0110
DIMSE_CANNOT_UNDERSTAND = 0xC000  # Error: Cannot understand (PS3.4 Annex B.2.3)


def status_of(exc: BaseException) -> tuple[int, str]:
    """The HTTP status and short error name for an exception (the one map, DESIGN.md §5)."""
    if isinstance(exc, OrthancCoreError):
        return exc.status, "bad request" if exc.status == 400 else "error"
    for kind, status, name in _STATUS:
        if isinstance(exc, kind):
            return status, name
    return 500, "internal error"


def error_body(exc: BaseException) -> dict[str, Any]:
    """The client-facing ``{"error", "detail"}`` body of an exception (or the refusal's own answer)."""
    if isinstance(exc, AccessDeniedError) and exc.answer is not None:
        return exc.answer
    _status, name = status_of(exc)
    detail = str(exc) if isinstance(exc, HardeningError | OrthancCoreError) else "see the Orthanc log"
    return {"error": name, "detail": detail}


def is_alerted(exc: BaseException) -> bool:
    """Whether a refusal because of ``exc`` is a Security Alert."""
    return isinstance(exc, HostileInputError) or not isinstance(exc, _NOT_ALERTED)


# -- answers ----------------------------------------------------------------------------------

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
        output.AnswerBuffer(body, JSON_CONTENT_TYPE)
        return
    output.SetHttpHeader("Content-Type", JSON_CONTENT_TYPE)
    send_status(output, status, body)


def answer_error(output: Any, exc: BaseException) -> None:
    """Answer a REST callback with the JSON error body of ``exc``."""
    status, _ = status_of(exc)
    answer_json(output, status, error_body(exc))


_REASONS = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 409: "Conflict",
            415: "Unsupported Media Type", 416: "Requested Range Not Satisfiable", 500: "Internal Server Error",
            501: "Not Implemented", 503: "Service Unavailable", 507: "Insufficient Storage"}


def orthanc_json(value: dict[str, Any]) -> str:
    """A flat JSON object as Orthanc writes it (jsoncpp's styled writer: sorted keys, tabs)."""
    lines = [f"\t{json.dumps(key)} : {json.dumps(value[key], ensure_ascii=False)}" for key in sorted(value)]
    return "{\n" + ",\n".join(lines) + "\n}\n"


def answer_like_orthanc(output: Any, exc: BaseException, uri: str, method: str, describe: bool = True) -> None:
    """Answer an error of an overridden core route the way Orthanc itself does.

    Orthanc answers its errors with the HTTP status of the error code and, when
    ``HttpDescribeErrors`` is on (its default), a JSON object naming the code (no
    ``Content-Type``). Our own refusals (integrity, access) keep the plugin's
    ``{"error", "detail"}`` form, which names the reason.
    """
    if isinstance(exc, BadRequestError):
        exc = OrthancCoreError.of(8, str(exc))
    if not isinstance(exc, OrthancCoreError):
        answer_error(output, exc)
        return
    if not describe:
        output.SendHttpStatusCode(exc.status)
        return
    body: dict[str, Any] = {
        "HttpError": _REASONS.get(exc.status, "Error"),
        "HttpStatus": exc.status,
        "Message": exc.description,
        "Method": method.upper(),
        "OrthancError": exc.description,
        "OrthancStatus": exc.code,
        "Uri": uri,
    }
    if str(exc) and str(exc) != exc.description:
        body["Details"] = str(exc)
    payload = getattr(exc, "payload", None)  # a failed job's (shell/job_routes.py)
    if payload is not None:
        body["ErrorPayload"] = payload
    send_status(output, exc.status, orthanc_json(body))


# -- the guard ------------------------------------------------------------------------------


def security_alert(runtime: Runtime, requester: Requester, route: str, detail: str,
                   outcome: Outcome = Outcome.SERIOUS_FAILURE, **identity: Any) -> None:
    """Record a Security Alert (110113).

    Raises:
        StoreUnavailableError: the audit store cannot record it.
    """
    runtime.audit.record(AuditEvent(
        time=runtime.clock(), event=EventCode.SECURITY_ALERT, action=Action.EXECUTE, outcome=outcome,
        transport=requester.transport, user=requester.user, roles=requester.roles,
        source_ip=requester.source_ip, calling_aet=requester.calling_aet, called_aet=requester.called_aet,
        route=route, detail=detail, **identity,
    ))


def alert(runtime: Runtime, requester: Requester, route: str, detail: str, **identity: Any) -> None:
    """Record a Security Alert; if the audit store cannot, say so in the log (never raises)."""
    try:
        security_alert(runtime, requester, route, detail, **identity)
    except HardeningError:
        logger.error("could not audit the security alert on %s: %s", route, detail)


def mark_audited(exc: BaseException) -> BaseException:
    """Note that ``exc``'s raiser already recorded its Security Alert (the guard adds none)."""
    exc.hardening_audited = True  # type: ignore[attr-defined]
    return exc


def report(runtime: Runtime, gate: str, requester: Requester, exc: BaseException) -> None:
    """Log a refusal and, when it is one (``is_alerted``), record its Security Alert."""
    if isinstance(exc, HardeningError | OrthancCoreError | FileNotFoundError):
        logger.warning("%s refused: %s", gate, exc)
    else:
        runtime.metrics.increment(GATE_FAILURES)
        logger.exception("%s failed, refused", gate)
    if is_alerted(exc) and not getattr(exc, "hardening_audited", False):
        detail = str(exc) if isinstance(exc, HardeningError) else f"internal error ({type(exc).__name__}); refused"
        alert(runtime, requester, gate, detail)


def decide(runtime: Runtime, gate: str, requester: Requester | Callable[[], Requester],
           decision: Callable[[], T], refusal: Callable[[BaseException], T]) -> T:
    """Run a gatekeeper's decision; any exception becomes ``refusal(exc)`` (fail closed).

    Args:
        runtime: the plugin runtime.
        gate: the gate's name (a route, ``C-FIND``, ``storage-read``…), for the log and the trail.
        requester: who is asking, or how to find out (called only when a refusal is reported).
        decision: the gatekeeper's work; returns the callback's answer.
        refusal: the refusal in the callback's form, given the exception.
    """
    try:
        return decision()
    except Exception as exc:
        try:
            who = requester() if callable(requester) else requester
        except Exception:
            logger.exception("the requester of %s cannot be told", gate)
            who = Requester(transport=Transport.INTERNAL)
        report(runtime, gate, who, exc)
        return refusal(exc)


def observe(runtime: Runtime, name: str, body: Callable[..., None], *args: Any) -> None:
    """Run an observer on ``args``; log and count an exception, never raise."""
    try:
        body(*args)
    except Exception:
        runtime.metrics.increment(OBSERVER_FAILURES)
        logger.exception("observer %s failed", name)


# -- refusal forms ----------------------------------------------------------------------------


def refuse_http(exc: BaseException) -> bool:
    """The HTTP filter's refusal: ``False`` (Orthanc answers an empty 403)."""
    return False


def refuse_store(exc: BaseException) -> int:
    """The C-STORE filter's refusal: a DIMSE failure status naming why."""
    if isinstance(exc, AccessDeniedError):
        return DIMSE_NOT_AUTHORIZED
    if isinstance(exc, StoreUnavailableError):
        return DIMSE_OUT_OF_RESOURCES
    if isinstance(exc, HostileInputError):
        return DIMSE_CANNOT_UNDERSTAND
    return DIMSE_PROCESSING_FAILURE


def refuse_raise(exc: BaseException) -> Any:
    """The refusal of callbacks that fail by raising (storage area, C-FIND, C-MOVE): re-raise.

    The Python plugin turns it into Orthanc's failure (HTTP 500, DIMSE 0xC000 / 0xA700).
    """
    raise exc


class RestRefusal:
    """A REST route's refusal: the plugin's JSON error (or, ``like_orthanc``, Orthanc's own form)."""

    def __init__(self, output: Any, uri: str = "", method: str = "GET", like_orthanc: bool = False,
                 describe: bool = True) -> None:
        self.output = output
        self.uri = uri
        self.method = method
        self.like_orthanc = like_orthanc
        self.describe = describe

    def __call__(self, exc: BaseException) -> None:
        if self.like_orthanc:
            answer_like_orthanc(self.output, exc, self.uri, self.method, self.describe)
        else:
            answer_error(self.output, exc)
