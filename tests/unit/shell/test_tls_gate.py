"""``shell.tls_gate``: lockdown, outgoing enforcement and the posture route, through FakeOrthanc."""

from __future__ import annotations

import base64
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from orthanc_hardening.audit.event import EventCode
from orthanc_hardening.commands.devsetup import DevFiles, ensure_pki
from orthanc_hardening.config import load_config
from orthanc_hardening.errors import AccessDeniedError, ConfigError
from orthanc_hardening.shell import tls_gate
from orthanc_hardening.shell.callbacks import install_callbacks
from orthanc_hardening.shell.guard import DIMSE_NOT_AUTHORIZED
from orthanc_hardening.shell.metrics import Metrics
from orthanc_hardening.shell.runtime import Runtime
from orthanc_hardening.tls.facts import TLSMeasurement
from tests.unit.fakes import ChangeType, FakeOrthanc, FakeOutput, MemoryAuditSink, ResourceType
from tests.unit.tls.conftest import NOW, secure_config

PLAIN = {"AET": "PLAIN", "Host": "127.0.0.1", "Port": 11112, "UseDicomTls": False}
TLS = {"AET": "NEWTLS", "Host": "127.0.0.1", "Port": 11113, "UseDicomTls": True}


def basic(user: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{user}:pw".encode()).decode()}


def make_runtime(config: dict[str, Any], tmp_path: Path, mode: str = "enforce") -> Runtime:
    config = {
        **config,
        "Hardening": {"Mode": mode, "DataDirectory": str(tmp_path / "h"), "Administrators": ["admin"]},
    }
    orthanc = FakeOrthanc(config)
    runtime = Runtime(
        orthanc=orthanc,
        config=load_config(config),
        orthanc_config=config,
        metrics=Metrics(orthanc),
        audit=MemoryAuditSink(),
        clock=lambda: NOW,
    )
    return runtime


class StorageStandIn:
    """What the DIMSE side of the lockdown needs from the storage area: its read hooks."""

    def __init__(self) -> None:
        self.read_hooks: list[Any] = []


STARTED: dict[int, tuple[tls_gate.TLSGate, StorageStandIn]] = {}


MEASURED = {
    "https": TLSMeasurement("127.0.0.1:8042", accepted=(("TLS 1.2 forward-secret", "TLSv1.2",
                                                       "ECDHE-RSA-AES128-GCM-SHA256"),),
                            refused=("TLS 1.0", "TLS 1.1", "TLS 1.2 without forward secrecy")),
    "dicom": TLSMeasurement("127.0.0.1:4242", accepted=(("TLS 1.1", "TLSv1.1", "AES128-SHA"),), weak=("TLS 1.1",)),
}


def start(runtime: Runtime) -> FakeOrthanc:
    # No socket in unit tests: the measurement of the running endpoints is given.
    gate = tls_gate.install_early(runtime, measure=lambda _config, _base: dict(MEASURED))
    storage = StorageStandIn()
    tls_gate.install_dimse(runtime, storage)  # type: ignore[arg-type]
    STARTED[id(runtime)] = (gate, storage)
    install_callbacks(runtime)
    orthanc: FakeOrthanc = runtime.orthanc
    assert orthanc.on_change is not None
    orthanc.on_change(ChangeType.ORTHANC_STARTED, ResourceType.NONE, "")  # as Orthanc does once up
    return orthanc


def call(
    orthanc: FakeOrthanc, pattern: str, uri: str, method: str = "POST", user: str = "admin", **kw: Any
) -> FakeOutput:
    out = FakeOutput()
    orthanc.routes[pattern](out, uri, method=method, headers=basic(user), groups=kw.pop("groups", ()), **kw)
    return out


def http(orthanc: FakeOrthanc, uri: str, method: int = 2, user: str = "admin") -> bool:
    assert orthanc.http_filter is not None
    return orthanc.http_filter(uri, method=method, ip="127.0.0.1", headers=basic(user))


@pytest.fixture(scope="module")
def pki_files(tmp_path_factory: pytest.TempPathFactory) -> DevFiles:
    files = DevFiles(tmp_path_factory.mktemp("gate-pki"))
    ensure_pki(files, NOW)
    return files


@pytest.fixture
def secure(pki_files: DevFiles, tmp_path: Path) -> dict[str, Any]:
    storage = tmp_path / "storage"
    storage.mkdir(mode=0o700)
    config = secure_config(pki_files, storage)
    config["DicomModalities"] = {**config["DicomModalities"], "PLAIN": PLAIN}
    config["OrthancPeers"] = {**config["OrthancPeers"], "clearpeer": ["http://127.0.0.1:8042/"]}
    return config


# -- lockdown ------------------------------------------------------------------------------


@pytest.mark.attack
def test_plaintext_http_configuration_locks_down_every_route(
    secure: dict[str, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    runtime = make_runtime({**secure, "SslEnabled": False, "DicomTlsEnabled": False}, tmp_path)
    orthanc = start(runtime)
    assert runtime.lockdown == ("http-tls", "dicom-tls")
    assert list(orthanc.routes) == [tls_gate.LOCKDOWN_ROUTE]
    for uri in ("/system", "/app/explorer.html", "/instances", "/hardening/posture"):
        out = call(orthanc, tls_gate.LOCKDOWN_ROUTE, uri, method="GET")
        body = out.json()
        assert out.status == 403 and body["failed_checks"] == ["http-tls", "dicom-tls"]
        assert body["error"] == "forbidden" and "http-tls" in body["detail"]
    assert http(orthanc, "/system", 1)  # reaches the catch-all, which answers JSON
    assert not http(orthanc, "/dicom-web/studies", 1)  # another plugin's route: refused in the filter
    assert any("LOCKDOWN" in r.message and r.levelname == "ERROR" for r in caplog.records)


@pytest.mark.attack
def test_plaintext_association_store_is_refused_in_lockdown(secure: dict[str, Any], tmp_path: Path) -> None:
    runtime = make_runtime({**secure, "DicomTlsEnabled": False}, tmp_path)
    orthanc = start(runtime)
    assert orthanc.cstore_filter is not None and orthanc.cstore_filter(object()) == DIMSE_NOT_AUTHORIZED
    with pytest.raises(AccessDeniedError, match="lockdown"):
        STARTED[id(runtime)][1].read_hooks[0](object())
    assert runtime.audit.last().event is EventCode.SECURITY_ALERT  # type: ignore[attr-defined]


def test_monitor_mode_does_not_lock_down(secure: dict[str, Any], tmp_path: Path) -> None:
    runtime = make_runtime({**secure, "SslEnabled": False}, tmp_path, mode="monitor")
    orthanc = start(runtime)
    assert runtime.lockdown == ()
    assert orthanc.cstore_filter is not None and orthanc.cstore_filter(object()) == 0
    assert tls_gate.POSTURE_ROUTE in orthanc.routes
    assert orthanc.metrics["hardening_posture_failed_checks"] >= 1


def test_default_credentials_lock_down(secure: dict[str, Any], tmp_path: Path) -> None:
    runtime = make_runtime({**secure, "RegisteredUsers": {"orthanc": "orthanc"}}, tmp_path)
    start(runtime)
    assert runtime.lockdown == ("http-default-credentials",)


def test_missing_certificate_refuses_to_start(secure: dict[str, Any], tmp_path: Path) -> None:
    runtime = make_runtime({**secure, "SslCertificate": str(tmp_path / "gone.pem")}, tmp_path)
    with pytest.raises(ConfigError) as caught:
        tls_gate.install_early(runtime)
    assert caught.value.key == "SslCertificate"


# -- posture route -------------------------------------------------------------------------


def test_posture_route_for_administrators(secure: dict[str, Any], tmp_path: Path) -> None:
    runtime = make_runtime(secure, tmp_path)
    orthanc = start(runtime)
    orthanc.rest[("GET", "/modalities?expand")] = {"TLSMOD": secure["DicomModalities"]["TLSMOD"]}
    orthanc.rest[("GET", "/peers?expand")] = {}
    out = call(orthanc, tls_gate.POSTURE_ROUTE, "/hardening/posture", method="GET")
    report = out.json()
    assert out.status == 200 and report["mode"] == "enforce" and report["lockdown"] == []
    checks = {c["id"]: c for c in report["checks"]}
    # The live list (one secure modality) replaces the configuration's (with PLAIN).
    assert checks["modalities-dicom-tls"]["status"] == "pass"
    assert set(checks["http-tls"]) == {"id", "title", "status", "severity", "evidence", "remedy"}
    assert orthanc.metrics["hardening_certificate_days_left"] > 300
    # What the running endpoints accepted, as measured.
    assert checks["https-tls-measured"]["status"] == "pass"
    assert checks["dicom-tls-measured"]["status"] == "fail"
    assert "accepted TLS 1.1" in checks["dicom-tls-measured"]["evidence"]


@pytest.mark.attack
def test_posture_route_refuses_non_administrators(secure: dict[str, Any], tmp_path: Path) -> None:
    orthanc = start(make_runtime(secure, tmp_path))
    out = call(orthanc, tls_gate.POSTURE_ROUTE, "/hardening/posture", method="GET", user="user")
    assert out.status == 403


# -- outgoing enforcement ------------------------------------------------------------------


@pytest.mark.attack
def test_store_to_plaintext_modality_is_refused_with_json(secure: dict[str, Any], tmp_path: Path) -> None:
    runtime = make_runtime(secure, tmp_path)
    orthanc = start(runtime)
    assert http(orthanc, "/modalities/PLAIN/store")  # the override route answers
    pattern = next(p for p in orthanc.routes if p.startswith("/modalities/PLAIN/"))
    out = call(orthanc, pattern, "/modalities/PLAIN/store")
    assert out.status == 403 and out.json()["modality"] == "PLAIN"
    assert runtime.audit.last().event is EventCode.SECURITY_ALERT  # type: ignore[attr-defined]
    assert not orthanc.rest_calls  # nothing was forwarded to Orthanc


@pytest.mark.attack
def test_store_to_http_peer_is_refused_with_json(secure: dict[str, Any], tmp_path: Path) -> None:
    orthanc = start(make_runtime(secure, tmp_path))
    pattern = next(p for p in orthanc.routes if p.startswith("/peers/clearpeer/"))
    out = call(orthanc, pattern, "/peers/clearpeer/store")
    assert out.status == 403 and out.json()["peer"] == "clearpeer"


def test_store_to_tls_modality_passes_the_gate(secure: dict[str, Any], tmp_path: Path) -> None:
    orthanc = start(make_runtime(secure, tmp_path))
    assert http(orthanc, "/modalities/TLSMOD/store")
    assert http(orthanc, "/peers/tlspeer/store")


@pytest.mark.attack
def test_send_to_unknown_destination_is_refused_after_refresh(secure: dict[str, Any], tmp_path: Path) -> None:
    runtime = make_runtime(secure, tmp_path)
    orthanc = start(runtime)
    orthanc.rest[("GET", "/modalities?expand")] = {"SNEAKY": PLAIN}
    orthanc.rest[("GET", "/peers?expand")] = {}
    assert not http(orthanc, "/modalities/SNEAKY/store")
    assert ("GET", "/modalities?expand", None) in orthanc.rest_calls
    assert runtime.metrics.value("tls_violations") == 1


@pytest.mark.attack
def test_creating_plaintext_modality_is_refused(secure: dict[str, Any], tmp_path: Path) -> None:
    orthanc = start(make_runtime(secure, tmp_path))
    out = call(orthanc, "/modalities/([^/]+)/?", "/modalities/EVIL", method="PUT",
               groups=("EVIL",), body=json.dumps(PLAIN).encode())
    assert out.status == 403 and out.json()["modality"] == "EVIL"
    assert not orthanc.rest_calls


def test_creating_tls_modality_is_forwarded_and_then_usable(secure: dict[str, Any], tmp_path: Path) -> None:
    orthanc = start(make_runtime(secure, tmp_path))
    orthanc.rest[("PUT", "/modalities/NEWTLS")] = {}
    out = call(orthanc, "/modalities/([^/]+)/?", "/modalities/NEWTLS", method="PUT",
               groups=("NEWTLS",), body=json.dumps(TLS).encode())
    assert out.status == 200 and orthanc.rest_calls[-1][:2] == ("PUT", "/modalities/NEWTLS")
    assert http(orthanc, "/modalities/NEWTLS/store")


def test_modality_get_and_delete_are_forwarded(secure: dict[str, Any], tmp_path: Path) -> None:
    orthanc = start(make_runtime(secure, tmp_path))
    orthanc.rest[("GET", "/modalities/TLSMOD")] = ["echo", "store"]
    orthanc.rest[("DELETE", "/modalities/TLSMOD")] = b""
    assert call(orthanc, "/modalities/([^/]+)/?", "/modalities/TLSMOD", method="GET").status == 200
    assert call(orthanc, "/modalities/([^/]+)/?", "/modalities/TLSMOD", method="DELETE").status == 200


def test_core_error_is_passed_on(secure: dict[str, Any], tmp_path: Path) -> None:
    orthanc = start(make_runtime(secure, tmp_path))

    class OrthancException(Exception):
        pass

    orthanc.rest[("GET", "/modalities/NOPE")] = OrthancException(17, "Unknown resource")
    out = call(orthanc, "/modalities/([^/]+)/?", "/modalities/NOPE", method="GET")
    assert out.status == 404


@pytest.mark.attack
@pytest.mark.parametrize(("pattern", "uri"), [
    ("/tools/execute-script", "/tools/execute-script"),
    ("/instances/([^/]+)/export", "/instances/abc/export"),
])
def test_code_execution_and_filesystem_routes_are_refused(
    secure: dict[str, Any], tmp_path: Path, pattern: str, uri: str
) -> None:
    orthanc = start(make_runtime(secure, tmp_path))
    assert http(orthanc, uri)  # the override answers JSON
    out = call(orthanc, pattern, uri)
    assert out.status == 403 and out.json()["error"] == "forbidden"


def test_monitor_mode_logs_and_counts_but_lets_through(
    secure: dict[str, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    runtime = make_runtime(secure, tmp_path, mode="monitor")
    orthanc = start(runtime)
    assert not any(p.startswith("/modalities/PLAIN/") for p in orthanc.routes)
    assert "/tools/execute-script" not in orthanc.routes
    assert http(orthanc, "/modalities/PLAIN/store")
    assert http(orthanc, "/tools/execute-script")
    assert runtime.metrics.value("tls_violations") == 2
    assert sum("would refuse" in r.message and r.levelname == "WARNING" for r in caplog.records) == 2
    orthanc.rest[("PUT", "/modalities/EVIL")] = {}
    out = call(orthanc, "/modalities/([^/]+)/?", "/modalities/EVIL", method="PUT",
               groups=("EVIL",), body=json.dumps(PLAIN).encode())
    assert out.status == 200


def test_clock_is_the_runtime_clock(secure: dict[str, Any], tmp_path: Path) -> None:
    runtime = make_runtime(secure, tmp_path)
    runtime.clock = lambda: NOW + dt.timedelta(days=4000)  # long after the certificates expire
    start(runtime)
    assert "https-certificate" in runtime.lockdown


@pytest.mark.attack
def test_percent_encoded_name_of_plaintext_modality_is_refused_by_the_gate(
    secure: dict[str, Any], tmp_path: Path
) -> None:
    orthanc = start(make_runtime(secure, tmp_path))
    # The JSON override matches only the literal name; any other spelling is refused here.
    assert not http(orthanc, "/modalities/PL%41IN/store")


@pytest.mark.attack
def test_dicomweb_server_over_http_is_refused_by_the_gate(secure: dict[str, Any], tmp_path: Path) -> None:
    config = {**secure, "DicomWeb": {"Servers": {"clearweb": ["http://127.0.0.1:8042/dicom-web/"]}}}
    orthanc = start(make_runtime(config, tmp_path))
    assert not any(p.startswith("/dicom-web/") for p in orthanc.routes)
    assert not http(orthanc, "/dicom-web/servers/clearweb/stow")


@pytest.mark.attack
def test_move_target_without_tls_is_refused(secure: dict[str, Any], tmp_path: Path) -> None:
    runtime = make_runtime(secure, tmp_path)
    start(runtime)
    policy = STARTED[id(runtime)][0].outgoing
    policy.check_modality("TLSMOD")
    with pytest.raises(AccessDeniedError, match="PLAIN"):
        policy.check_modality("PLAIN")


def test_move_target_without_tls_is_only_logged_in_monitor_mode(secure: dict[str, Any], tmp_path: Path) -> None:
    runtime = make_runtime(secure, tmp_path, mode="monitor")
    start(runtime)
    STARTED[id(runtime)][0].outgoing.check_modality("PLAIN")
    assert runtime.metrics.value("tls_violations") == 1


def test_certificate_metric_counts_down_at_each_scrape(secure: dict[str, Any], tmp_path: Path) -> None:
    runtime = make_runtime(secure, tmp_path)
    orthanc = start(runtime)
    first = orthanc.metrics["hardening_certificate_days_left"]
    runtime.clock = lambda: NOW + dt.timedelta(days=10)
    assert http(orthanc, tls_gate.METRICS_ROUTE, method=1)
    assert orthanc.metrics["hardening_certificate_days_left"] == first - 10
