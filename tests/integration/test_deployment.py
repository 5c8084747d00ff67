"""``scripts/run.sh`` (what ``make run`` starts), run for real and probed with real clients.

One Orthanc is started from the repository's ``orthanc.json`` in a temporary
``HARDENING_HOME`` on free ports, exactly as a user would start it, then driven over HTTPS
(``requests`` verifying against the generated CA) and DICOM TLS (DCMTK ``echoscu`` and
``storescu`` with the generated client certificate). The last test stops it with Ctrl-C
(SIGINT) and starts it again to show that keys, accounts and data are reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from tests.support.dicom import make_instance
from tests.support.server import REPO, free_port

RUN_SCRIPT = REPO / "scripts" / "run.sh"
START_TIMEOUT = 60.0
DEV_AET = "DEVSCU"  # the client modality orthanc.json declares
REUSED_FILES = ("tls/ca.pem", "tls/ca.key", "tls/server.pem", "tls/client.pem", "keys/seal-key.pem", "keys/passphrase")


@dataclass
class Deployment:
    """A ``scripts/run.sh`` process and what it was started with."""

    home: Path
    https_port: int
    dicom_port: int
    aet: str
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)  # e.g. HARDENING_POSTGRES (test_nodes.py)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    @property
    def ca(self) -> str:
        return str(self.home / "tls" / "ca.pem")

    def credentials(self) -> dict[str, str]:
        loaded: dict[str, str] = json.loads((self.home / "credentials.json").read_text())
        return loaded

    def get(self, path: str, user: str | None = "admin", password: str | None = None) -> requests.Response:
        auth = None if user is None else (user, password if password is not None else self.credentials()[user])
        return requests.get(self.url + path, auth=auth, verify=self.ca, timeout=30)

    def post(self, path: str, data: bytes, user: str = "admin") -> requests.Response:
        return requests.post(self.url + path, data=data, auth=(user, self.credentials()[user]), verify=self.ca,
                             timeout=30, headers={"Content-Type": "application/dicom"})

    def start(self) -> None:
        env = {key: value for key, value in os.environ.items() if key not in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")}
        env.update(
            HARDENING_HOME=str(self.home),
            HTTPS_PORT=str(self.https_port),
            DICOM_PORT=str(self.dicom_port),
            DICOM_AET=self.aet,
        )
        env.update(self.extra_env)
        self.log_path = self.home.parent / f"{self.home.name}-run.log"
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [str(RUN_SCRIPT)],
                cwd="/",  # the script must not depend on the caller's directory
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.wait_ready()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        last = ""
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"run.sh exited with {self.process.returncode}:\n{self.log()}")
            try:
                response = self.get("/system")
                if response.status_code == 200:
                    return
                last = f"HTTP {response.status_code}"
            except (requests.RequestException, OSError) as exc:
                last = str(exc)
            time.sleep(0.2)
        raise AssertionError(f"no answer on {self.url} within {START_TIMEOUT}s ({last}):\n{self.log()}")

    def interrupt(self, timeout: float = 30.0) -> int:
        """Ctrl-C as a terminal sends it: SIGINT to run.sh's whole process group; the exit code.

        Not to run.sh alone: a shell started with SIGINT ignored (a CI job in the background)
        cannot trap it, while Orthanc installs its own handler and stops.
        """
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGINT)
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:] if self.log_path else ""

    def dcmtk(self, tool: str, *args: str, tls: bool = True, aet: str = DEV_AET) -> subprocess.CompletedProcess[str]:
        tls_dir = self.home / "tls"
        command = [f"/usr/bin/{tool}", "-aet", aet, "-aec", self.aet]
        if tls:
            command += ["+tls", str(tls_dir / "client.key"), str(tls_dir / "client.pem")]
            command += ["+cf", str(tls_dir / "ca.pem")]
        return subprocess.run(
            [*command, "127.0.0.1", str(self.dicom_port), *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    home = tmp_path_factory.mktemp("deployment") / "home"
    running = Deployment(home=home, https_port=free_port(), dicom_port=free_port(), aet="HARDTEST")
    try:
        running.start()
        yield running
    finally:
        running.stop()


@pytest.fixture
def dicom_file(tmp_path: Path) -> Path:
    path = tmp_path / "ct.dcm"
    path.write_bytes(make_instance(patient_id="DEPLOY-1", rows=32, cols=32))
    return path


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_https_with_valid_credentials_answers_and_is_verified_by_the_generated_ca(deployment: Deployment) -> None:
    response = deployment.get("/system")
    assert response.status_code == 200
    assert response.json()["DicomAet"] == "HARDTEST"
    assert response.json()["DicomPort"] == deployment.dicom_port


def test_https_is_refused_by_a_client_that_does_not_trust_the_ca(deployment: Deployment) -> None:
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(deployment.url + "/system", verify=True, timeout=10)


@pytest.mark.attack
def test_plain_http_to_the_https_port_gets_no_answer(deployment: Deployment) -> None:
    try:
        response = requests.get(
            f"http://127.0.0.1:{deployment.https_port}/system",
            auth=("admin", deployment.credentials()["admin"]),
            timeout=10,
        )
    except requests.RequestException:
        return
    assert response.status_code != 200, "plain HTTP was served"
    assert "DicomAet" not in response.text


@pytest.mark.attack
def test_wrong_password_gets_401(deployment: Deployment) -> None:
    assert deployment.get("/system", user="admin", password="orthanc").status_code == 401
    assert deployment.get("/system", user=None).status_code == 401


def test_credentials_file_is_private_and_holds_the_three_accounts(deployment: Deployment) -> None:
    path = deployment.home / "credentials.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    credentials = deployment.credentials()
    assert sorted(credentials) == ["admin", "auditor", "user"]
    assert len(set(credentials.values())) == 3
    assert all(len(password) >= 16 for password in credentials.values())
    assert stat.S_IMODE((deployment.home / "keys" / "seal-key.pem").stat().st_mode) == 0o600


def test_echoscu_over_tls_with_the_client_certificate_succeeds(deployment: Deployment) -> None:
    result = deployment.dcmtk("echoscu")
    assert result.returncode == 0, result.stderr


def test_storescu_over_tls_with_the_client_certificate_stores(deployment: Deployment, dicom_file: Path) -> None:
    result = deployment.dcmtk("storescu", str(dicom_file))
    assert result.returncode == 0, result.stderr
    found = requests.post(
        deployment.url + "/tools/find",
        json={"Level": "Patient", "Query": {"PatientID": "DEPLOY-1"}},
        auth=("admin", deployment.credentials()["admin"]),
        verify=deployment.ca,
        timeout=30,
    )
    assert found.status_code == 200
    assert len(found.json()) == 1


@pytest.mark.attack
def test_echoscu_without_tls_is_refused(deployment: Deployment) -> None:
    result = deployment.dcmtk("echoscu", tls=False)
    assert result.returncode != 0


@pytest.mark.attack
def test_storescu_without_tls_is_refused(deployment: Deployment, tmp_path: Path) -> None:
    path = tmp_path / "plain.dcm"
    path.write_bytes(make_instance(patient_id="DEPLOY-PLAIN", rows=16, cols=16))
    result = deployment.dcmtk("storescu", str(path), tls=False)
    assert result.returncode != 0
    found = deployment.get("/patients")
    assert found.status_code == 200
    assert all(
        deployment.get(f"/patients/{pid}").json()["MainDicomTags"]["PatientID"] != "DEPLOY-PLAIN"
        for pid in found.json()
    )


@pytest.mark.attack
def test_undeclared_calling_aet_is_refused_even_with_the_client_certificate(deployment: Deployment) -> None:
    result = deployment.dcmtk("echoscu", aet="INTRUDER")
    assert result.returncode != 0


def test_ctrl_c_stops_it_and_a_rerun_reuses_keys_accounts_and_data(deployment: Deployment) -> None:
    # Runs last in this module: it restarts the deployment.
    before_credentials = deployment.credentials()
    before_files = {name: _digest(deployment.home / name) for name in REUSED_FILES}
    instances_before = deployment.get("/instances").json()

    assert deployment.interrupt() == 0

    deployment.start()
    assert deployment.credentials() == before_credentials
    assert {name: _digest(deployment.home / name) for name in REUSED_FILES} == before_files
    assert deployment.get("/instances").json() == instances_before
    # The data stored before the restart is still served (its seal verifies with the reused key).
    for instance_id in instances_before:
        assert deployment.get(f"/instances/{instance_id}/file").status_code == 200
