"""The deployment's scripts on their own: the secrets' path to Orthanc, the entry point, the health checks.

Fast, no Orthanc: ``docker/instance_config.py`` and ``docker/db_password.py`` with hostile
passwords, ``docker/entrypoint.sh`` in front of a stand-in image entry point that records what
it was given, ``docker/healthcheck.py``'s decision on canned answers, and
``docker/syslog/healthcheck.sh`` against a real listening socket; the entry point joining a node
(``HARDENING_JOIN``) with real devsetup homes.
"""

from __future__ import annotations

import json
import os
import socket
import string
import subprocess
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict

from tests.support import orthanc_image
from tests.support.deployment import REPO
from tests.support.docker_scripts import load

instance_config = load("instance_config")
db_password = load("db_password")
healthcheck = load("healthcheck")

CREDENTIALS = {"admin": "A" * 24, "auditor": "B" * 24, "user": "C" * 24}
# Each would break one way or another if it were an ORTHANC__ value or put in a URL unencoded.
HOSTILE = ["20261201093000123456", "true", "null", "NaN", "[1]", "{}", "p@ss:w/rd?#%", "$HOME${HOME}", "é-ünïcode"]


@pytest.mark.parametrize("password", HOSTILE)
def test_generated_secrets_reach_the_configuration_unchanged(password: str) -> None:
    generated = instance_config.instance_config(CREDENTIALS, password,
                                                "postgresql://orthanc@postgres:5432/hardening_audit")
    document = json.dumps(generated, ensure_ascii=True)
    # The image merges ORTHANC_JSON after removing comments: nothing in it may change.
    config: dict = {}
    orthanc_image.merge(config, json.loads(orthanc_image.strip_comments(document)))
    assert config["PostgreSQL"]["Password"] == password
    assert config["RegisteredUsers"] == CREDENTIALS
    parsed = conninfo_to_dict(config["Hardening"]["Audit"]["Database"])
    assert parsed == {"user": "orthanc", "password": password, "host": "postgres", "port": "5432",
                      "dbname": "hardening_audit"}


def test_audit_url_with_a_password_or_without_a_user_is_refused() -> None:
    with pytest.raises(instance_config.InstanceConfigError, match="holds a password"):
        instance_config.audit_database_url("postgresql://orthanc:pw@postgres/db", "x")
    with pytest.raises(instance_config.InstanceConfigError, match="name the user"):
        instance_config.audit_database_url("postgresql://postgres/db", "x")
    with pytest.raises(instance_config.InstanceConfigError, match="not a PostgreSQL URL"):
        instance_config.audit_database_url("sqlite:///x.db", "x")


def test_an_operators_orthanc_json_is_kept_and_a_conflict_named(tmp_path: Path, capsys) -> None:
    credentials = tmp_path / "credentials.json"
    credentials.write_text(json.dumps(CREDENTIALS))
    environ = {"ORTHANC_JSON": json.dumps({"RegisteredUsers": {"alice": "D" * 24}, "Name": "site"})}
    assert instance_config.main(["--credentials", str(credentials)], environ) == 0
    merged = json.loads(capsys.readouterr().out)
    assert merged["Name"] == "site" and merged["RegisteredUsers"] == {"alice": "D" * 24, **CREDENTIALS}
    environ = {"ORTHANC_JSON": json.dumps({"RegisteredUsers": {"admin": "mine"}})}
    assert instance_config.main(["--credentials", str(credentials)], environ) == 1
    assert "ORTHANC_JSON already sets RegisteredUsers.admin" in capsys.readouterr().err


def test_database_password_is_created_once_and_private(tmp_path: Path) -> None:
    path = tmp_path / "db" / "password"
    assert db_password.ensure_password(path) is True
    created = path.read_text()
    assert len(created) == 32 and set(created) <= set(string.ascii_letters + string.digits + "-_")
    assert path.stat().st_mode & 0o777 == 0o600
    assert db_password.ensure_password(path) is False and path.read_text() == created


@pytest.mark.parametrize("password", ["a b", "a\\b", "'ab", 'a"b', "a\tb", "two\nlines", "", "x" * 101])
def test_passwords_the_postgresql_plugin_would_mangle_are_refused(password: str, tmp_path: Path) -> None:
    with pytest.raises(db_password.PasswordError):
        db_password.check_password(password)
    path = tmp_path / "password"
    path.write_text(password)
    with pytest.raises(instance_config.InstanceConfigError):
        instance_config.read_password(path)


# -- docker/entrypoint.sh ---------------------------------------------------------------------


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    (home / "keys").mkdir(parents=True)
    (home / "credentials.json").write_text(json.dumps(CREDENTIALS))
    (home / "keys" / "passphrase").write_text("the-passphrase")
    (home / "keys" / "seal-key.pem").write_text("key")
    (tmp_path / "password").write_text(HOSTILE[0])
    recorder = tmp_path / "image-entrypoint"
    recorder.write_text('#!/bin/bash\nprintf "%s\\n" "$#" "$@" > "$RECORD"\nenv > "$RECORD.env"\n')
    recorder.chmod(0o755)
    return home


def run_entrypoint(home: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    base = home.parent
    env = {"PATH": os.environ["PATH"], "HARDENING_HOME": str(home), "RECORD": str(base / "record"),
           "HARDENING_IMAGE_ENTRYPOINT": str(base / "image-entrypoint"),
           "HARDENING_DB_PASSWORD_FILE": str(base / "password"),
           "HARDENING_AUDIT_DATABASE": "postgresql://orthanc@postgres:5432/hardening_audit", **extra}
    return subprocess.run(["bash", str(REPO / "docker" / "entrypoint.sh"), *args], env=env, capture_output=True,
                          text=True, timeout=30, check=False)


def test_entrypoint_hands_its_one_argument_and_the_secrets_to_the_image(home: Path) -> None:
    (home / "storage").mkdir(mode=0o755)
    result = run_entrypoint(home, "/tmp/orthanc.json")
    assert result.returncode == 0, result.stderr
    assert (home.parent / "record").read_text().splitlines() == ["1", "/tmp/orthanc.json"]
    env = dict(line.split("=", 1) for line in (home.parent / "record.env").read_text().splitlines() if "=" in line)
    assert env["HARDENING_KEY_PASSPHRASE"] == "the-passphrase"
    config = json.loads(env["ORTHANC_JSON"])
    assert config["PostgreSQL"]["Password"] == HOSTILE[0] and config["RegisteredUsers"] == CREDENTIALS
    for directory in (home, home / "storage", home / "hardening"):
        assert directory.stat().st_mode & 0o777 == 0o700, directory


@pytest.mark.parametrize("args", [(), ("/tmp/orthanc.json", "--verbose")])
def test_entrypoint_refuses_anything_but_one_argument(home: Path, args: tuple[str, ...]) -> None:
    result = run_entrypoint(home, *args)
    assert result.returncode == 2 and "expected exactly one argument" in result.stderr
    assert not (home.parent / "record").exists()


def test_entrypoint_names_what_the_init_service_did_not_create(home: Path) -> None:
    (home / "keys" / "passphrase").unlink()
    result = run_entrypoint(home, "/tmp/orthanc.json")
    assert result.returncode == 1 and "keys/passphrase is missing: the init service creates it" in result.stderr
    (home / "keys" / "passphrase").write_text("p")
    (home.parent / "password").write_text("a b")
    result = run_entrypoint(home, "/tmp/orthanc.json")
    assert result.returncode == 1 and "passes to libpq unquoted" in result.stderr
    assert not (home.parent / "record").exists()


# -- docker/entrypoint.sh on a further node (HARDENING_JOIN) -----------------------------------

VENV_BIN = REPO / ".venv" / "bin"
TRUST = ("tls/ca.pem", "tls/ca.key", "tls/client.pem", "tls/client.key", "keys/seal-key.pem", "keys/passphrase",
         "credentials.json", "hardening/keys/registry.json")


def devsetup(home: Path) -> None:
    subprocess.run([str(VENV_BIN / "python"), "-m", "orthanc_hardening", "devsetup", "--home", str(home)],
                   env={**os.environ, "PYTHONPATH": str(REPO / "plugin")}, capture_output=True, text=True,
                   timeout=60, check=True)


@pytest.fixture
def node1(tmp_path: Path) -> Path:
    """A running node's home: devsetup's files and the key registry its first start wrote."""
    home = tmp_path / "node1"
    devsetup(home)
    (home / "hardening" / "keys").mkdir(parents=True)
    (home / "hardening" / "keys" / "registry.json").write_text('{"entries": []}')
    (tmp_path / "password").write_text(HOSTILE[0])
    recorder = tmp_path / "image-entrypoint"
    recorder.write_text('#!/bin/bash\nprintf "%s\\n" "$#" "$@" > "$RECORD"\nenv > "$RECORD.env"\n')
    recorder.chmod(0o755)
    return home


def run_joining_entrypoint(node1: Path, node2: Path) -> subprocess.CompletedProcess[str]:
    # The image's python3 has the plugin's dependencies; here the venv's python3 stands in for it.
    return run_entrypoint(node2, "/tmp/orthanc.json", HARDENING_JOIN=str(node1),
                          PATH=f"{VENV_BIN}:{os.environ['PATH']}", HARDENING_SITE_PACKAGES=str(node1.parent / "none"),
                          HARDENING_DATABASE="postgresql://orthanc@postgres:5432/hardening_audit")


def test_entrypoint_joins_a_node_and_issues_its_own_server_certificate(node1: Path) -> None:
    from cryptography import x509

    node2 = node1.parent / "node2"
    result = run_joining_entrypoint(node1, node2)
    assert result.returncode == 0, result.stderr
    for name in TRUST:
        assert (node2 / name).read_bytes() == (node1 / name).read_bytes(), name
    for name in ("tls/ca.key", "tls/client.key", "keys/seal-key.pem", "keys/passphrase", "credentials.json"):
        assert (node2 / name).stat().st_mode & 0o777 == 0o600, name
    own, theirs = (x509.load_pem_x509_certificate((home / "tls" / "server.crt").read_bytes())
                   for home in (node2, node1))
    ca = x509.load_pem_x509_certificate((node1 / "tls" / "ca.pem").read_bytes())
    assert own.serial_number != theirs.serial_number
    own.verify_directly_issued_by(ca)
    env = dict(line.split("=", 1) for line in (node2.parent / "record.env").read_text().splitlines() if "=" in line)
    config = json.loads(env["ORTHANC_JSON"])
    assert conninfo_to_dict(config["Hardening"]["Database"])["password"] == HOSTILE[0]
    assert config["RegisteredUsers"] == json.loads((node1 / "credentials.json").read_text())
    # Every later start: nothing to take, nothing changed.
    before = {name: (node2 / name).read_bytes() for name in (*TRUST, "tls/server.pem")}
    assert run_joining_entrypoint(node1, node2).returncode == 0
    assert {name: (node2 / name).read_bytes() for name in before} == before


@pytest.mark.attack
def test_a_node_with_trust_of_its_own_cannot_join(node1: Path) -> None:
    # A home that made its own CA and signing key would serve certificates and seals nobody trusts.
    node2 = node1.parent / "node2"
    devsetup(node2)
    before = {name: (node2 / name).read_bytes() for name in ("tls/ca.pem", "keys/seal-key.pem")}
    result = run_joining_entrypoint(node1, node2)
    assert result.returncode == 1
    assert "already has its own tls/ca.pem" in result.stderr and "could not join" in result.stderr
    assert not (node2.parent / "record").exists()
    assert {name: (node2 / name).read_bytes() for name in before} == before


def test_joining_a_missing_node_creates_no_trust_of_its_own(node1: Path) -> None:
    node2 = node1.parent / "node2"
    result = run_joining_entrypoint(node1.parent / "no-such-node", node2)
    assert result.returncode == 1 and "no such directory" in result.stderr
    assert not (node2 / "tls").exists() and not (node2 / "keys").exists()
    assert not (node2.parent / "record").exists()


# -- docker/healthcheck.py --------------------------------------------------------------------

Answer = healthcheck.Answer
SYSTEM = Answer(200, {"StorageAreaPlugin": "/usr/share/orthanc/plugins/libOrthancPython.so",
                      "DatabaseBackendPlugin": "/usr/share/orthanc/plugins/libOrthancPostgreSQLIndex.so"})
PLUGINS = Answer(200, ["python", "dicom-web", "postgresql-index", "orthanc-explorer-2"])
POSTURE = Answer(200, {"mode": "enforce", "lockdown": [], "checks": []})
REQUIRED = ["python", "dicom-web", "postgresql-index", "orthanc-explorer-2"]


def test_healthy_deployment_has_no_problem() -> None:
    assert healthcheck.diagnose(SYSTEM, PLUGINS, POSTURE, REQUIRED) == []


def test_python_plugin_without_the_hardening_script_is_unhealthy() -> None:
    problems = healthcheck.diagnose(Answer(200, {"StorageAreaPlugin": None, "DatabaseBackendPlugin": "x"}),
                                    PLUGINS, Answer(404), REQUIRED)
    assert problems == ["the storage area is Orthanc's own, not the Python plugin's: files are not sealed",
                        "GET /hardening/posture answered 404: the hardening plugin is not running"]


def test_lockdown_is_unhealthy_and_names_the_checks() -> None:
    locked = Answer(403, {"error": "forbidden", "failed_checks": ["http-default-credentials"]})
    assert healthcheck.diagnose(locked, locked, locked, REQUIRED) == [
        "orthanc-hardening is in lockdown, failed critical checks: http-default-credentials"]
    posture = Answer(200, {"lockdown": ["dicom-tls"]})
    assert healthcheck.diagnose(SYSTEM, PLUGINS, posture, REQUIRED) == ["orthanc-hardening is in lockdown: dicom-tls"]


def test_missing_plugins_and_sqlite_index_are_unhealthy() -> None:
    system = Answer(200, {"StorageAreaPlugin": "/p/libOrthancPython.so", "DatabaseBackendPlugin": None})
    problems = healthcheck.diagnose(system, Answer(200, ["python"]), POSTURE, REQUIRED)
    assert problems == ["the index is Orthanc's own SQLite, not PostgreSQL (DatabaseBackendPlugin is null)",
                        "plugins not loaded: dicom-web, postgresql-index, orthanc-explorer-2 (loaded: python)"]


def test_no_answer_is_unhealthy() -> None:
    down = Answer(0, error="connection refused")
    assert healthcheck.diagnose(down, down, down, ["python"]) == [
        "GET /system: no answer (connection refused)", "GET /plugins: no answer (connection refused)",
        "GET /hardening/posture: no answer (connection refused)"]


def test_python_is_always_required() -> None:
    assert healthcheck.required_plugins({}) == ["python"]
    assert healthcheck.required_plugins({"HARDENING_HEALTHCHECK_PLUGINS": "dicom-web, python"}) == ["dicom-web",
                                                                                                   "python"]


def test_healthcheck_refuses_a_configuration_without_https(tmp_path: Path) -> None:
    (tmp_path / "credentials.json").write_text(json.dumps(CREDENTIALS))
    (tmp_path / "orthanc.json").write_text(json.dumps({"SslEnabled": False, "HttpPort": 1}))
    problems = healthcheck.check({"HARDENING_HOME": str(tmp_path),
                                  "HARDENING_GENERATED_CONFIG": str(tmp_path / "orthanc.json")})
    assert problems == [f"HTTPS is off (SslEnabled is not true in {tmp_path / 'orthanc.json'})"]


# -- docker/syslog/healthcheck.sh -------------------------------------------------------------


def syslog_check(port: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(REPO / "docker" / "syslog" / "healthcheck.sh")], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "SYSLOG_PORT": str(port)}, timeout=10, check=False)


def test_syslog_healthcheck_sees_a_listening_port_only() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        port = server.getsockname()[1]
        assert syslog_check(port).returncode == 1  # bound, not listening
        server.listen()
        assert syslog_check(port).returncode == 0
    result = syslog_check(port)
    assert result.returncode == 1 and f"nothing listens on TCP port {port}" in result.stderr
