"""A real Orthanc started as a subprocess on free loopback ports, for integration tests.

The base configuration is the secure one ``make run`` uses (HTTPS, DICOM TLS with client
certificates, authentication, SQLite, storage cache off, the plugin in enforce mode);
tests merge their changes over it. Every server is stopped by ``stop()`` — the fixtures in
``tests/integration/conftest.py`` call it at teardown, also when a test fails.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from orthanc_hardening.commands.devsetup import DevFiles, ensure_credentials, ensure_signing_key
from orthanc_hardening.tls.posture import FORWARD_SECRET_CIPHERS, TLS13_CIPHERS

REPO = Path(__file__).resolve().parents[2]
PLUGIN_SCRIPT = REPO / "plugin" / "hardening.py"
SHIM_DIR = Path(os.environ.get("HARDENING_SHIM_DIR", str(REPO / "build" / "libssl-shim")))
ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
PYTHON_PLUGIN = "/usr/share/orthanc/plugins/libOrthancPython.so"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
START_TIMEOUT = 60.0
CLIENT_AET = "TESTSCU"



_HANDED_OUT: set[int] = set()


@functools.cache
def orthanc_version() -> tuple[int, int, int]:
    """The version of the installed Orthanc (``Orthanc --version``), e.g. ``(1, 13, 0)``."""
    output = subprocess.run([ORTHANC, "--version"], capture_output=True, text=True, timeout=30, check=True).stdout
    match = re.search(r"(\d+)\.(\d+)\.(\d+)", output)
    if match is None:
        raise RuntimeError(f"cannot read the Orthanc version from {output[:80]!r}")
    return int(match[1]), int(match[2]), int(match[3])


def free_port() -> int:
    """Return a TCP port that is free on 127.0.0.1 right now and was never returned before.

    The kernel may give the same ephemeral port to two ``bind(0)`` calls once the first socket
    is closed; a server configured with two such ports (HTTP and DICOM) cannot start. So no
    port is handed out twice in one test session.
    """
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def wait_for_port(port: int, host: str = "127.0.0.1", timeout: float = 15.0) -> bool:
    """Poll until something accepts TCP connections on ``host:port``; ``False`` on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``base`` with ``override`` merged in (objects recursively; ``None`` deletes a key)."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


@dataclass
class Pki:
    """Test certificates (made once per session by ``devsetup``'s code)."""

    files: DevFiles

    @property
    def ca(self) -> Path:
        return self.files.ca_cert

    @property
    def client_cert(self) -> Path:
        return self.files.client_cert

    @property
    def client_key(self) -> Path:
        return self.files.client_key


class StartupError(RuntimeError):
    """Orthanc exited or did not answer in time; the message carries the log tail."""


@dataclass
class OrthancServer:
    """One Orthanc process with its own home directory, ports and configuration."""

    home: Path
    pki: Pki
    config: dict[str, Any]
    env: dict[str, str]
    credentials: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    _log_handle: Any = None
    modality_port: int = field(default_factory=free_port)

    @property
    def http_port(self) -> int:
        return int(self.config["HttpPort"])

    @property
    def dicom_port(self) -> int:
        return int(self.config["DicomPort"])

    @property
    def aet(self) -> str:
        return str(self.config.get("DicomAet", "ORTHANC"))

    @property
    def is_https(self) -> bool:
        return bool(self.config.get("SslEnabled", False))

    @property
    def url(self) -> str:
        scheme = "https" if self.is_https else "http"
        return f"{scheme}://127.0.0.1:{self.http_port}"

    @property
    def storage_dir(self) -> Path:
        return Path(self.config["StorageDirectory"])

    @property
    def index_db(self) -> Path:
        return Path(self.config.get("IndexDirectory", self.config["StorageDirectory"])) / "index"

    @property
    def data_dir(self) -> Path:
        section = self.config.get("Hardening")
        configured = section.get("DataDirectory") if isinstance(section, dict) else None
        return Path(configured or self.home / "hardening")

    @property
    def config_path(self) -> Path:
        return self.home / "orthanc.json"

    @property
    def log_path(self) -> Path:
        return self.home / "orthanc.log"

    # -- process control ----------------------------------------------------------------

    def write_config(self) -> None:
        """Write ``self.config`` to ``orthanc.json`` in the home directory."""
        self.config_path.write_text(json.dumps(self.config, indent=2))

    def start(self, wait: bool = True) -> None:
        """Start Orthanc; with ``wait``, return once ``/system`` answers.

        Raises:
            StartupError: Orthanc exited or did not answer within the timeout.
        """
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError("already running")
        self.write_config()
        self._log_handle = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [ORTHANC, "--verbose", str(self.config_path)],
            cwd=self.home,
            env=self.env,
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Poll ``/system`` until it answers 200 (or 403 when locked down)."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise StartupError(f"Orthanc exited with {self.returncode}:\n{self.log_tail()}")
            try:
                response = self.get("/system", timeout=2)
                if response.status_code in (200, 403):
                    return
                last = f"HTTP {response.status_code}"
            except requests.RequestException as exc:
                last = str(exc)
            time.sleep(0.1)
        raise StartupError(f"Orthanc did not answer in {timeout}s ({last}):\n{self.log_tail()}")

    def wait_exit(self, timeout: float = START_TIMEOUT) -> int:
        """Wait for the process to exit by itself; return its exit code."""
        if self.process is None:
            raise RuntimeError("not started")
        try:
            return self.process.wait(timeout=timeout)
        finally:
            self._close_log()

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def stop(self, timeout: float = 20.0) -> None:
        """Stop Orthanc (SIGTERM, then SIGKILL after ``timeout``); safe to call twice."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self._close_log()

    def kill(self) -> None:
        """``kill -9`` Orthanc, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        self._close_log()

    def restart(self) -> None:
        """Stop (if running) and start again with the same configuration and data."""
        self.stop()
        self.start()

    def _close_log(self) -> None:
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None

    def log_text(self) -> str:
        """The whole Orthanc log so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    # -- HTTP -----------------------------------------------------------------------------

    def auth(self, user: str | None) -> tuple[str, str] | None:
        if user is None:
            return None
        return (user, self.credentials[user])

    def request(self, method: str, path: str, user: str | None = "admin", **kwargs: Any) -> requests.Response:
        """Send one HTTP request with the user's credentials, verifying TLS against the test CA."""
        kwargs.setdefault("timeout", 60)
        kwargs.setdefault("verify", str(self.pki.ca) if self.is_https else False)
        if "auth" not in kwargs:
            kwargs["auth"] = self.auth(user)
        headers = dict(kwargs.pop("headers", {}) or {})
        headers.setdefault("Accept-Encoding", "identity")
        return requests.request(method, self.url + path, headers=headers, **kwargs)

    def wait_job(self, job_id: str, timeout: float = 60) -> dict[str, Any]:
        """Poll ``/jobs/{job_id}`` until it succeeded or failed; its last state."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.get(f"/jobs/{job_id}").json()
            if state["State"] in ("Success", "Failure"):
                return dict(state)
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} did not finish within {timeout} s")

    def get(self, path: str, user: str | None = "admin", **kwargs: Any) -> requests.Response:
        return self.request("GET", path, user, **kwargs)

    def metric(self, name: str) -> float:
        """The value of the Prometheus metric ``name`` Orthanc reports now (0 when absent)."""
        for line in self.get("/tools/metrics-prometheus").text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return 0.0

    def post(self, path: str, user: str | None = "admin", **kwargs: Any) -> requests.Response:
        return self.request("POST", path, user, **kwargs)

    def put(self, path: str, user: str | None = "admin", **kwargs: Any) -> requests.Response:
        return self.request("PUT", path, user, **kwargs)

    def delete(self, path: str, user: str | None = "admin", **kwargs: Any) -> requests.Response:
        return self.request("DELETE", path, user, **kwargs)

    def upload(self, dicom: bytes, user: str = "admin") -> dict[str, Any]:
        """POST one DICOM file to ``/instances``; return Orthanc's answer.

        Raises:
            AssertionError: Orthanc did not answer 200.
        """
        response = self.post("/instances", user, data=dicom, headers={"Content-Type": "application/dicom"})
        assert response.status_code == 200, f"upload failed: {response.status_code} {response.text}"
        answer: dict[str, Any] = response.json()
        return answer

    # -- DICOM ----------------------------------------------------------------------------

    def dcmtk(
        self,
        tool: str,
        *args: str,
        tls: bool = True,
        check: bool = False,
        calling_aet: str = CLIENT_AET,
        timeout: float = 60,
        files: tuple[str, ...] | list[str] = (),
    ) -> subprocess.CompletedProcess[str]:
        """Run a DCMTK tool (``/usr/bin/<tool>``) against this server.

        Adds ``-aet``/``-aec``, ``+tls client.key client.pem +cf ca.pem`` (unless ``tls=False``),
        then ``args``, then host and port, then ``files`` (``storescu``'s DICOM files).
        """
        command = [f"/usr/bin/{tool}", "-aet", calling_aet, "-aec", self.aet]
        if tls:
            command += ["+tls", str(self.pki.client_key), str(self.pki.client_cert), "+cf", str(self.pki.ca)]
        command += [*args, "127.0.0.1", str(self.dicom_port), *files]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"{tool} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return result


def orthanc_environment(extra: Mapping[str, str] | None = None, passphrase: str = "") -> dict[str, str]:
    """The environment an Orthanc test server runs with (the libssl shim, the key passphrase)."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "LD_PRELOAD")
    }
    env["LD_LIBRARY_PATH"] = str(SHIM_DIR)
    env["HARDENING_KEY_PASSPHRASE"] = passphrase
    env.update(extra or {})
    return env


# The accounts of ``make run`` (orthanc.json): admin all, auditor audit + view, user a clinician.
PERMISSIONS: dict[str, Any] = {
    "Roles": {
        "administrator": ["all"],
        "auditor": ["audit", "view"],
        "clinician": ["view", "download", "upload", "q-r-remote-modalities"],
    },
    "Users": {"admin": ["administrator"], "auditor": ["auditor"], "user": ["clinician"]},
}


def base_config(home: Path, pki: Pki, credentials: Mapping[str, str], modality_port: int) -> dict[str, Any]:
    """The secure configuration every test server starts from."""
    files = pki.files
    storage = home / "storage"
    return {
        "Name": "orthanc-hardening-test",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "HttpPort": free_port(),
        "DicomPort": free_port(),
        "DicomAet": "HARDENED",
        "RemoteAccessAllowed": True,
        "AuthenticationEnabled": True,
        "RegisteredUsers": dict(credentials),
        "HttpServerEnabled": True,
        "SslEnabled": True,
        "SslCertificate": str(files.server_pem),
        "SslMinimumProtocolVersion": 4,
        # Forward-secret suites only (TLS 1.3's are all forward-secret); see README "Strict TLS".
        "SslCiphersAccepted": list(FORWARD_SECRET_CIPHERS),
        "SslVerifyPeers": False,
        "HttpsVerifyPeers": True,
        "HttpsCACertificates": str(files.ca_cert),
        "HttpDescribeErrors": True,
        "HttpCompressionEnabled": False,
        "KeepAlive": True,
        "DicomServerEnabled": True,
        "DicomTlsEnabled": True,
        "DicomTlsCertificate": str(files.server_cert),
        "DicomTlsPrivateKey": str(files.server_key),
        "DicomTlsTrustedCertificates": str(files.ca_cert),
        "DicomTlsRemoteCertificateRequired": True,
        # Orthanc 1.12.4+ (trixie, forky); Orthanc 1.10 ignores both and accepts TLS 1.0/1.1.
        "DicomTlsMinimumProtocolVersion": 4,
        "DicomTlsCiphersAccepted": [*FORWARD_SECRET_CIPHERS, *TLS13_CIPHERS],
        "DicomAlwaysAllowEcho": False,
        "DicomAlwaysAllowStore": False,
        "DicomAlwaysAllowFind": False,
        "DicomAlwaysAllowFindWorklist": False,
        "DicomAlwaysAllowGet": False,
        "DicomAlwaysAllowMove": False,
        "DicomCheckModalityHost": True,
        "DicomModalities": {
            CLIENT_AET: {
                "AET": CLIENT_AET,
                "Host": "127.0.0.1",
                "Port": modality_port,
                "UseDicomTls": True,
                "AllowEcho": True,
                "AllowFind": True,
                "AllowGet": True,
                "AllowMove": True,
                "AllowStore": True,
            }
        },
        "DicomModalitiesInDatabase": False,
        "OrthancPeersInDatabase": False,
        "OrthancPeers": {},
        "MaximumStorageCacheSize": 0,
        "LuaScripts": [],
        "ExecuteLuaEnabled": False,
        "RestApiWriteToFileSystemEnabled": False,
        "StorageCompression": False,
        "SaveJobs": False,
        "ConcurrentJobs": 2,
        "Plugins": [PYTHON_PLUGIN],
        "PythonScript": str(PLUGIN_SCRIPT),
        "PythonVerbose": False,
        # Orthanc 1.13 deadlocks without it (config.check_python_threads); older plugins ignore it.
        "Python": {"AllowThreads": True},
        "Hardening": {
            "Mode": "enforce",
            "DataDirectory": str(home / "hardening"),
            "SigningKey": str(files.signing_key),
            "SigningKeyPassphraseEnv": "HARDENING_KEY_PASSPHRASE",
            "Auditors": ["auditor"],
            "Administrators": ["admin"],
            "Permissions": PERMISSIONS,
            "Audit": {"Database": f"sqlite://{home / 'hardening' / 'audit.db'}",
                      # Outside DataDirectory, as make run sets it up (audit/witness.py).
                      "WitnessFile": str(home / "witness" / "audit.witness")},
        },
    }


def make_server(
    home: Path,
    pki: Pki,
    config: Mapping[str, Any] | None = None,
    hardening: Mapping[str, Any] | None = None,
    plugin: bool = True,
    env: Mapping[str, str] | None = None,
) -> OrthancServer:
    """Prepare (not start) a server in ``home`` with its own signing key and accounts."""
    home.mkdir(parents=True, exist_ok=True)
    # Each server gets its own signing key and passphrase under its home, so that key
    # rotation in one test never touches another's.
    own = DevFiles(home)
    ensure_signing_key(own)
    credentials = ensure_credentials(own)
    passphrase = own.passphrase_file.read_text().strip()
    shared = DevFiles(pki.files.home)
    server_pki = Pki(files=shared)
    modality_port = free_port()
    merged = base_config(home, server_pki, credentials, modality_port)
    merged["Hardening"]["SigningKey"] = str(own.signing_key)
    if hardening:
        merged["Hardening"] = deep_merge(merged["Hardening"], hardening)
    if not plugin:
        # Plain Orthanc: same TLS and accounts, no plugin (a test may still load its own).
        merged.pop("PythonScript", None)
        merged.pop("Python", None)
        merged.pop("Hardening", None)
        merged["Plugins"] = [p for p in merged.get("Plugins", []) if p != PYTHON_PLUGIN]
    if config:
        merged = deep_merge(merged, config)
    Path(merged["StorageDirectory"]).mkdir(parents=True, exist_ok=True)
    if isinstance(merged.get("Hardening"), dict):
        Path(merged["Hardening"].get("DataDirectory", home / "hardening")).mkdir(parents=True, exist_ok=True)
    server = OrthancServer(
        home=home,
        pki=server_pki,
        config=merged,
        env=orthanc_environment(env, passphrase),
        credentials=credentials,
        modality_port=modality_port,
    )
    return server
