"""The Docker deployment end to end on the forky target, without a Docker engine.

Orthanc 1.13.0 with the Python plugin 7.1 (Python 3.14) is what the orthancteam/orthanc 26.8.x
images run; the forky target has Debian's build of the same versions. What runs here is the
deployment's own: ``docker/install-python-deps.sh`` on ``docker/requirements.lock`` (the
image's dependency step), ``docker/init.sh`` (the init service's entry point),
``docker/entrypoint.sh`` started with the Dockerfile's ``ENTRYPOINT`` and ``CMD``,
``docker/healthcheck.py`` and ``docker/syslog/healthcheck.sh`` (the health checks),
``docker/syslog/rsyslog.conf``, ``docker/postgres/init-audit.sql``, the repository's
``orthanc.json`` as the Compose file mounts it and the environment that ``docker/Dockerfile``
and ``docker-compose.yml`` give each service. What stands in for Docker, and why:

- each container's file system is a tree under a temporary folder (``ContainerTree``: symlinks
  for what the Dockerfile copies and the Compose file mounts, folders for named volumes); the
  image paths in the variables, in the scripts' defaults and in the Dockerfile's ``CMD`` are
  moved into it, and nothing else is changed;
- the image's ``/docker-entrypoint.sh`` is ``tests/support/image_entrypoint.py``, which builds
  the configuration with the image's rules (``tests/support/orthanc_image.py``) and starts
  Orthanc as the image does;
- Orthanc and its Python, DICOMweb and PostgreSQL plugins are Debian's (the image has its own
  builds: PostgreSQL plugin 10.3 there, 5.0 here), with the libssl shim Debian's civetweb needs;
  Debian packages neither Orthanc Explorer 2 nor GDCM, so their configuration is checked, not
  their running, and the health check is not asked for ``orthanc-explorer-2``;
- the postgres service is a PostgreSQL 18 cluster started here and set up as the postgres
  image's entry point does (user ``orthanc`` with the password of the db-secret volume,
  password authentication on TCP, database ``orthanc``, then ``init-audit.sql`` as that user);
- the syslog service is rsyslogd with the deployment's configuration, bound to 127.0.0.1;
- Docker's networks: the service names ``postgres`` and ``syslog`` and the frontend gateway
  (where the development modality is declared) become 127.0.0.1, and every port a free one.

The database password is an operator's own, written before the first start, and looks like a
number: the image would have made it a JSON number had it gone through an ``ORTHANC__``
variable. Runs on forky only (skipped elsewhere); on forky anything missing fails the test.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
from lxml import etree
from psycopg import sql

from tests.support.deployment import (
    ORTHANC_DOCKERFILE,
    REPO,
    ContainerTree,
    Dockerfile,
    compose,
    container_environment,
    image_paths,
    script_path_defaults,
    service_mounts,
)
from tests.support.dicom import make_instance
from tests.support.orthanc_image import lookup, strip_comments
from tests.support.postgres import PostgresServer
from tests.support.server import SHIM_DIR, free_port, orthanc_version, wait_for_port

pytestmark = [pytest.mark.integration]

FORKY = (1, 13, 0)
# An operator's own PostgreSQL password that the image would type as a JSON number.
OPERATOR_PASSWORD = "20261201093000123456"
DEBIAN_PLUGINS = Path("/usr/share/orthanc/plugins")
# Variables that name host paths on purpose: the search path, and the libssl shim Debian's civetweb
# needs (the checkout may itself lie under a folder the image also has, such as /tmp).
HOST_PATHS = ("PATH", "LD_LIBRARY_PATH")
# What the image's plugins-available holds that Debian does not package.
NOT_IN_DEBIAN = {"libOrthancExplorer2.so", "libOrthancGdcm.so"}
RSYSLOGD = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
LOCK = REPO / "docker" / "requirements.lock"
VENV_PYTHON = REPO / ".venv" / "bin" / "python"
SCHEMA = etree.RelaxNG(etree.parse(str(REPO / "tests" / "data" / "dicom-audit-message.rng")))
CHECKPOINT = re.compile(r'^<\d+>1 \S+ \S+ orthanc-hardening \S+ HARDENING-CHECKPOINT \[meta sequenceId="\d+"\] \{.*\}$')
RAW = re.compile(r'^<(\d+)>1 \S+ \S+ orthanc-hardening \S+ IHE\+RFC-3881 \[meta sequenceId="(\d+)"\] (<\?xml.*)$')
DEPLOYMENT_SCRIPTS = [*sorted((REPO / "docker").glob("*.sh")), *sorted((REPO / "docker").glob("*.py")),
                      *sorted((REPO / "docker" / "syslog").glob("*.sh"))]
START_TIMEOUT = 60.0


def stop_service(process: subprocess.Popen[bytes] | None) -> int | None:
    """``docker stop`` of one service: SIGTERM to its process group, SIGKILL after 30 s; its exit status."""
    if process is None:
        return None
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    return process.returncode


def wait_until(predicate: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def site_packages() -> Path:
    """The image's dependency step run once per lock file (kept in build/, the target's own)."""
    digest = hashlib.sha256(LOCK.read_bytes() + (REPO / "docker" / "install-python-deps.sh").read_bytes())
    done = REPO / "build" / "docker-site-packages" / digest.hexdigest()[:16]
    if (done / ".complete").exists():
        return done
    if not VENV_PYTHON.exists():
        pytest.fail(f"{VENV_PYTHON} is missing: run `make deps`")
    partial = done.with_name(done.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["bash", str(REPO / "docker" / "install-python-deps.sh"), str(LOCK), str(partial)],
        env={**os.environ, "HARDENING_PIP_PYTHON": str(VENV_PYTHON)},
        capture_output=True, text=True, timeout=600, check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"docker/install-python-deps.sh failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    (partial / ".complete").write_text(result.stdout)
    shutil.rmtree(done, ignore_errors=True)
    partial.rename(done)
    return done


class Deployment:
    """The Compose services as processes on this machine (see the module docstring)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.compose = compose()
        self.services: dict[str, Any] = self.compose["services"]
        self.dockerfile = Dockerfile(ORTHANC_DOCKERFILE)
        self.volumes = base / "volumes"
        self.trees: dict[str, ContainerTree] = {}
        self.http_port, self.dicom_port, self.syslog_port = free_port(), free_port(), free_port()
        self.postgres: PostgresServer | None = None
        self.rsyslog: subprocess.Popen[bytes] | None = None
        self.orthanc: subprocess.Popen[bytes] | None = None
        self.orthanc_variant: dict[str, str] | None = None
        self.orthanc_log = base / "orthanc.log"
        # The second node (orthanc-2): its own ports and log, the same PostgreSQL and storage.
        self.node2_http_port, self.node2_dicom_port = free_port(), free_port()
        self.node2: subprocess.Popen[bytes] | None = None
        self.node2_log = base / "orthanc-2.log"

    # -- file trees and environments -------------------------------------------------------

    def build(self) -> None:
        packages = site_packages()
        for name in ("init", "orthanc", "orthanc-2"):
            tree = ContainerTree(self.base / name, self.volumes)
            tree.copy_from(self.dockerfile)
            tree.mount(service_mounts(self.services[name]))
            tree.link("/usr/share/orthanc-hardening/site-packages", packages)
            tree.link("/docker-entrypoint.sh", REPO / "tests" / "support" / "image_entrypoint.py")
            available = tree.folder("/usr/share/orthanc/plugins-available")
            for library in sorted(DEBIAN_PLUGINS.glob("*.so")):
                (available / library.name).symlink_to(library)
            for folder in ("/usr/share/orthanc/plugins", "/tmp", "/startup"):
                tree.folder(folder)
            self.trees[name] = tree
        syslog = ContainerTree(self.base / "syslog", self.volumes)
        syslog.mount(service_mounts(self.services["syslog"]))
        self.trees["syslog"] = syslog

    @property
    def home(self) -> Path:
        return self.volumes / "hardening-home"

    @property
    def home2(self) -> Path:
        return self.volumes / "hardening-home-2"

    @property
    def ca(self) -> Path:
        return self.home / "tls" / "ca.pem"

    @property
    def credentials(self) -> dict[str, str]:
        loaded: dict[str, str] = json.loads((self.home / "credentials.json").read_text())
        return loaded

    def environment(self, service: str, network: Mapping[str, str], extra: Mapping[str, str] | None = None
                    ) -> dict[str, str]:
        """The service's environment with the image paths moved into its tree and Docker's
        network names and ports replaced by ``network`` (each must replace a value that exists)."""
        tree = self.trees[service]
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "HOME": "/root",
               "LANG": "C.UTF-8", "PYTHONUTF8": "1"}
        for name, value in container_environment(self.services[service]).items():
            env[name] = tree.relocate_value(value)
        for name, default in script_path_defaults(DEPLOYMENT_SCRIPTS).items():
            env.setdefault(name, tree.relocate(default))
        for name, value in network.items():
            assert name in env, f"{name} is not in the {service} service's environment any more"
            assert env[name] != value, f"{name}: nothing to replace"
            env[name] = value
        env.update(extra or {})
        for name, value in env.items():
            for path in image_paths(value):
                assert path.startswith(str(tree.root)) or name in HOST_PATHS, f"{name}={value}: {path} not moved"
        return env

    def orthanc_environment(self, variant: Mapping[str, str] | None = None, name: str = "orthanc"
                            ) -> dict[str, str]:
        service = container_environment(self.services[name])
        assert self.postgres is not None
        http_port, dicom_port = ((self.http_port, self.dicom_port) if name == "orthanc"
                                 else (self.node2_http_port, self.node2_dicom_port))
        network = {
            "ORTHANC__HTTP_PORT": str(http_port),
            "ORTHANC__DICOM_PORT": str(dicom_port),
            "ORTHANC__POSTGRESQL__HOST": "127.0.0.1",
            "ORTHANC__POSTGRESQL__PORT": str(self.postgres.port),
            "ORTHANC__HARDENING__AUDIT__SYSLOG__HOST": "127.0.0.1",
            "ORTHANC__HARDENING__AUDIT__SYSLOG__PORT": str(self.syslog_port),
            "HARDENING_AUDIT_DATABASE": service["HARDENING_AUDIT_DATABASE"].replace(
                "@postgres:5432/", f"@127.0.0.1:{self.postgres.port}/"),
            "HARDENING_DATABASE": service["HARDENING_DATABASE"].replace(
                "@postgres:5432/", f"@127.0.0.1:{self.postgres.port}/"),
            "ORTHANC__DICOM_MODALITIES": service["ORTHANC__DICOM_MODALITIES"].replace("172.29.60.1", "127.0.0.1"),
        }
        tree = self.trees[name]
        extra = {
            # Debian's civetweb needs the libssl shim for HTTPS (the image's Orthanc does not).
            "LD_LIBRARY_PATH": str(SHIM_DIR),
            "HARDENING_TEST_IMAGE_ROOT": str(tree.root),
        }
        extra.update({name: tree.relocate_value(value) for name, value in (variant or {}).items()})
        return self.environment(name, network, extra)

    # -- services ----------------------------------------------------------------------------

    def run_init(self) -> subprocess.CompletedProcess[str]:
        tree = self.trees["init"]
        entrypoint = [tree.relocate_value(arg) for arg in self.services["init"]["entrypoint"]]
        env = self.environment("init", {"SYSLOG_HOSTNAME": "127.0.0.1"})
        result = subprocess.run(entrypoint, env=env, capture_output=True, text=True, timeout=120, check=False)
        assert result.returncode == 0, f"init failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        return result

    def start_postgres(self) -> None:
        """A PostgreSQL 18 cluster set up as the postgres image's entry point sets it up."""
        server = PostgresServer()
        self.postgres = server.start()
        password = (self.volumes / "db-secret" / "password").read_text()
        environment = self.services["postgres"]["environment"]
        user, database = environment["POSTGRES_USER"], environment["POSTGRES_DB"]
        with psycopg.connect(server.url(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN SUPERUSER PASSWORD {}").format(
                sql.Identifier(user), sql.Literal(password)))
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(database), sql.Identifier(user)))
        # The image asks for a password on every TCP connection (the test's own superuser keeps trust).
        (server.data / "pg_hba.conf").write_text(
            "local all all trust\n"
            f"host all {server.user} 127.0.0.1/32 trust\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
        )
        with psycopg.connect(server.url(), autocommit=True) as conn:
            conn.execute("SELECT pg_reload_conf()")
        init_sql = next(m for m in service_mounts(self.services["postgres"]) if m.target.startswith(
            "/docker-entrypoint-initdb.d/"))
        result = subprocess.run(
            [str(server.bin / "psql"), "-v", "ON_ERROR_STOP=1", "--no-password", "--no-psqlrc", "-h", "127.0.0.1",
             "-p", str(server.port), "-U", user, "-d", database, "-f", str(REPO / init_sql.source)],
            env={**os.environ, "PGPASSWORD": password}, capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 0, f"init-audit.sql as {user} with the generated password: {result.stderr}"

    def start_syslog(self) -> None:
        tree = self.trees["syslog"]
        text = tree.relocate_value((REPO / "docker" / "syslog" / "rsyslog.conf").read_text())
        listen = 'input(type="imtcp" port="6514"'
        assert text.count(listen) == 1, "rsyslog.conf: the TLS input is not where the test expects it"
        text = text.replace(listen, f'input(type="imtcp" port="{self.syslog_port}" address="127.0.0.1"')
        work = self.base / "rsyslog-work"
        work.mkdir(exist_ok=True)
        text = f'global(workDirectory="{work}")\n' + text
        conf = self.base / "rsyslog.conf"
        conf.write_text(text)
        self.rsyslog = subprocess.Popen(
            [RSYSLOGD, "-n", "-f", str(conf), "-i", str(self.base / "rsyslogd.pid")],
            stdout=subprocess.DEVNULL, stderr=(self.base / "rsyslogd.err").open("ab"), start_new_session=True)
        if not wait_for_port(self.syslog_port, timeout=15):
            raise AssertionError("rsyslogd did not listen: " + (self.base / "rsyslogd.err").read_text()[-2000:])

    @property
    def audit_log(self) -> Path:
        return self.volumes / "audit-log" / "audit.log"

    def start_orthanc(self, variant: Mapping[str, str] | None = None) -> None:
        """Start the orthanc service as Docker would: ``ENTRYPOINT`` + ``CMD``, the service's environment."""
        if self.orthanc is not None and self.orthanc_variant == dict(variant or {}):
            return
        self.stop_orthanc()
        tree = self.trees["orthanc"]
        entrypoint = self.dockerfile.exec_form("ENTRYPOINT") or []
        command = self.dockerfile.cmd_after_entrypoint() or []
        argv = [tree.relocate_value(arg) for arg in [*entrypoint, *command]]
        self.orthanc_variant = dict(variant or {})
        with self.orthanc_log.open("ab") as log:
            log.write(f"\n==== start {argv} variant={self.orthanc_variant}\n".encode())
            self.orthanc = subprocess.Popen(argv, env=self.orthanc_environment(variant), stdout=log,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        last = ""
        while time.monotonic() < deadline:
            if self.orthanc.poll() is not None:
                raise AssertionError(f"Orthanc exited with {self.orthanc.returncode}:\n{self.log_tail()}")
            try:
                if self.get("/system", timeout=2).status_code in (200, 403):
                    return
            except requests.RequestException as exc:
                last = str(exc)
            time.sleep(0.1)
        raise AssertionError(f"Orthanc did not answer in {START_TIMEOUT:.0f} s ({last}):\n{self.log_tail()}")

    def stop_orthanc(self) -> int | None:
        """``docker stop``: SIGTERM to the service's process (Orthanc, after the two ``exec``), then SIGKILL."""
        process, self.orthanc = self.orthanc, None
        return stop_service(process)

    def start_node2(self) -> None:
        """Start the orthanc-2 service as Docker would (once node 1 is healthy, as it depends on)."""
        if self.node2 is not None:
            return
        tree = self.trees["orthanc-2"]
        entrypoint = self.dockerfile.exec_form("ENTRYPOINT") or []
        command = self.dockerfile.cmd_after_entrypoint() or []
        argv = [tree.relocate_value(arg) for arg in [*entrypoint, *command]]
        with self.node2_log.open("ab") as log:
            log.write(f"\n==== start {argv}\n".encode())
            self.node2 = subprocess.Popen(argv, env=self.orthanc_environment(name="orthanc-2"), stdout=log,
                                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        last = ""
        while time.monotonic() < deadline:
            if self.node2.poll() is not None:
                tail = "\n".join(self.node2_log.read_text(errors="replace").splitlines()[-60:])
                raise AssertionError(f"orthanc-2 exited with {self.node2.returncode}:\n{tail}")
            try:
                if self.get("/system", node=2, timeout=2).status_code in (200, 403):
                    return
            except requests.RequestException as exc:
                last = str(exc)
            time.sleep(0.1)
        tail = "\n".join(self.node2_log.read_text(errors="replace").splitlines()[-60:])
        raise AssertionError(f"orthanc-2 did not answer in {START_TIMEOUT:.0f} s ({last}):\n{tail}")

    def stop_node2(self) -> int | None:
        process, self.node2 = self.node2, None
        return stop_service(process)

    def stop_all(self) -> None:
        self.stop_node2()
        self.stop_orthanc()
        if self.rsyslog is not None and self.rsyslog.poll() is None:
            self.rsyslog.terminate()
            self.rsyslog.wait(timeout=15)
        if self.postgres is not None:
            self.postgres.destroy()

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.orthanc_log.read_text(errors="replace").splitlines()[-lines:])

    # -- clients ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        # The server certificate names localhost (devsetup), as a browser on the Docker host uses it.
        return f"https://localhost:{self.http_port}"

    def request(self, method: str, path: str, user: str | None = "admin", node: int = 1, **kwargs: Any
                ) -> requests.Response:
        kwargs.setdefault("verify", str(self.ca))
        kwargs.setdefault("timeout", 30)
        if user is not None:
            kwargs.setdefault("auth", (user, self.credentials[user]))
        url = self.url if node == 1 else f"https://localhost:{self.node2_http_port}"
        return requests.request(method, url + path, **kwargs)

    def get(self, path: str, user: str | None = "admin", node: int = 1, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, user, node, **kwargs)

    def healthcheck(self, variant: Mapping[str, str] | None = None, name: str = "orthanc"
                    ) -> subprocess.CompletedProcess[str]:
        """An orthanc service's health check, as Docker runs it (``CMD`` form) in the container."""
        test = self.services[name]["healthcheck"]["test"]
        assert test[0] == "CMD"
        tree = self.trees[name]
        env = self.orthanc_environment(variant, name)
        env.pop("ORTHANC_JSON", None)
        # Debian does not package Orthanc Explorer 2; every other required plugin is asked for.
        required = [p for p in env["HARDENING_HEALTHCHECK_PLUGINS"].split(",") if p != "orthanc-explorer-2"]
        env["HARDENING_HEALTHCHECK_PLUGINS"] = ",".join(required)
        argv = [tree.relocate_value(arg) for arg in test[1:]]
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30, check=False)

    def audit_rows(self, where: str = "TRUE", *args: Any) -> list[dict[str, Any]]:
        """Rows of the audit trail, read in PostgreSQL directly.

        The audit database is also the plugin's store (``Hardening.Database``): the trail is
        then in its schema ``hardening_audit`` (README "Several nodes: the plugin's database").
        """
        assert self.postgres is not None
        environment = self.services["orthanc"]["environment"]
        database = environment["HARDENING_AUDIT_DATABASE"].rsplit("/", 1)[1]
        shared = environment.get("HARDENING_DATABASE") == environment["HARDENING_AUDIT_DATABASE"]
        options = "-c search_path=hardening_audit" if shared else ""
        with psycopg.connect(self.postgres.url(database), options=options) as conn, conn.cursor() as cursor:
            cursor.execute(f"SELECT * FROM events WHERE {where} ORDER BY seq", args)
            names = [column.name for column in cursor.description or []]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    if orthanc_version() < FORKY:
        pytest.skip("the Docker deployment is tested on the forky target (Orthanc 1.13.0 and Python plugin 7.1, "
                    "as in the orthancteam/orthanc 26.8.x images): scripts/in-target.sh forky make test-host")
    for needed in (DEBIAN_PLUGINS / "libOrthancPython.so", DEBIAN_PLUGINS / "libOrthancPostgreSQLIndex.so",
                   DEBIAN_PLUGINS / "libOrthancDicomWeb.so", Path(RSYSLOGD), SHIM_DIR / "libssl.so"):
        if not needed.exists():
            pytest.fail(f"{needed} is missing: run `make deps` on the forky target")
    instance = Deployment(tmp_path_factory.mktemp("docker"))
    try:
        instance.build()
        # The operator's own password, written in the db-secret volume before the first start.
        secret = instance.volumes / "db-secret"
        secret.mkdir(parents=True, exist_ok=True)
        (secret / "password").write_text(OPERATOR_PASSWORD)
        instance.run_init()
        instance.start_postgres()
        instance.start_syslog()
        yield instance
    finally:
        instance.stop_all()


@pytest.fixture
def running(deployment: Deployment) -> Deployment:
    """The deployment with the orthanc service as docker-compose.yml defines it."""
    deployment.start_orthanc()
    return deployment


# -- build and init ---------------------------------------------------------------------------


def test_dependencies_are_the_locked_wheels(deployment: Deployment) -> None:
    packages = deployment.trees["orthanc"].relocate("/usr/share/orthanc-hardening/site-packages")
    installed = {
        re.sub(r"[-_.]+", "-", p.name.removesuffix(".dist-info").rsplit("-", 1)[0]).lower():
            p.name.removesuffix(".dist-info").rsplit("-", 1)[1]
        for p in Path(packages).glob("*.dist-info")
    }
    pinned = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", LOCK.read_text(), re.M))
    assert installed == {re.sub(r"[-_.]+", "-", k).lower(): v for k, v in pinned.items()}
    assert "psycopg-binary" in installed  # the compiled libpq binding, loaded by the step's check


def test_init_creates_private_files_and_keeps_the_operator_password(deployment: Deployment) -> None:
    home, volumes = deployment.home, deployment.volumes
    assert (volumes / "db-secret" / "password").read_text() == OPERATOR_PASSWORD
    for path, mode in ((home, 0o700), (home / "credentials.json", 0o600), (home / "keys" / "seal-key.pem", 0o600),
                       (home / "keys" / "passphrase", 0o600), (volumes / "syslog-tls" / "server.key", 0o600),
                       (volumes / "syslog-tls" / "ca.pem", 0o644)):
        assert path.stat().st_mode & 0o777 == mode, (path, oct(path.stat().st_mode))
    assert sorted(p.name for p in (volumes / "syslog-tls").iterdir()) == ["ca.pem", "server.crt", "server.key"]
    before = {p: p.read_bytes() for p in (home / "credentials.json", volumes / "syslog-tls" / "server.crt")}
    deployment.run_init()  # every `docker compose up` runs it again
    assert {p: p.read_bytes() for p in before} == before


# -- the orthanc service ----------------------------------------------------------------------


def test_configuration_is_generated_as_the_image_would(running: Deployment) -> None:
    tree = running.trees["orthanc"]
    generated = json.loads(Path(tree.relocate("/tmp/orthanc.json")).read_text())
    report = json.loads(Path(tree.relocate("/tmp/orthanc-image-report.json")).read_text())
    assert set(report["missing_libs"]) == NOT_IN_DEBIAN
    assert {"Python", "PostgreSQL", "DicomWeb", "OrthancExplorer2"} <= set(report["enabled_plugins"])
    # The number-like password reached the PostgreSQL plugin as a string, and it logged in.
    assert lookup(generated, "PostgreSQL.Password") == OPERATOR_PASSWORD
    mounted = json.loads(strip_comments((REPO / "orthanc.json").read_text()))
    buttons = mounted["OrthancExplorer2"]["UiOptions"]["CustomButtons"]
    assert lookup(generated, "OrthancExplorer2.UiOptions.CustomButtons") == buttons
    assert lookup(generated, "OrthancExplorer2.Enable") is True


def test_https_answers_with_the_generated_ca_only(running: Deployment) -> None:
    assert running.get("/system").status_code == 200
    with pytest.raises(requests.exceptions.SSLError):
        running.get("/system", verify=True)  # the public CAs do not know the deployment's CA
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"http://127.0.0.1:{running.http_port}/system", timeout=5, auth=("admin", "x"))
    assert running.get("/system", user=None).status_code == 401


def test_orthanc_runs_the_sealed_storage_on_a_postgresql_index(running: Deployment) -> None:
    plugins = running.get("/plugins").json()
    assert {"python", "dicom-web", "postgresql-index"} <= set(plugins)
    system = running.get("/system").json()
    linked = Path(running.trees["orthanc"].relocate("/usr/share/orthanc/plugins"))
    assert system["DatabaseBackendPlugin"] == str(linked / "libOrthancPostgreSQLIndex.so")
    assert system["StorageAreaPlugin"] == str(linked / "libOrthancPython.so")
    posture = running.get("/hardening/posture").json()
    assert posture["mode"] == "enforce" and posture["lockdown"] == []
    failed = {check["id"]: check["evidence"] for check in posture["checks"] if check["status"] == "fail"}
    assert failed == {}


def test_upload_is_sealed_and_served_on_every_way_in(running: Deployment) -> None:
    dicom = make_instance(patient_id="DOCKER-1")
    answer = running.request("POST", "/instances", user="user", data=dicom,
                             headers={"Content-Type": "application/dicom"})
    assert answer.status_code == 200, answer.text
    instance = answer.json()["ID"]
    seal = running.get(f"/hardening/instances/{instance}/seal", user="user")
    assert seal.status_code == 200, seal.text
    body = seal.json()
    assert body["verified"] is True
    assert {a["content_type"]: a["seal"]["size"] for a in body["attachments"]}[1] == len(dicom)
    served = running.get(f"/instances/{instance}/file", user="user")
    assert served.status_code == 200 and served.content == dicom
    tags = running.get(f"/instances/{instance}").json()["MainDicomTags"]
    study = running.get(f"/instances/{instance}/study").json()["MainDicomTags"]["StudyInstanceUID"]
    series = running.get(f"/instances/{instance}/series").json()["MainDicomTags"]["SeriesInstanceUID"]
    wado = running.get(f"/dicom-web/studies/{study}/series/{series}/instances/{tags['SOPInstanceUID']}", user="user",
                       headers={"Accept": 'multipart/related; type="application/dicom"'})
    assert wado.status_code == 200 and dicom[200:] in wado.content
    echo = subprocess.run(
        ["/usr/bin/echoscu", "-aet", "DEVSCU", "-aec", "HARDENED", "+tls", str(running.home / "tls" / "client.key"),
         str(running.home / "tls" / "client.pem"), "+cf", str(running.ca), "127.0.0.1", str(running.dicom_port)],
        capture_output=True, text=True, timeout=30, check=False)
    assert echo.returncode == 0, echo.stderr
    imports = running.audit_rows("event = %s AND series_uid = %s", "110107", series)
    assert len(imports) == 1 and imports[0]["user"] == "user"


@pytest.mark.attack
def test_tampered_file_is_refused_and_alerted_in_postgresql(running: Deployment) -> None:
    dicom = make_instance(patient_id="DOCKER-ATTACK")
    answer = running.request("POST", "/instances", user="user", data=dicom,
                             headers={"Content-Type": "application/dicom"})
    instance = answer.json()["ID"]
    uuid = running.get(f"/instances/{instance}/attachments/dicom/info").json()["Uuid"]
    stored = running.home / "storage" / uuid[0:2] / uuid[2:4] / uuid
    data = bytearray(stored.read_bytes())
    data[-100] ^= 0x01
    stored.write_bytes(bytes(data))
    alerts_before = len(running.audit_rows("event = %s", "110113"))
    refused = running.get(f"/instances/{instance}/file", user="user")
    assert refused.status_code == 500
    assert refused.content != dicom and bytes(data) not in refused.content
    study = running.get(f"/instances/{instance}/study").json()["ID"]
    archive = running.get(f"/studies/{study}/archive", user="user")
    assert archive.status_code == 409 and instance in archive.json()["detail"]
    alerts = running.audit_rows("event = %s", "110113")
    assert len(alerts) > alerts_before
    assert any(row["user"] == "user" and row["outcome"] != 0 for row in alerts[alerts_before:])
    trail = running.get("/hardening/audit", user="auditor", params={"event": "110113", "limit": 5})
    assert trail.status_code == 200 and trail.json()["events"]


def test_audit_trail_in_postgresql_verifies(running: Deployment) -> None:
    rows = running.audit_rows()
    assert rows and [row["seq"] for row in rows] == list(range(1, len(rows) + 1))
    assert rows[0]["event"] == "110100"  # the plugin's start
    verify = running.get("/hardening/audit/verify", user="auditor")
    assert verify.status_code == 200, verify.text
    assert running.get("/hardening/audit/verify", user="user").status_code == 403


def test_atna_messages_reach_the_collector_over_tls(running: Deployment) -> None:
    head = max(row["seq"] for row in running.audit_rows())

    def received() -> dict[int, str]:
        found = {}
        if running.audit_log.exists():
            for line in running.audit_log.read_text(encoding="utf-8").splitlines():
                if CHECKPOINT.match(line):
                    continue  # the signed audit checkpoints the collector witnesses (test_syslog_export.py)
                match = RAW.match(line)
                assert match is not None, f"neither an ATNA message nor a checkpoint: {line[:200]}"
                found[int(match.group(2))] = match.group(3)
        return found

    wait_until(lambda: set(range(1, head + 1)) <= set(received()), "every audit event at the collector")
    kinds = set()
    for xml in received().values():
        document = etree.fromstring(xml.encode("utf-8"))
        assert SCHEMA.validate(document), SCHEMA.error_log
        kinds.add(document.find("EventIdentification/EventID").get("csd-code"))
    assert {"110100", "110107", "110103", "110113"} <= kinds


def test_health_checks_pass(running: Deployment) -> None:
    result = running.healthcheck()
    assert result.returncode == 0, result.stderr
    syslog = subprocess.run([str(REPO / "docker" / "syslog" / "healthcheck.sh")], capture_output=True, text=True,
                            env={"PATH": os.environ["PATH"], "SYSLOG_PORT": str(running.syslog_port)}, timeout=10,
                            check=False)
    assert syslog.returncode == 0, syslog.stderr


# -- two nodes, one archive (the orthanc-2 service) -------------------------------------------


@pytest.fixture
def two_nodes(running: Deployment) -> Deployment:
    """Node 1 running, and orthanc-2 started as Compose starts it: once node 1 is healthy."""
    if running.node2 is None:
        healthy = running.healthcheck()
        assert healthy.returncode == 0, healthy.stderr
        running.start_node2()
    return running


def upload(deployment: Deployment, node: int, patient_id: str) -> tuple[bytes, str, str]:
    """Store a new instance through ``node``; return it, its Orthanc ID and its series UID."""
    dicom = make_instance(patient_id=patient_id)
    answer = deployment.request("POST", "/instances", user="user", node=node, data=dicom,
                                headers={"Content-Type": "application/dicom"})
    assert answer.status_code == 200, answer.text
    instance = answer.json()["ID"]
    series = deployment.get(f"/instances/{instance}/series", node=node).json()["MainDicomTags"]["SeriesInstanceUID"]
    return dicom, instance, series


def test_second_node_takes_the_first_ones_trust_and_has_its_own_identity(two_nodes: Deployment) -> None:
    home1, home2 = two_nodes.home, two_nodes.home2
    for name in ("tls/ca.pem", "tls/client.pem", "credentials.json", "keys/seal-key.pem", "keys/passphrase",
                 "keys/seal-key.pem.registry-anchor.json", "hardening/keys/registry.json"):
        assert (home2 / name).read_bytes() == (home1 / name).read_bytes(), name
    # Its own server certificate, issued by the shared CA (the client verifies it with that CA).
    assert (home2 / "tls" / "server.pem").read_bytes() != (home1 / "tls" / "server.pem").read_bytes()
    assert two_nodes.get("/system", node=2).status_code == 200
    for path, mode in ((home2, 0o700), (home2 / "tls" / "ca.key", 0o600), (home2 / "tls" / "server.key", 0o600),
                       (home2 / "keys" / "seal-key.pem", 0o600), (home2 / "credentials.json", 0o600)):
        assert path.stat().st_mode & 0o777 == mode, (path, oct(path.stat().st_mode))
    first, second = (json.loads(Path(two_nodes.trees[name].relocate("/tmp/orthanc.json")).read_text())
                     for name in ("orthanc", "orthanc-2"))
    assert (lookup(first, "DatabaseServerIdentifier"), lookup(second, "DatabaseServerIdentifier")) == \
        ("orthanc-1", "orthanc-2")
    for config in (first, second):
        assert lookup(config, "PostgreSQL.Lock") is False
        assert lookup(config, "Hardening.Database") == lookup(first, "Hardening.Database")
        assert lookup(config, "Hardening.Database").startswith("postgresql://orthanc:")
    assert two_nodes.get("/plugins", node=2).json() == two_nodes.get("/plugins").json()


def test_instance_stored_on_one_node_is_served_verified_by_the_other(two_nodes: Deployment) -> None:
    for stored_on, served_by in ((1, 2), (2, 1)):
        dicom, instance, series = upload(two_nodes, stored_on, f"DOCKER-NODE-{stored_on}")
        seal = two_nodes.get(f"/hardening/instances/{instance}/seal", user="user", node=served_by)
        assert seal.status_code == 200, seal.text
        assert seal.json()["verified"] is True
        served = two_nodes.get(f"/instances/{instance}/file", user="user", node=served_by)
        assert served.status_code == 200 and served.content == dicom
        study = two_nodes.get(f"/instances/{instance}/study", node=served_by)
        assert study.status_code == 200, (stored_on, served_by, study.text)
        imports = two_nodes.audit_rows("event = %s AND series_uid = %s", "110107", series)
        assert len(imports) == 1 and imports[0]["user"] == "user"
    # Both nodes append to one chain, which verifies on either.
    rows = two_nodes.audit_rows()
    assert [row["seq"] for row in rows] == list(range(1, len(rows) + 1))
    for node in (1, 2):
        verify = two_nodes.get("/hardening/audit/verify", user="auditor", node=node)
        assert verify.status_code == 200, verify.text


@pytest.mark.attack
def test_tampered_shared_file_is_refused_by_both_nodes(two_nodes: Deployment) -> None:
    # Stored through node 2; node 1 has never read it. The intruder edits the shared file.
    dicom, instance, _ = upload(two_nodes, 2, "DOCKER-NODE-ATTACK")
    uuid = two_nodes.get(f"/instances/{instance}/attachments/dicom/info", node=2).json()["Uuid"]
    study = two_nodes.get(f"/instances/{instance}/study", node=2).json()["ID"]
    stored = two_nodes.volumes / "orthanc-storage" / uuid[0:2] / uuid[2:4] / uuid
    data = bytearray(stored.read_bytes())
    data[-100] ^= 0x01
    stored.write_bytes(bytes(data))
    for node in (1, 2):
        alerts_before = len(two_nodes.audit_rows("event = %s", "110113"))
        refused = two_nodes.get(f"/instances/{instance}/file", user="user", node=node)
        assert refused.status_code == 500
        assert refused.content != dicom and bytes(data) not in refused.content
        archive = two_nodes.get(f"/studies/{study}/archive", user="user", node=node)
        assert archive.status_code == 409 and instance in archive.json()["detail"]
        alerts = two_nodes.audit_rows("event = %s", "110113")[alerts_before:]
        assert any(row["user"] == "user" and row["outcome"] != 0 for row in alerts), node
    # The study lookup answers from the index: the study the seals name, or, on a node whose
    # per-node tag cache holds no verified copy of the instance's tags (it fills from verified
    # files only, and the file no longer verifies), an integrity refusal. Never another answer.
    for node in (1, 2):
        answer = two_nodes.get(f"/instances/{instance}/study", node=node)
        if answer.status_code == 200:
            assert answer.json()["ID"] == study, node
        else:
            assert answer.status_code == 409 and answer.json()["error"] == "integrity check failed", node
    assert stored.read_bytes() == bytes(data)  # refused, not repaired or replaced
    verify = two_nodes.get("/hardening/audit/verify", user="auditor", node=2)
    assert verify.status_code == 200, verify.text


def test_second_node_is_healthy_and_stops_cleanly(two_nodes: Deployment) -> None:
    result = two_nodes.healthcheck(name="orthanc-2")
    assert result.returncode == 0, result.stderr
    assert two_nodes.stop_node2() == 0
    assert two_nodes.get("/system").status_code == 200  # node 1 keeps serving


def test_stop_is_clean(running: Deployment) -> None:
    # docker stop sends SIGTERM to the container's process: after both entry points' exec, Orthanc.
    assert running.stop_orthanc() == 0, running.log_tail()


# -- what the health check must catch ---------------------------------------------------------


@pytest.mark.attack
def test_health_check_fails_when_the_python_plugin_is_not_loaded(deployment: Deployment) -> None:
    # A wrong Plugins path: Orthanc only logs it, starts without any plugin and answers /system.
    variant = {"ORTHANC__PLUGINS": '["/usr/share/orthanc/plugin"]'}
    deployment.start_orthanc(variant)
    assert deployment.get("/system").status_code == 200
    result = deployment.healthcheck(variant)
    assert result.returncode == 1
    assert "plugins not loaded: python, dicom-web, postgresql-index" in result.stderr
    assert "/hardening/posture answered 404" in result.stderr
    assert "not PostgreSQL" in result.stderr and "files are not sealed" in result.stderr


@pytest.mark.attack
def test_health_check_fails_when_the_plugin_is_locked_down(deployment: Deployment) -> None:
    # The image's ORTHANC_PASSWORD adds the account orthanc/orthanc: a default credential, which
    # the plugin answers with a lockdown (every request refused).
    variant = {"ORTHANC_PASSWORD": "orthanc"}
    alerts_before = len(deployment.audit_rows("event = %s", "110113"))
    deployment.start_orthanc(variant)
    locked = deployment.get("/system")
    assert locked.status_code == 403 and "http-default-credentials" in locked.json()["failed_checks"]
    result = deployment.healthcheck(variant)
    assert result.returncode == 1
    assert "lockdown" in result.stderr and "http-default-credentials" in result.stderr
    alerts = deployment.audit_rows("event = %s", "110113")
    assert len(alerts) > alerts_before and "lockdown" in alerts[-1]["detail"]
    assert deployment.stop_orthanc() == 0
