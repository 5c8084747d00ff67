"""The security posture of an Orthanc configuration: one result per check.

Pure: ``inspect_posture`` reads the Orthanc configuration mapping, the parsed ``Hardening``
section and the host facts gathered by ``services/host_probe.py`` (file modes, certificate bytes, the
libssl probe), and the time ``now``. It never raises on a weak configuration: it reports.
``check_certificate_files`` is the raising counterpart for start-up (a configured certificate
that cannot be read is a configuration error). Evidence never carries a password or key.

Orthanc's own defaults apply to absent keys (Orthanc 1.10's ``Configuration.json``), so a
minimal configuration is judged as Orthanc would run it.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orthanc_hardening.config import HardeningConfig, Mode, UnsealedPolicy, database_transport_problem, redact_url
from orthanc_hardening.errors import ConfigError
from orthanc_hardening.tls.certificates import RENEWAL_WARNING_DAYS, CertificateInfo, inspect_certificate
from orthanc_hardening.tls.enforcement import Destination, modality_destination, peer_destination
from orthanc_hardening.tls.facts import HostFacts


class Status(enum.Enum):
    """Outcome of one check."""

    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"


class Severity(enum.Enum):
    """How bad a failure of the check is; ``CRITICAL`` failures lock the server down."""

    CRITICAL = "critical"
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"


@dataclass(frozen=True, slots=True)
class Check:
    """The result of one posture check."""

    id: str
    title: str
    status: Status
    severity: Severity
    evidence: str
    remedy: str = ""

    @property
    def is_critical_failure(self) -> bool:
        return self.status is Status.FAIL and self.severity is Severity.CRITICAL

    def to_json(self) -> dict[str, str]:
        return {
            "id": self.id,
            "title": self.title,
            "status": self.status.value,
            "severity": self.severity.value,
            "evidence": self.evidence,
            "remedy": self.remedy,
        }


@dataclass(frozen=True, slots=True)
class PostureReport:
    """Every check, in a stable order, plus the figures the metrics export."""

    checks: tuple[Check, ...]
    certificate_days_left: int | None = None
    # When the soonest-expiring server certificate expires (for the metric between reports).
    certificate_not_after: dt.datetime | None = None

    @property
    def failed(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.status is Status.FAIL)

    @property
    def critical_failures(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.is_critical_failure)

    def check(self, check_id: str) -> Check:
        """Return the check with this id.

        Raises:
            KeyError: no such check (a caller bug).
        """
        for item in self.checks:
            if item.id == check_id:
                return item
        raise KeyError(check_id)

    def to_json(self, mode: str, lockdown: Iterable[str]) -> dict[str, Any]:
        return {
            "mode": mode,
            "lockdown": list(lockdown),
            "failed": len(self.failed),
            "certificate_days_left": self.certificate_days_left,
            "checks": [c.to_json() for c in self.checks],
        }


# Orthanc 1.10 defaults for the keys we read (from `Orthanc --config=FILE`).
ORTHANC_DEFAULTS: Mapping[str, Any] = {
    "HttpServerEnabled": True,
    "SslEnabled": False,
    "SslCertificate": "certificate.pem",
    "SslMinimumProtocolVersion": 4,
    "SslVerifyPeers": False,
    "RemoteAccessAllowed": False,
    "RegisteredUsers": {},
    "DicomServerEnabled": True,
    "DicomTlsEnabled": False,
    "DicomTlsRemoteCertificateRequired": True,
    "DicomAlwaysAllowEcho": True,
    "DicomAlwaysAllowStore": True,
    "DicomAlwaysAllowFind": False,
    "DicomAlwaysAllowFindWorklist": False,
    "DicomAlwaysAllowGet": False,
    "DicomAlwaysAllowMove": False,
    "DicomCheckModalityHost": False,
    "DicomModalities": {},
    "OrthancPeers": {},
    "HttpsVerifyPeers": True,
    "LuaScripts": [],
    "ExecuteLuaEnabled": False,
    "WebDavEnabled": True,
    "RestApiWriteToFileSystemEnabled": False,
    "MaximumStorageCacheSize": 128,
    "StorageDirectory": "OrthancStorage",
}

# Orthanc's SslMinimumProtocolVersion values (civetweb's ssl_protocol_version):
# 0 SSL2+, 1 SSL3+, 2 TLS1.0+, 3 TLS1.1+, 4 TLS1.2 only.
TLS_VERSIONS = {0: "SSL 2.0", 1: "SSL 3.0", 2: "TLS 1.0", 3: "TLS 1.1", 4: "TLS 1.2"}
MINIMUM_TLS_SETTING = 4

MINIMUM_PASSWORD_LENGTH = 12
DEFAULT_CREDENTIALS = (("orthanc", "orthanc"),)
# Passwords found at the top of every breached-password list, and this domain's favourites.
COMMON_PASSWORDS = frozenset(
    {
        "123456", "12345678", "123456789", "1234567890", "111111", "000000", "abc123", "qwerty",
        "qwertyuiop", "password", "password1", "password123", "passw0rd", "p@ssw0rd", "letmein",
        "welcome", "welcome1", "iloveyou", "admin", "admin123", "administrator", "root", "toor",
        "secret", "changeme", "changeit", "guest", "test", "test123", "orthanc", "orthanc123",
        "pacs", "dicom", "radiology", "hospital", "doctor", "monkey", "dragon", "football",
    }
)

LIBSSL_SHIM_REMEDY = (
    "Debian's civetweb 1.15 calls SSL_get_peer_certificate, which OpenSSL 3 no longer exports, and "
    "Orthanc crashes on the first HTTPS connection. Build the shim library (build/libssl-shim/libssl.so, "
    "made by `make run`) and start Orthanc with LD_LIBRARY_PATH=build/libssl-shim, as `make run` does."
)


def setting(config: Mapping[str, Any], key: str) -> Any:
    """Return an Orthanc option, or Orthanc's default when it is absent."""
    return config.get(key, ORTHANC_DEFAULTS.get(key))


def _enabled(config: Mapping[str, Any], key: str) -> bool:
    value = setting(config, key)
    return value if isinstance(value, bool) else bool(value)


def authentication_enabled(config: Mapping[str, Any]) -> bool:
    """Return whether Orthanc asks for a password (it defaults to ``RemoteAccessAllowed``)."""
    if "AuthenticationEnabled" in config:
        return _enabled(config, "AuthenticationEnabled")
    return _enabled(config, "RemoteAccessAllowed")


def certificate_paths(config: Mapping[str, Any]) -> dict[str, str]:
    """Return the certificate files Orthanc will load, keyed by option name."""
    paths: dict[str, str] = {}
    if _enabled(config, "HttpServerEnabled") and _enabled(config, "SslEnabled"):
        paths["SslCertificate"] = str(setting(config, "SslCertificate"))
    if _enabled(config, "DicomServerEnabled") and _enabled(config, "DicomTlsEnabled"):
        for key in ("DicomTlsCertificate", "DicomTlsPrivateKey", "DicomTlsTrustedCertificates"):
            if key in config:
                paths[key] = str(config[key])
    return paths


def files_to_inspect(config: Mapping[str, Any], hardening: HardeningConfig | None, base: Path) -> dict[Path, bool]:
    """Return the paths whose facts the checks need, each with whether to read its content.

    Certificates are read (the private key in the same file is never parsed); directories and
    the signing key are only stat'ed.
    """
    facts = HostFacts(base_directory=base)
    wanted: dict[Path, bool] = {}
    for key, value in certificate_paths(config).items():
        wanted[facts.resolve(value)] = key != "DicomTlsPrivateKey"
    for directory in _data_directories(config, hardening, facts):
        wanted.setdefault(directory, False)
    if hardening is not None and not hardening.signing_key_in_token:
        wanted.setdefault(hardening.signing_key, False)
        for candidate in passphrase_file_candidates(hardening.signing_key):
            wanted.setdefault(candidate, False)
    return wanted


def passphrase_file_candidates(signing_key: Path) -> list[Path]:
    """Files beside the signing key that would hold its passphrase (``make run`` writes ``passphrase``)."""
    return [signing_key.parent / "passphrase", signing_key.parent / "passphrase.txt",
            signing_key.with_name(signing_key.name + ".pass"), signing_key.with_name(signing_key.name + ".passphrase")]


def _data_directories(config: Mapping[str, Any], hardening: HardeningConfig | None, facts: HostFacts) -> list[Path]:
    storage = facts.resolve(str(setting(config, "StorageDirectory")))
    directories = [storage]
    index = facts.resolve(str(config.get("IndexDirectory", setting(config, "StorageDirectory"))))
    if index != storage:
        directories.append(index)
    if hardening is not None:
        directories.append(hardening.data_directory)
    return directories


def check_certificate_files(config: Mapping[str, Any], facts: HostFacts) -> None:
    """Check that every certificate file Orthanc is configured to use exists and parses.

    Args:
        config: the Orthanc configuration.
        facts: host facts with the certificate files read (``files_to_inspect``).

    Raises:
        ConfigError: a file is missing, unreadable or holds no parseable certificate; ``key``
            is the Orthanc option (``SslCertificate``).
    """
    for key, value in certificate_paths(config).items():
        path = facts.resolve(value)
        found = facts.file(path)
        if not found.exists:
            raise ConfigError(key, f"file {path} does not exist")
        if not found.readable:
            raise ConfigError(key, f"file {path} is not readable by the Orthanc process")
        if key != "DicomTlsPrivateKey":
            inspect_certificate(found.content or b"", key)


def inspect_posture(
    config: Mapping[str, Any],
    hardening: HardeningConfig | None,
    facts: HostFacts,
    now: dt.datetime,
) -> PostureReport:
    """Run every posture check over a configuration.

    Args:
        config: the whole Orthanc configuration (JSON object).
        hardening: the parsed ``Hardening`` section, or ``None`` when the plugin is not
            configured (the offline command on a plain Orthanc configuration).
        facts: host facts gathered for ``files_to_inspect(config, hardening, ...)``.
        now: the current time, timezone-aware.

    Returns:
        The report; checks appear in a fixed order.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    checks: list[Check] = []
    days_left: list[int] = []
    expiries: list[dt.datetime] = []
    http_on = _enabled(config, "HttpServerEnabled")
    https_on = http_on and _enabled(config, "SslEnabled")
    checks.append(_http_tls(http_on, https_on))
    checks.append(_libssl(https_on, facts))
    checks.append(_tls_version(config, https_on))
    checks.append(_tls_measured("https-tls-measured", "HTTPS accepts only TLS 1.2+ with forward secrecy (measured)",
                                "https", https_on, facts, HTTPS_TLS_REMEDY))
    checks.extend(
        _certificate_checks(
            "https-certificate",
            "HTTPS server certificate",
            "SslCertificate",
            config,
            facts,
            now,
            https_on,
            days_left,
            expiries,
        )
    )
    checks.append(_client_certificates(config, https_on))
    auth_on = authentication_enabled(config)
    checks.append(_authentication(config, http_on, auth_on))
    checks.extend(_credentials(config, http_on, auth_on))
    dicom_on = _enabled(config, "DicomServerEnabled")
    dicom_tls_on = dicom_on and _enabled(config, "DicomTlsEnabled")
    checks.append(_dicom_tls(dicom_on, dicom_tls_on))
    checks.extend(
        _certificate_checks(
            "dicom-tls-certificate",
            "DICOM TLS certificate",
            "DicomTlsCertificate",
            config,
            facts,
            now,
            dicom_tls_on,
            days_left,
            expiries,
        )
    )
    checks.append(_dicom_client_certificates(config, dicom_tls_on))
    checks.append(_tls_measured("dicom-tls-measured",
                                "DICOM TLS accepts only TLS 1.2+ with forward secrecy (measured)", "dicom",
                                dicom_tls_on, facts, DICOM_TLS_REMEDY))
    checks.append(_dicom_always_allow(config, dicom_on))
    checks.append(_dicom_check_host(config, dicom_on))
    checks.append(_modalities(config, facts))
    checks.append(_modality_permissions(config, facts))
    checks.append(_peers(config, facts))
    checks.append(_dicomweb_servers(config))
    checks.append(_lua(config))
    checks.append(_webdav(config, http_on, auth_on))
    checks.append(_filesystem_routes(config))
    checks.append(_storage_cache(config))
    checks.append(_storage_compression(config))
    checks.append(_storage_permissions(config, hardening, facts))
    if hardening is not None:
        checks.append(_signing_key_permissions(hardening, facts))
        checks.append(_passphrase_beside_key(hardening, facts))
        checks.append(_audit_witness(hardening))
        checks.append(_audit_database_transport(hardening))
        if hardening.shared_database is not None:
            checks.append(_store_database_transport(hardening.shared_database))
        checks.append(_mode(hardening))
        checks.append(_unsealed_policy(hardening))
        checks.append(_route_permissions(hardening))
    return PostureReport(
        checks=tuple(checks),
        certificate_days_left=min(days_left) if days_left else None,
        certificate_not_after=min(expiries) if expiries else None,
    )


def _check(check_id: str, title: str, severity: Severity) -> Callable[..., Check]:
    def make(status: Status, evidence: str, remedy: str = "", downgrade: Severity | None = None) -> Check:
        # ``downgrade`` gives a milder severity to a lesser finding of the same check; a check
        # that does not apply (its feature is off, reported by another check) is low.
        chosen = downgrade or severity
        if status is Status.WARN and evidence.startswith("not applicable"):
            chosen = Severity.LOW
        return Check(check_id, title, status, chosen, evidence, remedy if status is not Status.PASS else "")

    return make


def _http_tls(http_on: bool, https_on: bool) -> Check:
    make = _check("http-tls", "HTTP server uses HTTPS", Severity.CRITICAL)
    if not http_on:
        return make(Status.PASS, "HttpServerEnabled is false: no HTTP server")
    if https_on:
        return make(Status.PASS, "SslEnabled is true")
    return make(
        Status.FAIL,
        "HttpServerEnabled is true and SslEnabled is false: passwords and images cross the network in clear",
        'Set "SslEnabled": true and "SslCertificate" to a PEM file holding the certificate and its key.',
    )


def _libssl(https_on: bool, facts: HostFacts) -> Check:
    make = _check("https-libssl", "HTTPS can run (civetweb finds every OpenSSL function)", Severity.CRITICAL)
    if not https_on:
        return make(Status.PASS, "HTTPS is off (see http-tls): OpenSSL is not loaded")
    probe = facts.libssl
    if probe is None:
        return make(
            Status.WARN,
            "not probed: run the report inside Orthanc (GET /hardening/posture) or on the Orthanc host",
            LIBSSL_SHIM_REMEDY,
            Severity.LOW,
        )
    if not probe.civetweb:
        return make(Status.PASS, "Orthanc does not use a shared libcivetweb: OpenSSL is linked at build time")
    if not probe.loaded:
        return make(
            Status.FAIL,
            f"Orthanc uses {probe.civetweb}, which loads libssl.so at run time, and libssl.so cannot be "
            f"loaded ({probe.error})",
            LIBSSL_SHIM_REMEDY,
        )
    if not probe.has_peer_certificate:
        return make(
            Status.FAIL,
            f"Orthanc uses {probe.civetweb}; libssl.so ({probe.library or 'OpenSSL 3'}) lacks "
            "SSL_get_peer_certificate: Orthanc would crash on the first HTTPS connection",
            LIBSSL_SHIM_REMEDY,
        )
    return make(
        Status.PASS,
        f"Orthanc uses {probe.civetweb}; libssl.so ({probe.library}) provides SSL_get_peer_certificate",
    )


def _tls_version(config: Mapping[str, Any], https_on: bool) -> Check:
    make = _check("tls-minimum-version", "HTTPS accepts TLS 1.2 or newer only", Severity.HIGH)
    value = setting(config, "SslMinimumProtocolVersion")
    if not https_on:
        return make(Status.WARN, "not applicable: HTTPS is off (see http-tls)", "Turn HTTPS on first.")
    if isinstance(value, int) and not isinstance(value, bool) and value >= MINIMUM_TLS_SETTING:
        return make(Status.PASS, f"SslMinimumProtocolVersion is {value} ({TLS_VERSIONS.get(value, 'TLS 1.2')} minimum)")
    shown = TLS_VERSIONS.get(value, "unknown") if isinstance(value, int) else "unknown"
    return make(
        Status.FAIL,
        f"SslMinimumProtocolVersion is {value!r}: {shown} and newer are accepted",
        'Set "SslMinimumProtocolVersion": 4 (TLS 1.2 and newer only).',
    )


FORWARD_SECRET_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
)
TLS13_CIPHERS = ("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256")
_CIPHER_LIST = ", ".join(f'"{c}"' for c in FORWARD_SECRET_CIPHERS)
HTTPS_TLS_REMEDY = (f'Set "SslMinimumProtocolVersion": 4 and "SslCiphersAccepted": [{_CIPHER_LIST}] '
                    "(Orthanc 1.8.2 and later).")
DICOM_TLS_REMEDY = (f'Set "DicomTlsMinimumProtocolVersion": 4 and "DicomTlsCiphersAccepted": [{_CIPHER_LIST}, '
                    + ", ".join(f'"{c}"' for c in TLS13_CIPHERS) + "] (Orthanc 1.12.4 and later; earlier Orthancs "
                    "have no such setting: upgrade, or accept DICOM TLS only through a TLS proxy that refuses them).")


def _tls_measured(check_id: str, title: str, endpoint: str, enabled: bool, facts: HostFacts,
                  remedy: str) -> Check:
    make = _check(check_id, title, Severity.HIGH)
    if not enabled:
        return make(Status.WARN, "not applicable: TLS is off on this endpoint (see the checks above)", remedy)
    measured = (facts.tls or {}).get(endpoint)
    if measured is None:
        return make(Status.WARN, "not measured: ask the running server (GET /hardening/posture)", remedy,
                    Severity.LOW)
    if measured.error:
        return make(Status.WARN, f"{measured.endpoint}: could not be measured: {measured.error}", remedy,
                    Severity.MEDIUM)
    accepted = "; ".join(f"{offer} -> {protocol} {cipher}" for offer, protocol, cipher in measured.accepted)
    refused = ", ".join(measured.refused) or "nothing"
    untested = f"; not tested (client): {', '.join(measured.untested)}" if measured.untested else ""
    if measured.weak:
        return make(Status.FAIL, f"{measured.endpoint} accepted {', '.join(measured.weak)} (accepted: {accepted}; "
                                 f"refused: {refused}{untested})", remedy)
    return make(Status.PASS, f"{measured.endpoint} accepted: {accepted}; refused: {refused}{untested}")


def _storage_compression(config: Mapping[str, Any]) -> Check:
    make = _check("storage-compression", "Seals bind each file to its instance (StorageCompression off)",
                  Severity.HIGH)
    if setting(config, "StorageCompression") is True:
        return make(
            Status.FAIL,
            "StorageCompression is true: the storage area receives compressed bytes, so seals are made over them "
            "without the instance's identity (UIDs, patient id, index tags): query answers and the identity of a "
            "served instance cannot be checked against its seal",
            'Set "StorageCompression": false (compress on the file system instead, e.g. a compressed volume).',
        )
    return make(Status.PASS, "StorageCompression is false: seals bind the DICOM bytes to their identity")


def _certificate_checks(
    check_id: str,
    title: str,
    key: str,
    config: Mapping[str, Any],
    facts: HostFacts,
    now: dt.datetime,
    enabled: bool,
    days_left: list[int],
    expiries: list[dt.datetime],
) -> list[Check]:
    expiry = _check(check_id, f"{title} is readable and valid", Severity.CRITICAL)
    strength = _check(f"{check_id}-key", f"{title} has a strong key", Severity.HIGH)
    if not enabled:
        return [
            expiry(Status.WARN, f"not applicable: {'HTTPS' if key == 'SslCertificate' else 'DICOM TLS'} is off", ""),
            strength(Status.WARN, "not applicable", ""),
        ]
    if key not in config and key != "SslCertificate":
        missing = f'"{key}" is not set'
        return [expiry(Status.FAIL, missing, f'Set "{key}".'), strength(Status.WARN, missing, "")]
    path = facts.resolve(str(setting(config, key)))
    found = facts.file(path)
    remedy = f'Point "{key}" at a readable PEM certificate (owned by the Orthanc user).'
    if not found.exists or not found.readable or found.content is None:
        problem = "does not exist" if not found.exists else "is not readable"
        return [
            expiry(Status.FAIL, f"{key} file {path} {problem}", remedy),
            strength(Status.WARN, "no certificate to inspect", ""),
        ]
    try:
        info = inspect_certificate(found.content, key)
    except ConfigError as exc:
        return [expiry(Status.FAIL, f"{key} file {path}: {exc.problem}", remedy), strength(Status.WARN, "", "")]
    days_left.append(info.days_left(now))
    expiries.append(info.not_after)
    return [_expiry(expiry, key, info, now), _strength(strength, info)]


def _expiry(make: Callable[..., Check], key: str, info: CertificateInfo, now: dt.datetime) -> Check:
    renew = f'Renew the certificate and point "{key}" at the new file, then restart Orthanc.'
    if info.is_expired(now):
        return make(Status.FAIL, f"EXPIRED: {info.describe(now)}", renew)
    if info.is_not_yet_valid(now):
        return make(Status.FAIL, f"not valid before {info.not_before:%Y-%m-%d %H:%M} UTC: {info.describe(now)}", renew)
    if info.days_left(now) < RENEWAL_WARNING_DAYS:
        return make(Status.WARN, f"expires soon: {info.describe(now)}", renew, Severity.MEDIUM)
    return make(Status.PASS, info.describe(now))


def _strength(make: Callable[..., Check], info: CertificateInfo) -> Check:
    problem = info.key_problem
    if problem:
        return make(Status.FAIL, problem, "Issue a certificate with an RSA 3072 or EC P-256 key, signed with SHA-256.")
    return make(Status.PASS, f"{info.key_type} {info.key_bits} bits, signed with {info.signature_hash.upper()}")


def _client_certificates(config: Mapping[str, Any], https_on: bool) -> Check:
    make = _check("https-client-certificates", "HTTPS clients present a certificate", Severity.MEDIUM)
    if not https_on:
        return make(Status.WARN, "not applicable: HTTPS is off (see http-tls)", "Turn HTTPS on first.")
    if _enabled(config, "SslVerifyPeers"):
        return make(Status.PASS, "SslVerifyPeers is true")
    return make(
        Status.WARN,
        "SslVerifyPeers is false: any HTTPS client may connect (passwords still apply)",
        'Where clients can hold certificates, set "SslVerifyPeers": true and "SslTrustedClientCertificates".',
    )


def _authentication(config: Mapping[str, Any], http_on: bool, auth_on: bool) -> Check:
    make = _check("http-authentication", "HTTP clients must authenticate", Severity.CRITICAL)
    if not http_on:
        return make(Status.PASS, "HttpServerEnabled is false")
    if auth_on:
        return make(Status.PASS, "AuthenticationEnabled is true")
    remote = _enabled(config, "RemoteAccessAllowed")
    where = "from any host (RemoteAccessAllowed is true)" if remote else "from this host"
    return make(
        Status.FAIL,
        f"authentication is off: anyone can read and change every study {where}",
        'Set "AuthenticationEnabled": true and declare "RegisteredUsers" with strong passwords.',
    )


def _credentials(config: Mapping[str, Any], http_on: bool, auth_on: bool) -> list[Check]:
    default = _check("http-default-credentials", "No default or empty HTTP credentials", Severity.CRITICAL)
    weak = _check("http-weak-passwords", "HTTP passwords are strong", Severity.HIGH)
    if not http_on or not auth_on:
        skipped = "not applicable: authentication is off (see http-authentication)" if http_on else "no HTTP server"
        status = Status.WARN if http_on else Status.PASS
        return [default(status, skipped), weak(status, skipped)]
    users = setting(config, "RegisteredUsers")
    if not isinstance(users, Mapping) or not users:
        return [
            default(
                Status.FAIL,
                "RegisteredUsers is empty: Orthanc creates the default account orthanc/orthanc",
                'Declare "RegisteredUsers" with one account per person and strong passwords.',
            ),
            weak(Status.WARN, "no accounts declared"),
        ]
    defaults: list[str] = []
    weaknesses: list[str] = []
    for user, password in sorted(users.items()):
        text = password if isinstance(password, str) else ""
        if text == "" or (user, text) in DEFAULT_CREDENTIALS:
            defaults.append(f"{user!r}: {'empty password' if text == '' else 'the default password'}")
            continue
        problem = _password_weakness(user, text)
        if problem:
            weaknesses.append(f"{user!r}: {problem}")
    remedy = "Give each account a random password of 12 or more characters (e.g. `openssl rand -base64 18`)."
    return [
        default(Status.FAIL, "; ".join(defaults), remedy)
        if defaults
        else default(Status.PASS, f"{len(users)} accounts, none default or empty"),
        weak(Status.FAIL, "; ".join(weaknesses), remedy)
        if weaknesses
        else weak(Status.PASS, f"{len(users)} accounts checked"),
    ]


def _password_weakness(user: str, password: str) -> str:
    """Return why a password is weak (never the password itself), or ``""``."""
    if password.lower() == user.lower():
        return "password equals the user name"
    if password.lower() in COMMON_PASSWORDS:
        return "a commonly used password"
    if len(set(password)) == 1:
        return "one repeated character"
    if len(password) < MINIMUM_PASSWORD_LENGTH:
        return f"shorter than {MINIMUM_PASSWORD_LENGTH} characters"
    return ""


def _dicom_tls(dicom_on: bool, dicom_tls_on: bool) -> Check:
    make = _check("dicom-tls", "DICOM server uses TLS", Severity.CRITICAL)
    if not dicom_on:
        return make(Status.PASS, "DicomServerEnabled is false: no DICOM server")
    if dicom_tls_on:
        return make(Status.PASS, "DicomTlsEnabled is true")
    return make(
        Status.FAIL,
        "DicomServerEnabled is true and DicomTlsEnabled is false: images cross the network in clear "
        "and can be altered in transit (CT-GAN)",
        'Set "DicomTlsEnabled": true with "DicomTlsCertificate", "DicomTlsPrivateKey" and '
        '"DicomTlsTrustedCertificates".',
    )


def _dicom_client_certificates(config: Mapping[str, Any], dicom_tls_on: bool) -> Check:
    make = _check("dicom-tls-client-certificates", "DICOM TLS peers must present a certificate", Severity.HIGH)
    if not dicom_tls_on:
        return make(Status.WARN, "not applicable: DICOM TLS is off (see dicom-tls)", "Turn DICOM TLS on first.")
    if _enabled(config, "DicomTlsRemoteCertificateRequired"):
        return make(Status.PASS, "DicomTlsRemoteCertificateRequired is true")
    return make(
        Status.FAIL,
        "DicomTlsRemoteCertificateRequired is false: any host can open a TLS association",
        'Set "DicomTlsRemoteCertificateRequired": true.',
    )


_ALWAYS_ALLOW = (
    "DicomAlwaysAllowStore",
    "DicomAlwaysAllowFind",
    "DicomAlwaysAllowFindWorklist",
    "DicomAlwaysAllowGet",
    "DicomAlwaysAllowMove",
)


def _dicom_always_allow(config: Mapping[str, Any], dicom_on: bool) -> Check:
    make = _check("dicom-always-allow", "Only declared modalities may use the DICOM server", Severity.HIGH)
    if not dicom_on:
        return make(Status.PASS, "no DICOM server")
    risky = [key for key in _ALWAYS_ALLOW if _enabled(config, key)]
    remedy = "Set every DicomAlwaysAllow* option to false and declare each modality in DicomModalities."
    if risky:
        return make(Status.FAIL, f"{', '.join(risky)} true: unknown AE titles are served", remedy)
    if _enabled(config, "DicomAlwaysAllowEcho"):
        return make(Status.WARN, "DicomAlwaysAllowEcho is true: unknown AE titles may C-ECHO", remedy, Severity.LOW)
    return make(Status.PASS, "every DicomAlwaysAllow* option is false")


def _dicom_check_host(config: Mapping[str, Any], dicom_on: bool) -> Check:
    make = _check("dicom-check-modality-host", "DICOM peers are checked by address, not only AE title", Severity.MEDIUM)
    if not dicom_on:
        return make(Status.PASS, "no DICOM server")
    if _enabled(config, "DicomCheckModalityHost"):
        return make(Status.PASS, "DicomCheckModalityHost is true")
    return make(
        Status.FAIL,
        "DicomCheckModalityHost is false: anyone who knows a modality's AE title can act as it",
        'Set "DicomCheckModalityHost": true.',
    )


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _destinations_check(
    make: Callable[..., Check], found: list[Destination], what: str, remedy: str, extra: str = ""
) -> Check:
    insecure = [d for d in found if not d.is_secure]
    if insecure:
        listed = "; ".join(f"{d.name!r} ({d.address}): {d.problem}" for d in insecure)
        return make(Status.FAIL, f"{len(insecure)} of {len(found)} {what} insecure: {listed}{extra}", remedy)
    if extra:
        return make(Status.FAIL, f"{len(found)} {what}{extra}", remedy)
    if not found:
        return make(Status.PASS, f"no {what} configured")
    return make(Status.PASS, f"{len(found)} {what}, all secure")


def _modalities(config: Mapping[str, Any], facts: HostFacts) -> Check:
    make = _check("modalities-dicom-tls", "Every modality is reached over DICOM TLS", Severity.HIGH)
    source = facts.modalities if facts.modalities is not None else _mapping(setting(config, "DicomModalities"))
    found = [modality_destination(name, value) for name, value in sorted(source.items())]
    return _destinations_check(make, found, "modalities", 'Set "UseDicomTls": true in each modality (object form).')


# Orthanc's per-modality DICOM services (RemoteModalityParameters, 1.10 to 1.13), each allowed
# unless set to false; "AllowStorageCommitment" sets both N-ACTION and N-EVENT-REPORT.
_MODALITY_SERVICES = (
    ("AllowEcho",), ("AllowStore",), ("AllowFind",), ("AllowFindWorklist",), ("AllowMove",), ("AllowGet",),
    ("AllowNAction", "AllowStorageCommitment"), ("AllowEventReport", "AllowStorageCommitment"),
)


def _modality_permissions(config: Mapping[str, Any], facts: HostFacts) -> Check:
    make = _check("modality-permissions", "Each modality is allowed only the DICOM services it needs", Severity.MEDIUM)
    source = facts.modalities if facts.modalities is not None else _mapping(setting(config, "DicomModalities"))
    unrestricted = []
    for name, value in sorted(source.items()):
        if not isinstance(value, Mapping):
            unrestricted.append(name)  # the array form cannot restrict anything
            continue
        if all(any(value.get(key, True) is not False for key in keys) for keys in _MODALITY_SERVICES):
            unrestricted.append(name)
    if unrestricted:
        return make(
            Status.WARN,
            f"{len(unrestricted)} of {len(source)} modalities may use every DICOM service (C-ECHO, C-STORE, "
            f"C-FIND, worklists, C-MOVE, C-GET, storage commitment): {', '.join(unrestricted)}",
            'In each modality (object form) set to false the services it does not use: "AllowStore", '
            '"AllowFind", "AllowFindWorklist", "AllowMove", "AllowGet", "AllowStorageCommitment", "AllowEcho".',
        )
    if not source:
        return make(Status.PASS, "no modalities configured")
    return make(Status.PASS, f"{len(source)} modalities, each restricted to some DICOM services")


def _peers(config: Mapping[str, Any], facts: HostFacts) -> Check:
    make = _check("peers-https", "Every Orthanc peer is reached over verified HTTPS", Severity.HIGH)
    source = facts.peers if facts.peers is not None else _mapping(setting(config, "OrthancPeers"))
    found = [peer_destination(name, value) for name, value in sorted(source.items())]
    extra = "" if _enabled(config, "HttpsVerifyPeers") else " (HttpsVerifyPeers is false: peers are not authenticated)"
    if extra and not found:
        remedy = 'Set "HttpsVerifyPeers": true.'
        return make(Status.WARN, "no peers; HttpsVerifyPeers is false", remedy, Severity.MEDIUM)
    return _destinations_check(
        make, found, "peers", 'Use https:// peer URLs and "HttpsVerifyPeers": true with "HttpsCACertificates".', extra
    )


def _dicomweb_servers(config: Mapping[str, Any]) -> Check:
    make = _check("dicomweb-servers-https", "Every DICOMweb server is reached over HTTPS", Severity.HIGH)
    servers = _mapping(_mapping(config.get("DicomWeb")).get("Servers"))
    found = [peer_destination(name, value) for name, value in sorted(servers.items())]
    return _destinations_check(make, found, "DICOMweb servers", "Use https:// URLs in DicomWeb.Servers.")


def _lua(config: Mapping[str, Any]) -> Check:
    make = _check("lua", "No remote Lua execution, no Lua scripts", Severity.HIGH)
    scripts = setting(config, "LuaScripts")
    count = len(scripts) if isinstance(scripts, list) else 0
    if _enabled(config, "ExecuteLuaEnabled"):
        return make(
            Status.FAIL,
            "ExecuteLuaEnabled is true: any HTTP user can run code on the server (POST /tools/execute-script)",
            'Set "ExecuteLuaEnabled": false.',
        )
    if count:
        return make(
            Status.WARN,
            f"{count} Lua scripts are loaded: they can send data anywhere and bypass these checks",
            'Review each script in "LuaScripts"; remove those not needed.',
            Severity.MEDIUM,
        )
    return make(Status.PASS, "ExecuteLuaEnabled is false and LuaScripts is empty")


def _webdav(config: Mapping[str, Any], http_on: bool, auth_on: bool) -> Check:
    make = _check("webdav", "WebDAV is off or authenticated", Severity.HIGH)
    if not http_on or not _enabled(config, "WebDavEnabled"):
        return make(Status.PASS, "WebDavEnabled is false")
    if not auth_on:
        return make(Status.FAIL, "WebDavEnabled is true without authentication", 'Set "WebDavEnabled": false.')
    return make(
        Status.WARN,
        "WebDavEnabled is true (authenticated): a second way in to review",
        'Set "WebDavEnabled": false unless WebDAV is used.',
        Severity.LOW,
    )


def _filesystem_routes(config: Mapping[str, Any]) -> Check:
    make = _check("filesystem-write-routes", "The REST API cannot write to the server's filesystem", Severity.HIGH)
    if _enabled(config, "RestApiWriteToFileSystemEnabled"):
        return make(
            Status.FAIL,
            "RestApiWriteToFileSystemEnabled is true: POST /instances/{id}/export writes any path",
            'Set "RestApiWriteToFileSystemEnabled": false.',
        )
    return make(Status.PASS, "RestApiWriteToFileSystemEnabled is false")


def _storage_cache(config: Mapping[str, Any]) -> Check:
    make = _check("storage-cache", "Every read is verified (storage cache off)", Severity.HIGH)
    size = setting(config, "MaximumStorageCacheSize")
    if size == 0:
        return make(Status.PASS, "MaximumStorageCacheSize is 0")
    return make(
        Status.FAIL,
        f"MaximumStorageCacheSize is {size} MB: cached reads skip seal verification",
        'Set "MaximumStorageCacheSize": 0.',
    )


def _storage_permissions(config: Mapping[str, Any], hardening: HardeningConfig | None, facts: HostFacts) -> Check:
    make = _check("storage-permissions", "Storage and data directories are private", Severity.HIGH)
    problems: list[str] = []
    checked: list[str] = []
    for directory in _data_directories(config, hardening, facts):
        found = facts.file(directory)
        if not found.exists:
            continue
        checked.append(f"{directory} {found.mode:04o}")
        if found.is_readable_by_others or found.is_writable_by_others:
            problems.append(f"{directory} is mode {found.mode:04o} (others may read or write)")
    if problems:
        return make(
            Status.FAIL,
            "; ".join(problems),
            "chmod 0700 each directory (owned by the Orthanc user), e.g. `chmod -R o-rwx DIR`.",
        )
    if not checked:
        return make(Status.WARN, "directories not created yet", "", Severity.LOW)
    return make(Status.PASS, ", ".join(checked))


def _signing_key_permissions(hardening: HardeningConfig, facts: HostFacts) -> Check:
    make = _check("signing-key-permissions", "The seal signing key is private", Severity.HIGH)
    if hardening.signing_key_in_token:
        return make(Status.PASS, "the signing key is in a PKCS#11 token: the private key never leaves it")
    found = facts.file(hardening.signing_key)
    if not found.exists:
        return make(Status.FAIL, f"{hardening.signing_key} does not exist", "Create it (`make run` does).")
    if found.is_readable_by_others or found.is_writable_by_others:
        return make(
            Status.FAIL,
            f"{hardening.signing_key} is mode {found.mode:04o}: other users may read it",
            f"chmod 0600 {hardening.signing_key}",
        )
    if found.is_readable_by_group:
        return make(
            Status.WARN,
            f"{hardening.signing_key} is mode {found.mode:04o}: its group may read it",
            f"chmod 0600 {hardening.signing_key}",
            Severity.MEDIUM,
        )
    return make(Status.PASS, f"{hardening.signing_key} is mode {found.mode:04o}")


def _unsealed_policy(hardening: HardeningConfig) -> Check:
    make = _check("unsealed-policy", "Unsealed data is refused (no migration under way)", Severity.MEDIUM)
    how = "set in the configuration" if hardening.unsealed_policy_configured else "decided at start"
    if not hardening.unsealed_policy_configured and not hardening.unsealed_policy_decided:
        # The offline report: the running plugin decides from its legacy inventory.
        return make(Status.PASS, "Hardening.UnsealedPolicy is not set: the plugin refuses unsealed data unless "
                                 "attachments stored before sealing began are still unsealed (see the running "
                                 "server's report)")
    if hardening.unsealed_policy is UnsealedPolicy.REFUSE:
        return make(Status.PASS, f"Hardening.UnsealedPolicy is refuse ({how})")
    if hardening.unsealed_policy_configured:
        evidence = ("Hardening.UnsealedPolicy is serve-and-flag (set in the configuration): attachments stored "
                    "before sealing began are served unverified")
    else:
        evidence = ("Hardening.UnsealedPolicy is serve-and-flag (decided at start): this installation holds "
                    "attachments stored before sealing began that are not sealed yet, served unverified")
    return make(Status.WARN, evidence,
                "Run POST /hardening/seal-existing (or `python -m orthanc_hardening seal-existing`); without "
                "the key the policy becomes refuse at the next start, or set \"UnsealedPolicy\": \"refuse\".")


def _route_permissions(hardening: HardeningConfig) -> Check:
    make = _check("route-permissions", "HTTP users hold only the permissions their role needs", Severity.HIGH)
    table = hardening.permissions
    if table is None:
        return make(
            Status.WARN,
            "Hardening.Permissions is not configured: every registered user may delete, modify, send, "
            "reconfigure, reset and stop Orthanc (only /hardening is restricted)",
            'Add "Permissions": {"Roles": {...}, "Users": {...}} to the Hardening section (README "Permissions").',
        )
    everything = sorted(user for user, roles in table.users.items()
                        if any("all" in table.roles.get(role, ()) for role in roles))
    if table.anonymous:
        return make(Status.WARN, f"unauthenticated requests hold the roles {', '.join(table.anonymous)}",
                    'Keep "Anonymous" empty and turn "AuthenticationEnabled" on.')
    return make(Status.PASS, f"{len(table.users)} users with roles; holding all: {', '.join(everything) or 'nobody'}")


def _passphrase_beside_key(hardening: HardeningConfig, facts: HostFacts) -> Check:
    make = _check("signing-key-passphrase", "The signing key's passphrase is not stored beside it", Severity.HIGH)
    if hardening.signing_key_in_token:
        return make(Status.PASS, f"PKCS#11 token key; its PIN comes from {hardening.signing_key_passphrase_env}")
    found = [path for path in passphrase_file_candidates(hardening.signing_key) if facts.file(path).exists]
    if not found:
        return make(Status.PASS, f"no passphrase file beside {hardening.signing_key}")
    return make(
        Status.WARN,
        f"{', '.join(str(p) for p in found)} beside {hardening.signing_key}: whoever can read that directory can "
        "decrypt the key and sign seals, manifests, checkpoints and key rotations",
        f"Keep the passphrase out of the key's directory (a systemd credential, a secret store, or typed at "
        f"start into {hardening.signing_key_passphrase_env}); make run's passphrase file is for development only.",
    )


def _audit_witness(hardening: HardeningConfig) -> Check:
    make = _check("audit-witness", "Audit checkpoints are witnessed outside the audit database", Severity.HIGH)
    witness = hardening.audit.witness_file
    syslog = hardening.audit.syslog
    if witness is not None:
        also = f"; events also exported to syslog {syslog.host}:{syslog.port}" if syslog is not None else ""
        return make(Status.PASS, f"witnessed checkpoints are appended to {witness}{also}")
    return make(
        Status.WARN,
        "Hardening.Audit.WitnessFile is not set: an intruder who can write the audit database can delete events, "
        "recompute the chain and remove the checkpoints after the edit without being detected by audit verify",
        'Set "Hardening": {"Audit": {"WitnessFile": "/var/log/orthanc-hardening/audit.witness"}} on another file '
        "system (append-only: chattr +a), and keep a copy off the server.",
    )


def _database_transport(check_id: str, title: str, setting: str, url: str) -> Check:
    """PASS for a local, Unix-socket or verified-TLS database URL; FAIL (with the fix) otherwise."""
    make = _check(check_id, title, Severity.HIGH)
    problem = database_transport_problem(url)
    if problem is None:
        return make(Status.PASS, f"{setting}{redact_url(url)}: local or TLS with a verified server")
    return make(Status.FAIL, f"{setting}{redact_url(url)}: {problem}",
                "Add ?sslmode=verify-full&sslrootcert=/path/to/ca.pem to the PostgreSQL URL (or connect through "
                "a Unix socket or loopback).")


def _audit_database_transport(hardening: HardeningConfig) -> Check:
    return _database_transport("audit-database-tls", "The audit database connection is encrypted", "",
                               hardening.audit.database)


def _store_database_transport(url: str) -> Check:
    return _database_transport("store-database-tls",
                               "The connection to the plugin's database (seals, manifests) is encrypted",
                               "Hardening.Database ", url)


def _mode(hardening: HardeningConfig) -> Check:
    make = _check("hardening-mode", "The plugin enforces (not only monitors)", Severity.MEDIUM)
    if hardening.mode is Mode.ENFORCE:
        return make(Status.PASS, "Hardening.Mode is enforce")
    return make(
        Status.WARN,
        "Hardening.Mode is monitor: insecure requests are logged, not refused",
        'Set "Hardening": {"Mode": "enforce"} once the report is clean.',
    )
