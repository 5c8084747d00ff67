"""``tls.posture``: each check passes on a secure configuration and fails on the insecure one."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from orthanc_hardening.commands.devsetup import DevFiles
from orthanc_hardening.config import HardeningConfig, Mode
from orthanc_hardening.errors import ConfigError
from orthanc_hardening.tls.facts import FileFacts, HostFacts, LibsslFacts
from orthanc_hardening.tls.posture import (
    PostureReport,
    Severity,
    Status,
    check_certificate_files,
    files_to_inspect,
    inspect_posture,
)
from tests.unit.tls.conftest import NOW, leaf_pem, secure_config

STORAGE = Path("/srv/orthanc/storage")
HARDENING = HardeningConfig(
    data_directory=Path("/srv/orthanc/hardening"), signing_key=Path("/etc/orthanc/seal-key.pem")
)
CIVETWEB = "/lib/x86_64-linux-gnu/libcivetweb.so.1"


def facts_for(
    config: dict[str, Any],
    hardening: HardeningConfig | None = HARDENING,
    override: dict[Path, FileFacts] | None = None,
    libssl: LibsslFacts | None = None,
) -> HostFacts:
    """Facts as the host would give them: certificates read from the test PKI, private dirs."""
    files: dict[Path, FileFacts] = {}
    for path, read in files_to_inspect(config, hardening, Path("/etc/orthanc")).items():
        if path.exists():
            files[path] = FileFacts(exists=True, mode=0o644, readable=True, content=path.read_bytes() if read else None)
        elif path in (STORAGE, HARDENING.data_directory):
            files[path] = FileFacts(exists=True, is_directory=True, mode=0o700, readable=True)
        elif path == HARDENING.signing_key:
            files[path] = FileFacts(exists=True, mode=0o600, readable=True)
        else:
            files[path] = FileFacts(exists=False)
    files.update(override or {})
    return HostFacts(base_directory=Path("/etc/orthanc"), files=files, libssl=libssl)


def report_for(config: dict[str, Any], **kwargs: Any) -> PostureReport:
    hardening = kwargs.pop("hardening", HARDENING)
    return inspect_posture(config, hardening, facts_for(config, hardening, **kwargs), NOW)


@pytest.fixture
def secure(pki_files: DevFiles) -> dict[str, Any]:
    return secure_config(pki_files, STORAGE)


def statuses(report: PostureReport) -> dict[str, str]:
    return {c.id: c.status.value for c in report.checks}


def test_secure_configuration_has_no_failure(secure: dict[str, Any]) -> None:
    report = report_for(secure)
    assert report.failed == (), [c.to_json() for c in report.failed]
    assert report.certificate_days_left is not None and report.certificate_days_left > 300


def test_every_check_has_the_report_fields(secure: dict[str, Any]) -> None:
    for check in report_for(secure).checks:
        assert set(check.to_json()) == {"id", "title", "status", "severity", "evidence", "remedy"}
        assert check.title and check.evidence


def test_orthanc_defaults_fail_the_critical_checks() -> None:
    report = report_for({}, hardening=None)
    assert {c.id for c in report.critical_failures} == {"http-tls", "http-authentication", "dicom-tls"}
    assert statuses(report)["storage-cache"] == "fail"  # 128 MB by default
    assert statuses(report)["dicom-always-allow"] == "fail"  # DicomAlwaysAllowStore defaults to true


@pytest.mark.parametrize(
    ("change", "check_id", "severity"),
    [
        ({"SslEnabled": False}, "http-tls", Severity.CRITICAL),
        ({"AuthenticationEnabled": False}, "http-authentication", Severity.CRITICAL),
        ({"AuthenticationEnabled": None, "RemoteAccessAllowed": False}, "http-authentication", Severity.CRITICAL),
        ({"RegisteredUsers": {"orthanc": "orthanc"}}, "http-default-credentials", Severity.CRITICAL),
        ({"RegisteredUsers": {"admin": ""}}, "http-default-credentials", Severity.CRITICAL),
        ({"RegisteredUsers": {}}, "http-default-credentials", Severity.CRITICAL),
        ({"DicomTlsEnabled": False}, "dicom-tls", Severity.CRITICAL),
        ({"SslMinimumProtocolVersion": 2}, "tls-minimum-version", Severity.HIGH),
        ({"RegisteredUsers": {"bob": "short1"}}, "http-weak-passwords", Severity.HIGH),
        ({"RegisteredUsers": {"alice": "alice"}}, "http-weak-passwords", Severity.HIGH),
        ({"RegisteredUsers": {"carol": "Password123"}}, "http-weak-passwords", Severity.HIGH),
        ({"DicomTlsRemoteCertificateRequired": False}, "dicom-tls-client-certificates", Severity.HIGH),
        ({"DicomAlwaysAllowStore": True}, "dicom-always-allow", Severity.HIGH),
        ({"DicomAlwaysAllowMove": True}, "dicom-always-allow", Severity.HIGH),
        ({"DicomCheckModalityHost": False}, "dicom-check-modality-host", Severity.MEDIUM),
        ({"DicomModalities": {"CT": ["CT", "10.0.0.5", 104]}}, "modalities-dicom-tls", Severity.HIGH),
        ({"DicomModalities": {"CT": {"AET": "CT", "Host": "h", "Port": 1}}}, "modalities-dicom-tls", Severity.HIGH),
        ({"OrthancPeers": {"p": ["http://10.0.0.6:8042/"]}}, "peers-https", Severity.HIGH),
        ({"HttpsVerifyPeers": False}, "peers-https", Severity.HIGH),
        ({"DicomWeb": {"Servers": {"w": {"Url": "http://w/dicom-web/"}}}}, "dicomweb-servers-https", Severity.HIGH),
        ({"ExecuteLuaEnabled": True}, "lua", Severity.HIGH),
        ({"WebDavEnabled": True, "AuthenticationEnabled": False}, "webdav", Severity.HIGH),
        ({"RestApiWriteToFileSystemEnabled": True}, "filesystem-write-routes", Severity.HIGH),
        ({"MaximumStorageCacheSize": 64}, "storage-cache", Severity.HIGH),
    ],
)
def test_insecure_setting_fails_its_check(
    secure: dict[str, Any], change: dict[str, Any], check_id: str, severity: Severity
) -> None:
    config = {**secure, **change}
    config = {k: v for k, v in config.items() if v is not None}
    check = report_for(config).check(check_id)
    assert (check.status, check.severity) == (Status.FAIL, severity), check
    assert check.remedy


def test_password_never_appears_in_evidence(secure: dict[str, Any]) -> None:
    config = {**secure, "RegisteredUsers": {"orthanc": "orthanc", "bob": "hunter2x", "eve": ""}}
    report = report_for(config)
    text = repr([c.to_json() for c in report.checks])
    assert "hunter2x" not in text
    assert "'bob'" in report.check("http-weak-passwords").evidence
    assert "'orthanc'" in report.check("http-default-credentials").evidence


def test_peer_url_credentials_are_hidden(secure: dict[str, Any]) -> None:
    config = {**secure, "OrthancPeers": {"p": {"Url": "http://user:s3cretpw@10.0.0.6:8042/"}}}
    evidence = report_for(config).check("peers-https").evidence
    assert "s3cretpw" not in evidence and "10.0.0.6:8042" in evidence


def test_lua_scripts_are_a_warning(secure: dict[str, Any]) -> None:
    check = report_for({**secure, "LuaScripts": ["/etc/orthanc/route.lua"]}).check("lua")
    assert (check.status, check.severity) == (Status.WARN, Severity.MEDIUM)


def test_expired_server_certificate_is_critical(secure: dict[str, Any], ca: tuple, tmp_path: Path) -> None:
    expired = tmp_path / "expired.pem"
    expired.write_bytes(leaf_pem(ca, NOW - dt.timedelta(days=400), 365))
    report = report_for({**secure, "SslCertificate": str(expired)})
    check = report.check("https-certificate")
    assert check.is_critical_failure and "EXPIRED" in check.evidence
    assert report.certificate_days_left == -35


def test_certificate_expiring_soon_is_a_warning(secure: dict[str, Any], ca: tuple, tmp_path: Path) -> None:
    soon = tmp_path / "soon.pem"
    soon.write_bytes(leaf_pem(ca, NOW - dt.timedelta(days=80), 90))
    check = report_for({**secure, "SslCertificate": str(soon)}).check("https-certificate")
    assert (check.status, check.severity) == (Status.WARN, Severity.MEDIUM)
    assert "10 days left" in check.evidence


def test_expired_dicom_tls_certificate_is_critical(secure: dict[str, Any], ca: tuple, tmp_path: Path) -> None:
    expired = tmp_path / "dicom.pem"
    expired.write_bytes(leaf_pem(ca, NOW - dt.timedelta(days=400), 365))
    check = report_for({**secure, "DicomTlsCertificate": str(expired)}).check("dicom-tls-certificate")
    assert check.is_critical_failure


def test_unreadable_certificate_fails_the_check(secure: dict[str, Any]) -> None:
    path = Path(secure["SslCertificate"])
    report = report_for(secure, override={path: FileFacts(exists=True, mode=0o600, readable=False)})
    assert report.check("https-certificate").status is Status.FAIL


def test_world_readable_storage_and_key_fail(secure: dict[str, Any]) -> None:
    report = report_for(
        secure,
        override={
            STORAGE: FileFacts(exists=True, is_directory=True, mode=0o755, readable=True),
            HARDENING.signing_key: FileFacts(exists=True, mode=0o644, readable=True),
        },
    )
    assert "0755" in report.check("storage-permissions").evidence
    assert report.check("storage-permissions").status is Status.FAIL
    assert report.check("signing-key-permissions").status is Status.FAIL


def test_group_readable_key_is_a_warning(secure: dict[str, Any]) -> None:
    report = report_for(secure, override={HARDENING.signing_key: FileFacts(exists=True, mode=0o640, readable=True)})
    assert report.check("signing-key-permissions").status is Status.WARN


def test_monitor_mode_is_a_warning(secure: dict[str, Any]) -> None:
    monitor = HardeningConfig(
        mode=Mode.MONITOR, data_directory=HARDENING.data_directory, signing_key=HARDENING.signing_key
    )
    assert report_for(secure, hardening=monitor).check("hardening-mode").status is Status.WARN


def test_unsealed_policy_warns_while_a_migration_serves_unsealed_data(secure: dict[str, Any]) -> None:
    from orthanc_hardening.config import UnsealedPolicy

    base = {"data_directory": HARDENING.data_directory, "signing_key": HARDENING.signing_key}
    assert report_for(secure, hardening=HardeningConfig(**base)).check("unsealed-policy").status is Status.PASS
    fresh = HardeningConfig(unsealed_policy=UnsealedPolicy.REFUSE, unsealed_policy_decided=True, **base)
    check = report_for(secure, hardening=fresh).check("unsealed-policy")
    assert check.status is Status.PASS and "decided at start" in check.evidence
    migrating = HardeningConfig(unsealed_policy=UnsealedPolicy.SERVE_AND_FLAG, unsealed_policy_decided=True, **base)
    check = report_for(secure, hardening=migrating).check("unsealed-policy")
    assert check.status is Status.WARN and "not sealed yet" in check.evidence and "seal-existing" in check.remedy
    configured = HardeningConfig(unsealed_policy=UnsealedPolicy.SERVE_AND_FLAG, unsealed_policy_configured=True,
                                 **base)
    assert "set in the configuration" in report_for(secure, hardening=configured).check("unsealed-policy").evidence


def test_debian_civetweb_with_plain_openssl3_is_critical(secure: dict[str, Any]) -> None:
    libssl = LibsslFacts(civetweb=CIVETWEB, loaded=True, library="/usr/lib/libssl.so.3", has_peer_certificate=False)
    check = report_for(secure, libssl=libssl).check("https-libssl")
    assert check.is_critical_failure
    assert "SSL_get_peer_certificate" in check.evidence
    assert "build/libssl-shim" in check.remedy and "make run" in check.remedy


def test_libssl_shim_passes(secure: dict[str, Any]) -> None:
    libssl = LibsslFacts(civetweb=CIVETWEB, loaded=True, library="/repo/build/libssl-shim/libssl.so",
                         has_peer_certificate=True)
    assert report_for(secure, libssl=libssl).check("https-libssl").status is Status.PASS


def test_missing_libssl_is_critical(secure: dict[str, Any]) -> None:
    libssl = LibsslFacts(civetweb=CIVETWEB, loaded=False, error="libssl.so: cannot open shared object file")
    assert report_for(secure, libssl=libssl).check("https-libssl").is_critical_failure


def test_own_civetweb_build_is_not_affected(secure: dict[str, Any]) -> None:
    libssl = LibsslFacts(civetweb="", loaded=True, has_peer_certificate=False)
    assert report_for(secure, libssl=libssl).check("https-libssl").status is Status.PASS


def test_libssl_check_does_not_apply_without_https(secure: dict[str, Any]) -> None:
    libssl = LibsslFacts(civetweb=CIVETWEB, loaded=True, has_peer_certificate=False)
    assert report_for({**secure, "SslEnabled": False}, libssl=libssl).check("https-libssl").status is Status.PASS


def test_relative_certificate_path_resolves_against_configuration_directory(secure: dict[str, Any]) -> None:
    wanted = files_to_inspect({**secure, "SslCertificate": "tls/server.pem"}, None, Path("/etc/orthanc"))
    assert Path("/etc/orthanc/tls/server.pem") in wanted


def test_naive_now_is_a_caller_bug(secure: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        inspect_posture(secure, None, facts_for(secure), NOW.replace(tzinfo=None))


# -- start-up: a configured certificate that cannot be used is a configuration error ------


def test_missing_server_certificate_is_a_config_error(secure: dict[str, Any]) -> None:
    config = {**secure, "SslCertificate": "/nonexistent/server.pem"}
    with pytest.raises(ConfigError, match="does not exist") as caught:
        check_certificate_files(config, facts_for(config))
    assert caught.value.key == "SslCertificate"


def test_missing_dicom_tls_key_is_a_config_error(secure: dict[str, Any]) -> None:
    config = {**secure, "DicomTlsPrivateKey": "/nonexistent/dicom.key"}
    with pytest.raises(ConfigError) as caught:
        check_certificate_files(config, facts_for(config))
    assert caught.value.key == "DicomTlsPrivateKey"


def test_certificate_file_that_is_not_a_certificate_is_a_config_error(secure: dict[str, Any]) -> None:
    path = Path(secure["SslCertificate"])
    override = {path: FileFacts(exists=True, mode=0o600, readable=True, content=b"not a certificate")}
    with pytest.raises(ConfigError, match="no PEM certificate") as caught:
        check_certificate_files(secure, facts_for(secure, override=override))
    assert caught.value.key == "SslCertificate"


def test_certificate_files_of_disabled_features_are_not_required(secure: dict[str, Any]) -> None:
    config = {**secure, "SslEnabled": False, "SslCertificate": "/nonexistent.pem", "DicomServerEnabled": False,
              "DicomTlsCertificate": "/nonexistent.crt"}
    check_certificate_files(config, facts_for(config))


def test_modality_allowed_every_dicom_service_is_a_warning(secure: dict[str, Any]) -> None:
    modalities = {"OPEN": {"AET": "OPEN", "Host": "10.0.0.9", "Port": 104, "UseDicomTls": True},
                  "CT": {"AET": "CT", "Host": "10.0.0.8", "Port": 104, "UseDicomTls": True, "AllowFind": False,
                         "AllowMove": False, "AllowGet": False, "AllowFindWorklist": False}}
    check = report_for({**secure, "DicomModalities": modalities}).check("modality-permissions")
    assert check.status is Status.WARN and "OPEN" in check.evidence and "CT" not in check.evidence.split(": ")[-1]
    restricted = report_for({**secure, "DicomModalities": {"CT": modalities["CT"]}}).check("modality-permissions")
    assert restricted.status is Status.PASS


def test_missing_permission_table_is_a_warning(secure: dict[str, Any]) -> None:
    assert report_for(secure).check("route-permissions").status is Status.WARN
    from orthanc_hardening.config import load_config
    from tests.support.server import PERMISSIONS

    table = load_config({"Hardening": {"Permissions": PERMISSIONS}})
    hardening = HardeningConfig(data_directory=HARDENING.data_directory, signing_key=HARDENING.signing_key,
                                permissions=table.permissions)
    check = report_for(secure, hardening=hardening).check("route-permissions")
    assert check.status is Status.PASS and "holding all: admin" in check.evidence
