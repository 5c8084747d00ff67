"""TLS enforcement against a real Orthanc: lockdown of insecure configurations, outgoing rules.

Servers: one secure server for the outgoing rules (module scope), then one each for the
insecure configuration in enforce and in monitor mode, the expired and the missing server
certificate.
"""

from __future__ import annotations

import base64
import datetime as dt
import http.client
import json
import ssl
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from orthanc_hardening.commands.devsetup import cert_pem, make_leaf
from tests.support.dicom import make_instance
from tests.support.dimse import c_find, c_store
from tests.support.server import OrthancServer, free_port

pytestmark = pytest.mark.integration

PLAIN_MODALITY = {"AET": "PLAIN", "Host": "127.0.0.1", "Port": 11112, "UseDicomTls": False}
INSECURE = {"SslEnabled": False, "DicomTlsEnabled": False}


@pytest.fixture(scope="module")
def secure_server(start_orthanc_module: Any) -> OrthancServer:
    """A secure server that knows one plaintext modality and one http:// peer."""
    return start_orthanc_module(
        config={
            "DicomModalities": {"PLAIN": PLAIN_MODALITY},
            "OrthancPeers": {"clearpeer": {"Url": f"http://127.0.0.1:{free_port()}/"}},
        }
    )


def assert_forbidden_json(response: requests.Response) -> dict[str, Any]:
    assert response.status_code == 403, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert body["error"] == "forbidden"
    return body


# -- lockdown: an insecure configuration in enforce mode ----------------------------------


@pytest.fixture(scope="module")
def locked_server(start_orthanc_module: Any) -> OrthancServer:
    return start_orthanc_module(config=INSECURE)


@pytest.mark.attack
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/system"),
        ("GET", "/app/explorer.html"),
        ("GET", "/patients"),
        ("GET", "/hardening/posture"),
        ("POST", "/tools/find"),
    ],
)
def test_plaintext_http_request_is_refused(locked_server: OrthancServer, method: str, path: str) -> None:
    body = assert_forbidden_json(locked_server.request(method, path, json={} if method == "POST" else None))
    assert body["failed_checks"] == ["http-tls", "dicom-tls"]
    assert "lockdown" in body["detail"]


@pytest.mark.attack
def test_plaintext_upload_is_refused(locked_server: OrthancServer) -> None:
    response = locked_server.post("/instances", data=make_instance(), headers={"Content-Type": "application/dicom"})
    assert assert_forbidden_json(response)["failed_checks"] == ["http-tls", "dicom-tls"]


@pytest.mark.attack
def test_plaintext_association_is_refused(locked_server: OrthancServer) -> None:
    # DICOM TLS is off on this server, so the association itself succeeds; the store must not.
    assert c_store(locked_server, [make_instance()], tls=False) == [0x0124]  # PS3.7 C: Refused, not authorized


@pytest.mark.attack
def test_plaintext_query_is_refused(locked_server: OrthancServer) -> None:
    from pydicom.dataset import Dataset

    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ""
    status, answers = c_find(locked_server, query, tls=False)
    assert status >= 0xA000 and answers == []


def test_lockdown_is_logged_with_the_reason(locked_server: OrthancServer) -> None:
    log = locked_server.log_text()
    assert "LOCKDOWN: critical checks failed (http-tls, dicom-tls)" in log


def test_insecure_configuration_in_monitor_mode_is_served(start_orthanc: Any) -> None:
    server = start_orthanc(config=INSECURE, hardening={"Mode": "monitor"})
    assert server.get("/system").status_code == 200
    report = server.get("/hardening/posture").json()
    assert report["mode"] == "monitor" and report["lockdown"] == []
    failed = {c["id"] for c in report["checks"] if c["status"] == "fail"}
    assert {"http-tls", "dicom-tls"} <= failed
    assert "monitor mode: critical checks failed" in server.log_text()
    metrics = server.get("/tools/metrics-prometheus").text
    assert "hardening_posture_failed_checks" in metrics
    # Nothing is blocked in monitor mode: a plaintext C-STORE is accepted.
    assert c_store(server, [make_instance()], tls=False) == [0x0000]


# -- outgoing traffic in enforce mode ------------------------------------------------------


@pytest.mark.attack
def test_store_to_plaintext_modality_is_refused(secure_server: OrthancServer) -> None:
    response = secure_server.post("/modalities/PLAIN/store", json={"Resources": ["0"], "Synchronous": True})
    body = assert_forbidden_json(response)
    assert body["modality"] == "PLAIN" and "DICOM TLS" in body["detail"]


@pytest.mark.attack
def test_echo_to_plaintext_modality_is_refused(secure_server: OrthancServer) -> None:
    assert_forbidden_json(secure_server.post("/modalities/PLAIN/echo", json={}))


@pytest.mark.attack
def test_store_to_http_peer_is_refused(secure_server: OrthancServer) -> None:
    body = assert_forbidden_json(secure_server.post("/peers/clearpeer/store", data="0"))
    assert body["peer"] == "clearpeer" and "HTTPS" in body["detail"]


@pytest.mark.attack
def test_creating_plaintext_modality_at_run_time_is_refused(secure_server: OrthancServer) -> None:
    evil = {"AET": "EVIL", "Host": "127.0.0.1", "Port": 11113}
    body = assert_forbidden_json(secure_server.put("/modalities/EVIL", json=evil))
    assert body["modality"] == "EVIL"
    assert "EVIL" not in secure_server.get("/modalities").json()


@pytest.mark.attack
def test_creating_http_peer_at_run_time_is_refused(secure_server: OrthancServer) -> None:
    body = assert_forbidden_json(secure_server.put("/peers/evilpeer", json={"Url": "http://127.0.0.1:9/"}))
    assert body["peer"] == "evilpeer"
    assert "evilpeer" not in secure_server.get("/peers").json()


def test_creating_tls_modality_at_run_time_is_accepted(secure_server: OrthancServer) -> None:
    good = {"AET": "GOODTLS", "Host": "127.0.0.1", "Port": free_port(), "UseDicomTls": True}
    assert secure_server.put("/modalities/GOODTLS", json=good).status_code == 200
    listed = secure_server.get("/modalities?expand").json()
    assert listed["GOODTLS"]["UseDicomTls"] is True
    # Sending to it is allowed (nothing listens there: Orthanc itself reports the failure).
    assert secure_server.post("/modalities/GOODTLS/echo", json={"Timeout": 2}).status_code not in (403, 200)
    assert secure_server.get("/modalities/GOODTLS").status_code == 200
    assert secure_server.delete("/modalities/GOODTLS").status_code == 200
    assert "GOODTLS" not in secure_server.get("/modalities").json()


@pytest.mark.attack
def test_lua_execution_is_refused(secure_server: OrthancServer) -> None:
    body = assert_forbidden_json(secure_server.post("/tools/execute-script", data='os.execute("id")'))
    assert "Lua" in body["detail"]


@pytest.mark.attack
def test_export_to_server_filesystem_is_refused(secure_server: OrthancServer) -> None:
    body = assert_forbidden_json(secure_server.post("/instances/any/export", data="/etc/cron.d/evil"))
    assert "filesystem" in body["detail"]


def test_secure_server_is_not_locked_down(secure_server: OrthancServer) -> None:
    assert secure_server.get("/system").status_code == 200


# -- server certificates: expired → lockdown; missing → refuses to start --------------------


def expired_server_pem(server_pki: Any, directory: Path) -> Path:
    ca_cert = x509.load_pem_x509_certificate(server_pki.files.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(server_pki.files.ca_key.read_bytes(), password=None)
    assert isinstance(ca_key, rsa.RSAPrivateKey)
    now = dt.datetime.now(dt.timezone.utc)
    cert, key = make_leaf("localhost", ca_cert, ca_key, now, days=30, not_before=now - dt.timedelta(days=60))
    path = directory / "expired-server.pem"
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    path.write_bytes(cert_pem(cert) + key_pem)
    path.chmod(0o600)
    return path


def wait_for_answer(server: OrthancServer, timeout: float = 60) -> requests.Response:
    deadline = time.monotonic() + timeout
    while True:
        assert server.returncode is None, server.log_tail()
        try:
            return server.get("/system", verify=False, timeout=2)
        except requests.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.mark.attack
@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_expired_server_certificate_locks_down(start_orthanc: Any, pki: Any, tmp_path: Path) -> None:
    # The certificate has expired: a verifying client refuses it, so wait and look without verifying.
    server = start_orthanc(config={"SslCertificate": str(expired_server_pem(pki, tmp_path))}, expect_failure=True)
    response = wait_for_answer(server)
    body = assert_forbidden_json(response)
    assert body["failed_checks"] == ["https-certificate"]
    assert "EXPIRED" in server.log_text()


def test_missing_server_certificate_refuses_to_start(start_orthanc: Any, tmp_path: Path) -> None:
    server = start_orthanc(config={"SslCertificate": str(tmp_path / "missing.pem")}, expect_failure=True)
    code = server.wait_exit(timeout=60)
    assert code != 0
    log = server.log_text()
    assert "orthanc-hardening refuses to start: SslCertificate: file" in log and "does not exist" in log
    assert json.dumps(str(tmp_path / "missing.pem"))[1:-1] in log


@pytest.mark.attack
def test_store_to_plaintext_modality_under_percent_encoded_name_is_refused(secure_server: OrthancServer) -> None:
    # requests would normalise %41 to "A"; http.client sends the path as written.
    context = ssl.create_default_context(cafile=str(secure_server.pki.ca))
    connection = http.client.HTTPSConnection("127.0.0.1", secure_server.http_port, context=context, timeout=30)
    user, password = "admin", secure_server.credentials["admin"]
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    try:
        connection.request(
            "POST",
            "/modalities/PL%41IN/store",
            body=json.dumps({"Resources": ["0"], "Synchronous": True}),
            headers={"Authorization": f"Basic {token}", "Content-Type": "application/json"},
        )
        response = connection.getresponse()
        assert response.status == 403, response.read()
    finally:
        connection.close()


@pytest.mark.attack
def test_plaintext_webdav_request_is_refused(locked_server: OrthancServer) -> None:
    response = locked_server.request("PROPFIND", "/webdav/", headers={"Depth": "1"})
    assert response.status_code == 403
