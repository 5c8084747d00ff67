"""The review page routes and the Explorer extension, driven through ``FakeOrthanc``."""

from __future__ import annotations

import base64
import datetime as dt

import pytest

from orthanc_hardening.config import HardeningConfig
from orthanc_hardening.errors import NotFoundError
from orthanc_hardening.shell import review
from orthanc_hardening.shell.metrics import Metrics
from orthanc_hardening.shell.runtime import Runtime
from tests.unit.fakes import FakeOrthanc, FakeOutput, MemoryAuditSink

NOW = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)


@pytest.fixture
def runtime() -> Runtime:
    orthanc = FakeOrthanc()
    config = HardeningConfig(auditors=("alice",), administrators=("admin",))
    return Runtime(orthanc=orthanc, config=config, orthanc_config={}, metrics=Metrics(orthanc),
                   audit=MemoryAuditSink(), clock=lambda: NOW)


def get(runtime: Runtime, pattern: str, user: str, *groups: str) -> FakeOutput:
    out = FakeOutput()
    headers = {"authorization": "Basic " + base64.b64encode(f"{user}:pw".encode()).decode()}
    runtime.orthanc.routes[pattern](out, "/hardening/ui/", method="GET", headers=headers, groups=groups, get={})
    return out


def test_auditor_gets_the_page_with_a_strict_content_security_policy(runtime: Runtime) -> None:
    review.install(runtime)
    out = get(runtime, review.UI_INDEX_ROUTE, "alice")
    assert out.status == 200
    assert b"<title>Audit trail" in (out.body if isinstance(out.body, bytes) else out.body.encode())
    assert out.headers["Content-Security-Policy"].startswith("default-src 'self'")
    assert out.headers["X-Frame-Options"] == "DENY"


@pytest.mark.attack
def test_non_auditor_is_refused_and_alerted(runtime: Runtime) -> None:
    review.install(runtime)
    out = get(runtime, review.UI_ROUTE, "admin", "app.js")
    assert out.status == 403
    assert runtime.audit.events[-1].event.code == "110113"


@pytest.mark.parametrize("name", ["../config.py", "review.py", "x.exe", ".hidden.js", "nothere.js"])
def test_only_shipped_ui_files_are_served(name: str) -> None:
    with pytest.raises(NotFoundError):
        review.ui_file(name)


def test_every_shipped_asset_is_served_with_its_type() -> None:
    assert review.ui_file("")[1].startswith("text/html")
    assert review.ui_file("app.js")[1].startswith("application/javascript")
    assert review.ui_file("style.css")[1].startswith("text/css")


def test_explorer_gets_buttons_for_study_and_series(runtime: Runtime) -> None:
    review.install(runtime)
    script = runtime.orthanc.explorer_js
    assert "addButton('#study', 'study')" in script and "addButton('#series', 'series')" in script


def test_no_exporter_without_syslog_configuration(runtime: Runtime) -> None:
    assert review.install(runtime) is None
    assert runtime.stop_actions == []
