"""The "Hardening" section of the Orthanc configuration, parsed into frozen dataclasses.

``load_config`` is the only reader of the raw JSON section: every other module receives a
``HardeningConfig``. An unknown key, a wrong type or a bad value raises ``ConfigError``
naming the full key (``Hardening.Audit.Database``); nothing falls back to a default
silently. Files named here are checked for readability; parsing keys and certificates is
left to ``seal.keys`` and ``tls`` (which raise ``ConfigError`` too). No other I/O here.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from orthanc_hardening.errors import ConfigError

SECTION = "Hardening"


class Mode(enum.Enum):
    """``enforce`` refuses what is insecure; ``monitor`` only reports it."""

    ENFORCE = "enforce"
    MONITOR = "monitor"


class Durability(enum.Enum):
    """How far a commit of the plugin's stores (seals, audit) survives.

    ``process``: a committed row survives a crash or ``kill -9`` of Orthanc (SQLite WAL with
    ``synchronous=NORMAL``, the level Orthanc's own SQLite index runs at). ``power``: it also
    survives a power loss or kernel crash (``synchronous=FULL``: one fsync per commit).
    """

    PROCESS = "process"
    POWER = "power"


class UnsealedPolicy(enum.Enum):
    """What enforce mode does with an instance stored before the plugin sealed anything."""

    SERVE_AND_FLAG = "serve-and-flag"
    REFUSE = "refuse"


@dataclass(frozen=True, slots=True)
class SyslogConfig:
    """Where audit messages are exported (RFC 5424 over TLS, RFC 5425)."""

    host: str
    port: int = 6514
    tls: bool = True
    ca_certificate: Path | None = None
    certificate: Path | None = None
    private_key: Path | None = None
    app_name: str = "orthanc-hardening"


@dataclass(frozen=True, slots=True)
class AuditConfig:
    """The audit store and its export."""

    database: str
    syslog: SyslogConfig | None = None
    checkpoint_every: int = 1000
    checkpoint_seconds: float = 60.0
    max_query_limit: int = 10000
    # Enforce mode refuses a read whose requester the plugin cannot know (a C-GET: the Python
    # plugin 4.0 has no C-GET hook). Off by default: C-GET is then recorded with the gap flagged.
    refuse_unattributed_reads: bool = False
    # Where witnessed checkpoints are appended (audit/witness.py), outside DataDirectory; None: no
    # witness file (the posture report warns).
    witness_file: Path | None = None


@dataclass(frozen=True, slots=True)
class PermissionsConfig:
    """``Hardening.Permissions``: roles (name -> permission names) and users (name -> role names).

    ``anonymous`` are the roles of a request Orthanc did not authenticate (``AuthenticationEnabled``
    false): none by default, so that such a request can do nothing.
    """

    roles: Mapping[str, frozenset[str]]
    users: Mapping[str, tuple[str, ...]]
    anonymous: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class HardeningConfig:
    """Everything the plugin was configured with, validated."""

    mode: Mode = Mode.ENFORCE
    data_directory: Path = Path("/var/lib/orthanc/hardening")
    signing_key: Path = Path("/etc/orthanc/hardening/seal-key.pem")
    signing_key_passphrase_env: str = "HARDENING_KEY_PASSPHRASE"
    trusted_keys: tuple[Path, ...] = ()
    # Where the key registry's anchor lives (seal/registry.py); None: beside the signing key file.
    key_registry_anchor: Path | None = None
    auditors: tuple[str, ...] = ()
    administrators: tuple[str, ...] = ()
    unsealed_policy: UnsealedPolicy = UnsealedPolicy.SERVE_AND_FLAG
    # False: "UnsealedPolicy" was not set; the plugin decides at start (integrity/legacy.py).
    unsealed_policy_configured: bool = False
    # True once the plugin decided the policy at start (an unset key); never set by the parser.
    unsealed_policy_decided: bool = False
    durability: Durability = Durability.PROCESS
    audit: AuditConfig = field(
        default_factory=lambda: AuditConfig(
            database="sqlite:///var/lib/orthanc/hardening/audit.db"
        )
    )
    # None: no permission table (Orthanc's own model: every registered user may do everything
    # outside /hardening); the posture report warns.
    permissions: PermissionsConfig | None = None
    # Whether Orthanc authenticates HTTP requests (its AuthenticationEnabled, with Orthanc's
    # default): only then does the user named by an Authorization header count.
    http_authentication: bool = True
    # Hardening.Database: a postgresql:// URL puts every plugin store in that database (one schema
    # per store, shared by the nodes of one archive); None or sqlite: the SQLite files under
    # DataDirectory, as before.
    database: str | None = None

    @property
    def shared_database(self) -> str | None:
        """The PostgreSQL URL the plugin's stores live in, or ``None`` (SQLite files)."""
        if self.database is not None and urlparse(self.database).scheme in ("postgresql", "postgres"):
            return self.database
        return None

    @property
    def audit_schema(self) -> str | None:
        """The PostgreSQL schema of the audit trail when it lives in ``Hardening.Database`` (else ``None``)."""
        shared = self.shared_database
        return "hardening_audit" if shared is not None and self.audit.database == shared else None

    @property
    def is_enforcing(self) -> bool:
        return self.mode is Mode.ENFORCE

    @property
    def sqlite_synchronous(self) -> str:
        """The SQLite ``synchronous`` pragma value for the plugin's WAL databases."""
        return "FULL" if self.durability is Durability.POWER else "NORMAL"

    @property
    def seal_database(self) -> Path:
        """SQLite file holding seals and key registry."""
        return self.data_directory / "seals.db"

    @property
    def signing_key_in_token(self) -> bool:
        """Whether ``SigningKey`` is a PKCS#11 URI (the key lives in a token, not a file)."""
        return str(self.signing_key).startswith("pkcs11:")

    @property
    def key_directory(self) -> Path:
        """Where rotated keys and the key registry live."""
        return self.data_directory / "keys"


_TOP_KEYS = {
    "Mode",
    "DataDirectory",
    "SigningKey",
    "SigningKeyPassphraseEnv",
    "TrustedKeys",
    "KeyRegistryAnchor",
    "Auditors",
    "Administrators",
    "UnsealedPolicy",
    "Durability",
    "Audit",
    "Permissions",
    "Database",
}
_PERMISSIONS_KEYS = {"Roles", "Users", "Anonymous"}
# orthanc-authorization's vocabulary plus this plugin's (access/routes.py, Permission).
PERMISSION_NAMES = frozenset({
    "all", "view", "download", "upload", "delete", "modify", "anonymize", "send", "q-r-remote-modalities",
    "settings", "api-view", "edit-labels", "admin-permissions", "audit", "hardening-admin",
})
_AUDIT_KEYS = {
    "Database", "Syslog", "CheckpointEvery", "CheckpointSeconds", "MaxQueryLimit", "RefuseUnattributedReads",
    "WitnessFile",
}
_SYSLOG_KEYS = {"Host", "Port", "Tls", "CaCertificate", "Certificate", "PrivateKey", "AppName"}


def load_config(orthanc_config: Mapping[str, Any]) -> HardeningConfig:
    """Parse and validate the "Hardening" section of a full Orthanc configuration.

    Args:
        orthanc_config: the whole Orthanc configuration (as ``orthanc.GetConfiguration()``
            returns it, parsed).

    Returns:
        The validated configuration; a missing section gives every default.

    Raises:
        ConfigError: a key is unknown, has the wrong type or a bad value, or names a file
            that cannot be read. ``key`` is the full dotted name.
    """
    raw = orthanc_config.get(SECTION, {})
    section = _mapping(raw, SECTION)
    _reject_unknown(section, _TOP_KEYS, SECTION)

    mode = _enum(section, "Mode", Mode, Mode.ENFORCE)
    data_directory = Path(_string(section, "DataDirectory", "/var/lib/orthanc/hardening"))
    if not data_directory.is_absolute():
        raise ConfigError(f"{SECTION}.DataDirectory", "must be an absolute path")
    signing_key = Path(_string(section, "SigningKey", "/etc/orthanc/hardening/seal-key.pem"))
    passphrase_env = _string(section, "SigningKeyPassphraseEnv", "HARDENING_KEY_PASSPHRASE")
    trusted = tuple(Path(p) for p in _string_list(section, "TrustedKeys"))
    anchor = None
    if section.get("KeyRegistryAnchor") is not None:
        anchor = Path(_string(section, "KeyRegistryAnchor", ""))
        if not anchor.is_absolute() or anchor.resolve().is_relative_to(data_directory.resolve()):
            raise ConfigError(f"{SECTION}.KeyRegistryAnchor", "must be an absolute path outside DataDirectory")
    if str(signing_key).startswith("pkcs11:") and anchor is None:
        raise ConfigError(f"{SECTION}.KeyRegistryAnchor", "is required with a PKCS#11 SigningKey (a file outside "
                                                          "DataDirectory for the key registry's anchor)")
    for index, path in enumerate(trusted):
        _require_readable(path, f"{SECTION}.TrustedKeys[{index}]")
    auditors = tuple(_string_list(section, "Auditors"))
    administrators = tuple(_string_list(section, "Administrators"))
    unsealed = _enum(section, "UnsealedPolicy", UnsealedPolicy, UnsealedPolicy.SERVE_AND_FLAG)
    durability = _enum(section, "Durability", Durability, Durability.PROCESS)
    database = None
    if section.get("Database") is not None:
        database = _string(section, "Database", "")
        _check_database_url(database, f"{SECTION}.Database")
    audit_raw = section.get("Audit", {})
    if database is not None and urlparse(database).scheme != "sqlite" and isinstance(audit_raw, Mapping) \
            and audit_raw.get("Database") is None:
        audit_raw = {**audit_raw, "Database": database}  # the audit trail follows Hardening.Database
    audit = _audit(audit_raw, data_directory)
    permissions = _permissions(section["Permissions"]) if section.get("Permissions") is not None else None

    return HardeningConfig(
        mode=mode,
        data_directory=data_directory,
        signing_key=signing_key,
        signing_key_passphrase_env=passphrase_env,
        trusted_keys=trusted,
        key_registry_anchor=anchor,
        auditors=auditors,
        administrators=administrators,
        unsealed_policy=unsealed,
        unsealed_policy_configured="UnsealedPolicy" in section,
        durability=durability,
        audit=audit,
        permissions=permissions,
        http_authentication=http_authentication_enabled(orthanc_config),
        database=database,
    )


def http_authentication_enabled(orthanc_config: Mapping[str, Any]) -> bool:
    """Whether Orthanc authenticates HTTP requests, as its ``main.cpp`` decides (1.5.8 and later).

    ``AuthenticationEnabled`` when present; otherwise on exactly when ``RemoteAccessAllowed``.
    """
    value = orthanc_config.get("AuthenticationEnabled")
    if isinstance(value, bool):
        return value
    return orthanc_config.get("RemoteAccessAllowed") is True


def _permissions(raw: Any) -> PermissionsConfig:
    key = f"{SECTION}.Permissions"
    section = _mapping(raw, key)
    _reject_unknown(section, _PERMISSIONS_KEYS, key)
    roles_raw = _mapping(section.get("Roles", {}), f"{key}.Roles")
    roles: dict[str, frozenset[str]] = {}
    for role in roles_raw:
        names = _string_list(roles_raw, role, f"{key}.Roles")
        for name in names:
            if name not in PERMISSION_NAMES:
                raise ConfigError(f"{key}.Roles.{role}", f"unknown permission {name!r} (known: "
                                                        f"{', '.join(sorted(PERMISSION_NAMES))})")
        roles[role] = frozenset(names)
    users_raw = _mapping(section.get("Users", {}), f"{key}.Users")
    users: dict[str, tuple[str, ...]] = {}
    for user, _value in users_raw.items():
        users[user] = tuple(_string_list(users_raw, user, f"{key}.Users"))
        _check_roles(users[user], roles, f"{key}.Users.{user}")
    anonymous = tuple(_string_list(section, "Anonymous", key))
    _check_roles(anonymous, roles, f"{key}.Anonymous")
    return PermissionsConfig(roles=roles, users=users, anonymous=anonymous)


def _check_roles(names: tuple[str, ...], roles: Mapping[str, frozenset[str]], key: str) -> None:
    for name in names:
        if name not in roles:
            raise ConfigError(key, f"unknown role {name!r} (defined in Hardening.Permissions.Roles: "
                                   f"{', '.join(sorted(roles)) or 'none'})")


def check_python_threads(orthanc_config: Mapping[str, Any], loader_threads: bool) -> None:
    """Check that the Python plugin lets Orthanc's loader threads run while the plugin calls Orthanc.

    Orthanc 1.13 reads files for ``/tools/find``, C-FIND and archives on loader threads, which
    call the plugin's storage area. Unless ``Python.AllowThreads`` is true, the Python plugin keeps
    Python's lock during every call into Orthanc, so a plugin call that needs such a read waits
    forever for a thread that waits for that lock: every Python callback of Orthanc then hangs.

    Raises:
        ConfigError: Orthanc 1.13 or later and ``Python.AllowThreads`` is not ``true``.
    """
    if not loader_threads:
        return
    python = orthanc_config.get("Python", {})
    if not isinstance(python, Mapping) or python.get("AllowThreads") is not True:
        raise ConfigError("Python.AllowThreads", "must be true on Orthanc 1.13 and later (its loader threads "
                                                 "read files through this plugin while the plugin waits for "
                                                 "Orthanc); add \"Python\": {\"AllowThreads\": true}")


def _audit(raw: Any, data_directory: Path) -> AuditConfig:
    key = f"{SECTION}.Audit"
    section = _mapping(raw, key)
    _reject_unknown(section, _AUDIT_KEYS, key)
    database = _string(section, "Database", f"sqlite://{data_directory / 'audit.db'}", key)
    _check_database_url(database, f"{key}.Database")
    syslog = None
    if "Syslog" in section and section["Syslog"] is not None:
        syslog = _syslog(section["Syslog"])
    every = _integer(section, "CheckpointEvery", 1000, key, minimum=1)
    seconds = _number(section, "CheckpointSeconds", 60.0, key, minimum=0.1)
    max_limit = _integer(section, "MaxQueryLimit", 10000, key, minimum=1)
    refuse_unattributed = _boolean(section, "RefuseUnattributedReads", False, key)
    witness_file = None
    if section.get("WitnessFile") is not None:
        witness_file = Path(_string(section, "WitnessFile", "", key))
        if not witness_file.is_absolute():
            raise ConfigError(f"{key}.WitnessFile", "must be an absolute path")
        if witness_file.resolve().is_relative_to(data_directory.resolve()):
            raise ConfigError(f"{key}.WitnessFile", f"must be outside DataDirectory ({data_directory}): a "
                                                   "witness beside the log it witnesses is rewritten with it")
    return AuditConfig(
        database=database,
        syslog=syslog,
        checkpoint_every=every,
        checkpoint_seconds=seconds,
        max_query_limit=max_limit,
        refuse_unattributed_reads=refuse_unattributed,
        witness_file=witness_file,
    )


def _syslog(raw: Any) -> SyslogConfig:
    key = f"{SECTION}.Audit.Syslog"
    section = _mapping(raw, key)
    _reject_unknown(section, _SYSLOG_KEYS, key)
    if "Host" not in section:
        raise ConfigError(f"{key}.Host", "is required when Syslog is configured")
    host = _string(section, "Host", "", key)
    port = _integer(section, "Port", 6514, key, minimum=1, maximum=65535)
    tls = _boolean(section, "Tls", True, key)
    files: dict[str, Path | None] = {}
    for name in ("CaCertificate", "Certificate", "PrivateKey"):
        value = section.get(name)
        if value is None:
            files[name] = None
            continue
        path = Path(_string(section, name, "", key))
        _require_readable(path, f"{key}.{name}")
        files[name] = path
    if tls and files["CaCertificate"] is None:
        raise ConfigError(f"{key}.CaCertificate", "is required when Tls is true")
    return SyslogConfig(
        host=host,
        port=port,
        tls=tls,
        ca_certificate=files["CaCertificate"],
        certificate=files["Certificate"],
        private_key=files["PrivateKey"],
        app_name=_string(section, "AppName", "orthanc-hardening", key),
    )


def _check_database_url(url: str, key: str) -> None:
    parsed = urlparse(url)
    if parsed.scheme == "sqlite":
        if not parsed.path or parsed.netloc:
            raise ConfigError(key, "a SQLite URL is sqlite:///absolute/path/audit.db")
    elif parsed.scheme in ("postgresql", "postgres"):
        if not parsed.hostname and "host=" not in parsed.query:
            raise ConfigError(key, "a PostgreSQL URL names a host: postgresql://user@host/db")
    else:
        raise ConfigError(key, f"unsupported database URL scheme {parsed.scheme!r}; use sqlite or postgresql")


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (in the user part and in a ``password=`` query).

    Every log line, error and report that names a database uses this form (STYLE.md §5).
    """
    parsed = urlparse(url)
    netloc = parsed.netloc
    if ":" not in netloc.rpartition("@")[0] and "password=" not in parsed.query.lower():
        return url  # nothing secret in it: keep it exactly as written
    if "@" in netloc:
        userinfo, _, hostinfo = netloc.rpartition("@")
        if ":" in userinfo:
            netloc = f"{userinfo.split(':', 1)[0]}:***@{hostinfo}"
    query = "&".join(f"{part.split('=', 1)[0]}=***" if part.lower().startswith("password=") else part
                     for part in parsed.query.split("&")) if parsed.query else ""
    return parsed._replace(netloc=netloc, query=query).geturl()


_LOOPBACK = ("localhost", "127.0.0.1", "::1")
SECURE_SSLMODES = ("verify-ca", "verify-full")


def database_transport_problem(url: str) -> str | None:
    """Why a database URL's transport is not private, or ``None`` when it is.

    SQLite, a Unix socket and loopback are local; any other PostgreSQL host needs TLS with a
    verified server (``sslmode=verify-ca`` or ``verify-full``: ``require`` encrypts but lets a
    man in the middle answer).
    """
    parsed = urlparse(url)
    if parsed.scheme not in ("postgresql", "postgres"):
        return None
    query = dict(part.split("=", 1) for part in parsed.query.split("&") if "=" in part)
    host = parsed.hostname or query.get("host", "")
    if not host or host.startswith("/") or host in _LOOPBACK or host.startswith("127."):
        return None
    sslmode = query.get("sslmode", "prefer")
    if sslmode in SECURE_SSLMODES:
        return None
    return (f"PostgreSQL host {host} is reached with sslmode={sslmode}: the audit trail and its credentials can "
            "be read or changed on the network")


def sqlite_path(url: str) -> Path:
    """Return the file path of a ``sqlite:///…`` URL.

    Raises:
        ValueError: ``url`` is not a SQLite URL (a caller bug: it was validated at load).
    """
    parsed = urlparse(url)
    if parsed.scheme != "sqlite":
        raise ValueError(f"not a sqlite URL: {url!r}")
    return Path(parsed.path)


def passphrase_from_env(config: HardeningConfig, env: Mapping[str, str]) -> bytes | None:
    """Return the signing-key passphrase from the environment, or ``None`` when unset."""
    value = env.get(config.signing_key_passphrase_env)
    return None if value is None else value.encode("utf-8")


def take_passphrase(config: HardeningConfig, env: MutableMapping[str, str]) -> bytes | None:
    """Read the signing-key passphrase once and remove it from ``env`` (the process environment).

    Removed, it is no longer inherited by the processes Orthanc starts (Lua ``os.execute``,
    jobs) nor readable through ``os.environ`` by other code in the interpreter. (The kernel's
    copy in ``/proc/<pid>/environ`` keeps the value the process started with; only its user and
    root can read it.)
    """
    value = env.pop(config.signing_key_passphrase_env, None)
    return None if value is None else value.encode("utf-8")


def _full(parent: str, name: str) -> str:
    return f"{parent}.{name}"


def _mapping(value: Any, key: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(key, f"must be a JSON object, not {_json_type(value)}")
    return value


def _reject_unknown(section: Mapping[str, Any], known: set[str], parent: str) -> None:
    for name in section:
        if name not in known:
            raise ConfigError(_full(parent, name), f"unknown key (known: {', '.join(sorted(known))})")


def _string(section: Mapping[str, Any], name: str, default: str, parent: str = SECTION) -> str:
    value = section.get(name, default)
    if not isinstance(value, str) or value == "":
        raise ConfigError(_full(parent, name), f"must be a non-empty string, not {_json_type(value)}")
    return value


def _string_list(section: Mapping[str, Any], name: str, parent: str = SECTION) -> list[str]:
    value = section.get(name, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(_full(parent, name), "must be a list of non-empty strings")
    return list(value)


def _boolean(section: Mapping[str, Any], name: str, default: bool, parent: str) -> bool:
    value = section.get(name, default)
    if not isinstance(value, bool):
        raise ConfigError(_full(parent, name), f"must be true or false, not {_json_type(value)}")
    return value


def _integer(
    section: Mapping[str, Any],
    name: str,
    default: int,
    parent: str,
    minimum: int | None = None,
    maximum: int | None = None,
) -> int:
    value = section.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(_full(parent, name), f"must be an integer, not {_json_type(value)}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ConfigError(_full(parent, name), f"{value} is out of range [{minimum}, {maximum}]")
    return value


def _number(
    section: Mapping[str, Any], name: str, default: float, parent: str, minimum: float
) -> float:
    value = section.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(_full(parent, name), f"must be a number, not {_json_type(value)}")
    if value < minimum:
        raise ConfigError(_full(parent, name), f"must be at least {minimum}")
    return float(value)


def _enum(section: Mapping[str, Any], name: str, kind: type[enum.Enum], default: Any) -> Any:
    value = section.get(name, default.value)
    allowed = [m.value for m in kind]
    if value not in allowed:
        raise ConfigError(_full(SECTION, name), f"{value!r} is not one of {', '.join(map(repr, allowed))}")
    return kind(value)


def _require_readable(path: Path, key: str) -> None:
    if not path.is_file():
        raise ConfigError(key, f"file {path} does not exist")
    if not os.access(path, os.R_OK):
        raise ConfigError(key, f"file {path} is not readable by the Orthanc process")


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string" if value else "an empty string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__
