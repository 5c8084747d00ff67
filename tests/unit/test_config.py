"""``config.load_config``: defaults, and an error naming the key for every bad value."""

from __future__ import annotations

from pathlib import Path

import pytest

from orthanc_hardening.config import HardeningConfig, Mode, UnsealedPolicy, load_config, sqlite_path
from orthanc_hardening.errors import ConfigError


def test_missing_section_gives_safe_defaults() -> None:
    config = load_config({})
    # Orthanc's default without RemoteAccessAllowed: no authentication, every request anonymous.
    assert config == HardeningConfig(
        http_authentication=False,
        audit=config.audit
    )  # every top-level field is the dataclass default
    assert config.mode is Mode.ENFORCE
    assert config.unsealed_policy is UnsealedPolicy.SERVE_AND_FLAG
    assert not config.unsealed_policy_configured  # decided at start from the legacy inventory
    assert config.audit.database == "sqlite:///var/lib/orthanc/hardening/audit.db"
    assert config.audit.syslog is None
    assert config.sqlite_synchronous == "NORMAL"
    assert load_config({"Hardening": {"Durability": "power"}}).sqlite_synchronous == "FULL"


def test_full_section_is_parsed(tmp_path: Path) -> None:
    trusted = tmp_path / "old.pub.pem"
    trusted.write_text("-----BEGIN PUBLIC KEY-----\n")
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    config = load_config(
        {
            "Hardening": {
                "Mode": "monitor",
                "DataDirectory": str(tmp_path),
                "SigningKey": str(tmp_path / "k.pem"),
                "SigningKeyPassphraseEnv": "MY_PASS",
                "TrustedKeys": [str(trusted)],
                "Auditors": ["alice"],
                "Administrators": ["admin"],
                "UnsealedPolicy": "refuse",
                "Audit": {
                    "Database": "postgresql://orthanc@db/audit",
                    "Syslog": {"Host": "127.0.0.1", "Port": 6514, "CaCertificate": str(ca)},
                    "CheckpointEvery": 10,
                },
            }
        }
    )
    assert config.mode is Mode.MONITOR and not config.is_enforcing
    assert config.trusted_keys == (trusted,)
    assert config.auditors == ("alice",)
    assert config.unsealed_policy is UnsealedPolicy.REFUSE and config.unsealed_policy_configured
    assert config.audit.syslog is not None and config.audit.syslog.ca_certificate == ca
    assert config.audit.checkpoint_every == 10
    assert config.seal_database == tmp_path / "seals.db"


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"Mood": "enforce"}, "Hardening.Mood"),
        ({"Mode": "relaxed"}, "Hardening.Mode"),
        ({"Mode": True}, "Hardening.Mode"),
        ({"DataDirectory": "relative/dir"}, "Hardening.DataDirectory"),
        ({"DataDirectory": 3}, "Hardening.DataDirectory"),
        ({"Auditors": "alice"}, "Hardening.Auditors"),
        ({"Auditors": [""]}, "Hardening.Auditors"),
        ({"TrustedKeys": ["/nonexistent/key.pem"]}, "Hardening.TrustedKeys[0]"),
        ({"UnsealedPolicy": "ignore"}, "Hardening.UnsealedPolicy"),
        ({"Durability": "disk"}, "Hardening.Durability"),
        ({"Audit": []}, "Hardening.Audit"),
        ({"Audit": {"Databse": "x"}}, "Hardening.Audit.Databse"),
        ({"Audit": {"Database": "mysql://db/x"}}, "Hardening.Audit.Database"),
        ({"Audit": {"Database": "sqlite://relative.db"}}, "Hardening.Audit.Database"),
        ({"Audit": {"CheckpointEvery": 0}}, "Hardening.Audit.CheckpointEvery"),
        ({"Audit": {"CheckpointEvery": "10"}}, "Hardening.Audit.CheckpointEvery"),
        ({"Audit": {"Syslog": {"Port": 6514}}}, "Hardening.Audit.Syslog.Host"),
        ({"Audit": {"Syslog": {"Host": "h", "Port": 70000}}}, "Hardening.Audit.Syslog.Port"),
        ({"Audit": {"Syslog": {"Host": "h"}}}, "Hardening.Audit.Syslog.CaCertificate"),
        (
            {"Audit": {"Syslog": {"Host": "h", "CaCertificate": "/nonexistent.pem"}}},
            "Hardening.Audit.Syslog.CaCertificate",
        ),
    ],
)
def test_bad_value_names_the_key(section: dict, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config({"Hardening": section})
    assert caught.value.key == key
    assert key in str(caught.value)


def test_section_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(ConfigError, match="must be a JSON object"):
        load_config({"Hardening": "enforce"})


def test_sqlite_path_of_a_url() -> None:
    assert sqlite_path("sqlite:///var/lib/x/audit.db") == Path("/var/lib/x/audit.db")
    with pytest.raises(ValueError):
        sqlite_path("postgresql://h/db")


def test_database_puts_the_stores_and_the_audit_trail_in_postgresql() -> None:
    url = "postgresql://orthanc@db.example/archive?sslmode=verify-full"
    config = load_config({"Hardening": {"Database": url}})
    assert (config.database, config.shared_database) == (url, url)
    assert (config.audit.database, config.audit_schema) == (url, "hardening_audit")
    own = load_config({"Hardening": {"Database": url, "Audit": {"Database": "sqlite:///srv/audit.db"}}})
    assert (own.audit.database, own.audit_schema) == ("sqlite:///srv/audit.db", None)
    default = load_config({})
    assert (default.database, default.shared_database, default.audit_schema) == (None, None, None)
    assert load_config({"Hardening": {"Database": "sqlite:///srv/x.db"}}).shared_database is None
    with pytest.raises(ConfigError) as caught:
        load_config({"Hardening": {"Database": "mysql://db/x"}})
    assert caught.value.key == "Hardening.Database"
