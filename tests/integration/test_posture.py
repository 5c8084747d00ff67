"""The posture report of a real Orthanc: the REST route, its metrics, and the offline command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import pytest

from tests.support.server import REPO, SHIM_DIR, OrthancServer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(start_orthanc_module: Any) -> OrthancServer:
    return start_orthanc_module()


def checks_of(report: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {check["id"]: check for check in report["checks"]}


def test_posture_report_for_administrator(server: OrthancServer) -> None:
    response = server.get("/hardening/posture")
    assert response.status_code == 200
    report = response.json()
    assert report["mode"] == "enforce" and report["lockdown"] == []
    checks = checks_of(report)
    for check in checks.values():
        assert set(check) == {"id", "title", "status", "severity", "evidence", "remedy"}
        assert check["status"] in ("pass", "warn", "fail")
        assert check["severity"] in ("critical", "high", "medium", "low")
    assert not [c for c in checks.values() if c["status"] == "fail" and c["severity"] == "critical"]
    for check_id in ("http-tls", "tls-minimum-version", "https-certificate", "http-authentication",
                     "http-default-credentials", "dicom-tls", "dicom-tls-client-certificates",
                     "dicom-always-allow", "dicom-check-modality-host", "modalities-dicom-tls",
                     "storage-cache", "lua", "filesystem-write-routes"):
        assert checks[check_id]["status"] == "pass", checks[check_id]
    assert checks["https-client-certificates"]["status"] == "warn"  # SslVerifyPeers is false here


def test_report_never_shows_passwords(server: OrthancServer) -> None:
    text = server.get("/hardening/posture").text
    for password in server.credentials.values():
        assert password not in text


def test_libssl_check_passes_with_the_shim(server: OrthancServer) -> None:
    # The harness runs Orthanc with LD_LIBRARY_PATH=build/libssl-shim, as `make run` does.
    check = checks_of(server.get("/hardening/posture").json())["https-libssl"]
    assert check["status"] == "pass", check
    assert "libcivetweb" in check["evidence"] and str(SHIM_DIR) in check["evidence"]


@pytest.mark.attack
@pytest.mark.parametrize("user", ["user", "auditor"])
def test_posture_route_is_refused_to_non_administrators(server: OrthancServer, user: str) -> None:
    response = server.get("/hardening/posture", user=user)
    assert response.status_code == 403
    assert response.json()["error"] == "forbidden"


def test_posture_metrics_are_exported(server: OrthancServer) -> None:
    server.get("/hardening/posture")
    metrics = server.get("/tools/metrics-prometheus").text
    values = {
        line.split()[0]: float(line.split()[1])
        for line in metrics.splitlines()
        if line.startswith("hardening_") and len(line.split()) >= 2
    }
    assert "hardening_posture_failed_checks" in values
    assert 700 < values["hardening_certificate_days_left"] <= 825  # the test PKI's server certificate


def posture_command(config: str, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    env["PYTHONPATH"] = str(REPO / "plugin")
    return subprocess.run(
        [sys.executable, "-m", "orthanc_hardening", "posture", config, *extra],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )


def test_offline_report_matches_the_running_server(server: OrthancServer) -> None:
    result = posture_command(str(server.config_path), "--format", "json", "--ld-library-path", str(SHIM_DIR),
                             "--measure-tls")
    assert result.returncode == 0, result.stdout + result.stderr
    offline = checks_of(json.loads(result.stdout))
    online = checks_of(server.get("/hardening/posture").json())
    assert {k: v["status"] for k, v in offline.items()} == {k: v["status"] for k, v in online.items()}


def test_offline_report_detects_debian_libssl_crash_without_shim(server: OrthancServer) -> None:
    result = posture_command(str(server.config_path), "--color", "never")
    assert result.returncode == 1, result.stdout
    assert "FAIL    critical  https-libssl" in result.stdout
    assert "libssl-shim" in result.stdout and "make run" in result.stdout


def test_orthanc_without_the_shim_is_locked_down_with_the_fix_logged(start_orthanc: Any) -> None:
    # Without the shim, Debian's Orthanc would crash on the first HTTPS connection, so no
    # request is made: the start-up log must name the check and the fix.
    server = start_orthanc(env={"LD_LIBRARY_PATH": ""}, expect_failure=True)
    deadline = time.monotonic() + 60
    while "LOCKDOWN" not in server.log_text():
        assert server.returncode is None and time.monotonic() < deadline, server.log_tail()
        time.sleep(0.1)
    log = server.log_text()
    assert "LOCKDOWN: critical checks failed (https-libssl)" in log
    assert "SSL_get_peer_certificate" in log and "build/libssl-shim" in log
