"""The shell's guard, REST registration and hook chains, driven through ``FakeOrthanc``."""

from __future__ import annotations

import base64
import datetime as dt

import pytest

from orthanc_hardening.audit.event import EventCode, Transport
from orthanc_hardening.config import HardeningConfig
from orthanc_hardening.errors import (
    AccessDeniedError,
    BadRequestError,
    NotFoundError,
    SealMismatchError,
    StoreUnavailableError,
)
from orthanc_hardening.identity import ADMINISTRATOR, HttpRequest
from orthanc_hardening.shell.callbacks import install_callbacks as install_hooks
from orthanc_hardening.shell.guard import DIMSE_NOT_AUTHORIZED, DIMSE_PROCESSING_FAILURE
from orthanc_hardening.shell.metrics import Metrics
from orthanc_hardening.shell.rest import Reply, int_param, register
from orthanc_hardening.shell.runtime import Runtime
from tests.unit.fakes import ChangeType, FakeOrthanc, FakeOutput, MemoryAuditSink

NOW = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)


def basic(user: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{user}:pw".encode()).decode()}


@pytest.fixture
def runtime() -> Runtime:
    orthanc = FakeOrthanc()
    config = HardeningConfig(auditors=("alice",), administrators=("admin",))
    return Runtime(
        orthanc=orthanc, config=config, orthanc_config={}, metrics=Metrics(orthanc),
        audit=MemoryAuditSink(), clock=lambda: NOW,
    )


def call(runtime: Runtime, pattern: str, method: str = "GET", user: str = "admin", **extra: object) -> FakeOutput:
    out = FakeOutput()
    runtime.orthanc.routes[pattern](out, "/hardening/x", method=method, headers=basic(user), groups=(), **extra)
    return out


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (BadRequestError("limit", "must be an integer"), 400),
        (AccessDeniedError("no"), 403),
        (NotFoundError("unknown instance"), 404),
        (SealMismatchError("sha256 differs"), 409),
        (StoreUnavailableError("disk full"), 503),
        (KeyError("bug"), 500),
    ],
)
def test_errors_become_json_with_the_right_status(runtime: Runtime, error: Exception, status: int) -> None:
    def handler(_call: object) -> Reply:
        raise error

    register(runtime, "/hardening/x", {"GET": handler})
    out = call(runtime, "/hardening/x")
    assert out.status == status
    body = out.json()
    assert set(body) == {"error", "detail"}
    if status == 500:
        assert "bug" not in body["detail"]  # no internals leak to the client


def test_integrity_failure_is_audited_as_security_alert(runtime: Runtime) -> None:
    def handler(_call: object) -> Reply:
        raise SealMismatchError("instance abc: sha256 differs from its seal")

    register(runtime, "/hardening/x", {"GET": handler})
    call(runtime, "/hardening/x", user="bob")
    event = runtime.audit.last()  # type: ignore[attr-defined]
    assert (event.event, event.user, event.route) == (EventCode.SECURITY_ALERT, "bob", "/hardening/x")


def test_role_is_required_before_the_handler_runs(runtime: Runtime) -> None:
    ran: list[str] = []
    register(runtime, "/hardening/x", {"GET": lambda c: ran.append(c.requester.user) or Reply({"ok": 1})},
             role=ADMINISTRATOR)
    assert call(runtime, "/hardening/x", user="alice").status == 403
    assert ran == []
    out = call(runtime, "/hardening/x", user="admin")
    assert (out.status, out.json(), ran) == (200, {"ok": 1}, ["admin"])


def test_unregistered_method_gets_405(runtime: Runtime) -> None:
    register(runtime, "/hardening/x", {"GET": lambda c: Reply({})})
    out = call(runtime, "/hardening/x", method="DELETE")
    assert (out.status, out.allowed) == (405, "GET")


def test_int_param_validates_and_caps() -> None:
    assert int_param({}, "limit", 50) == 50
    assert int_param({"limit": "10"}, "limit", 50) == 10
    assert int_param({"limit": "999999"}, "limit", 50, maximum=1000) == 1000
    with pytest.raises(BadRequestError, match="limit"):
        int_param({"limit": "ten"}, "limit", 50)
    with pytest.raises(BadRequestError, match="limit"):
        int_param({"limit": "-1"}, "limit", 50)


def test_http_filter_runs_gates_and_fails_closed(runtime: Runtime) -> None:
    seen: list[HttpRequest] = []

    def gate(request: HttpRequest) -> None:
        seen.append(request)
        if request.uri == "/tools/execute-script":
            raise AccessDeniedError("Lua is refused")
        if request.uri == "/boom":
            raise RuntimeError("bug in a gate")

    runtime.http_gates.append(gate)
    install_hooks(runtime)
    http_filter = runtime.orthanc.http_filter
    assert http_filter("/system", method=1, ip="127.0.0.1", headers=basic("bob"), get={}) is True
    assert seen[-1].requester.user == "bob" and seen[-1].method == "GET"
    assert runtime.current_request() is seen[-1]
    assert http_filter("/tools/execute-script", method=2, ip="127.0.0.1", headers=basic("bob")) is False
    assert runtime.audit.last().event is EventCode.SECURITY_ALERT  # type: ignore[attr-defined]
    assert http_filter("/boom", method=1, ip="127.0.0.1", headers={}) is False
    # A gate that fails unexpectedly refuses, and the security officer hears of it.
    alert = runtime.audit.last()  # type: ignore[attr-defined]
    assert (alert.event, alert.route) == (EventCode.SECURITY_ALERT, "HTTP /boom")
    assert "internal error (RuntimeError)" in alert.detail


def test_http_observer_failure_never_refuses(runtime: Runtime) -> None:
    runtime.http_observers.append(lambda request: 1 // 0)
    install_hooks(runtime)
    assert runtime.orthanc.http_filter("/system", method=1, ip="127.0.0.1", headers=basic("bob")) is True
    assert runtime.metrics.value("observer_failures_total") == 1


def test_cstore_filter_returns_first_refusal_and_fails_closed(runtime: Runtime) -> None:
    def refuse(_instance: object) -> None:
        raise AccessDeniedError("not this modality")

    runtime.cstore_gates.extend([lambda i: None, refuse, lambda i: None])
    install_hooks(runtime)
    assert runtime.orthanc.cstore_filter(object()) == DIMSE_NOT_AUTHORIZED
    runtime.cstore_gates[:] = [lambda i: 1 // 0]
    assert runtime.orthanc.cstore_filter(object()) == DIMSE_PROCESSING_FAILURE


def test_change_observers_never_raise_and_stop_actions_run(runtime: Runtime) -> None:
    stopped: list[bool] = []
    runtime.change_observers.append(lambda *a: 1 // 0)
    runtime.stop_actions.append(lambda: stopped.append(True))
    install_hooks(runtime)
    runtime.orthanc.on_change(ChangeType.NEW_INSTANCE, 3, "abc")
    runtime.orthanc.on_change(ChangeType.ORTHANC_STOPPED, 4, "")
    assert stopped == [True]


def test_metrics_are_pushed_with_prefix_once_orthanc_has_started(runtime: Runtime) -> None:
    runtime.metrics.set("posture_failed_checks", 1)
    assert runtime.orthanc.metrics == {}  # Orthanc refuses SetMetricsValue while plugins initialise
    install_hooks(runtime)
    runtime.orthanc.on_change(ChangeType.ORTHANC_STARTED, 4, "")
    assert runtime.orthanc.metrics == {"hardening_posture_failed_checks": 1.0}
    del runtime.orthanc.metrics["hardening_posture_failed_checks"]
    runtime.metrics.increment("integrity_failures_total")
    runtime.metrics.increment("integrity_failures_total")
    runtime.metrics.set("certificate_days_left", 30)
    assert runtime.orthanc.metrics == {
        "hardening_integrity_failures_total": 2.0,
        "hardening_certificate_days_left": 30.0,
    }


def test_requester_transport_is_rest_by_default(runtime: Runtime) -> None:
    install_hooks(runtime)
    runtime.orthanc.http_filter("/dicom-web/studies", method=1, ip="::1", headers={})
    request = runtime.current_request()
    assert request is not None and request.requester.transport is Transport.DICOMWEB
