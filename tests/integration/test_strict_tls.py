"""Strict TLS, measured against the running server: TLS 1.0/1.1 and suites without forward
secrecy are refused where Orthanc has the setting (HTTPS on every target; DICOM TLS from
Orthanc 1.12.4, i.e. trixie and forky) and reported by the posture report where it has not
(DICOM TLS on bookworm's Orthanc 1.10.1).

One server for the module. The attacks are real clients with a valid client certificate:
``http.client`` for HTTPS and pynetdicom's C-ECHO for DICOM TLS, each forced to the weak offer.
"""

from __future__ import annotations

import http.client
import ssl

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from tests.support.server import CLIENT_AET, OrthancServer

pytestmark = [pytest.mark.integration,
              # Offering TLS 1.0/1.1 is the attack (Python deprecates the names).
              pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")]


@pytest.fixture(scope="module")
def server(start_orthanc_module) -> OrthancServer:
    return start_orthanc_module()


def orthanc_version(server: OrthancServer) -> tuple[int, ...]:
    return tuple(int(p) for p in server.get("/system").json()["Version"].split(".")[:3])


def weak_context(server: OrthancServer, version: ssl.TLSVersion, ciphers: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(str(server.pki.ca))
    context.load_cert_chain(str(server.pki.client_cert), str(server.pki.client_key))
    context.minimum_version = context.maximum_version = version
    context.set_ciphers(ciphers)
    return context


def c_echo(server: OrthancServer, context: ssl.SSLContext) -> bool:
    ae = AE(ae_title=CLIENT_AET)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title=server.aet, tls_args=(context, None))
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return "Status" in status and int(status.Status) == 0
    finally:
        assoc.release()


def posture_check(server: OrthancServer, check_id: str) -> dict:
    report = server.get("/hardening/posture")
    assert report.status_code == 200, report.text
    return next(c for c in report.json()["checks"] if c["id"] == check_id)


WEAK_OFFERS = (
    ("TLS 1.1", ssl.TLSVersion.TLSv1_1, "ALL:@SECLEVEL=0"),
    ("TLS 1.2 without forward secrecy", ssl.TLSVersion.TLSv1_2, "kRSA:@SECLEVEL=0"),
)


@pytest.mark.attack
@pytest.mark.parametrize(("offer", "version", "ciphers"), WEAK_OFFERS, ids=[o[0] for o in WEAK_OFFERS])
def test_weak_https_handshake_with_valid_client_certificate_is_refused(server, offer, version, ciphers):
    connection = http.client.HTTPSConnection("127.0.0.1", server.http_port, timeout=10,
                                             context=weak_context(server, version, ciphers))
    try:
        with pytest.raises(ssl.SSLError):
            connection.request("GET", "/system")
    finally:
        connection.close()
    # The posture report measured the same refusal.
    assert offer in posture_check(server, "https-tls-measured")["evidence"].split("refused:")[1]


def test_https_posture_names_what_the_running_server_accepts(server):
    check = posture_check(server, "https-tls-measured")
    assert check["status"] == "pass", check
    assert "TLS 1.2 forward-secret -> TLSv1.2 ECDHE-" in check["evidence"]
    assert "refused: TLS 1.0, TLS 1.1, TLS 1.2 without forward secrecy" in check["evidence"]


@pytest.mark.attack
def test_tls11_dicom_association_is_refused_or_reported(server):
    context = weak_context(server, ssl.TLSVersion.TLSv1_1, "ALL:@SECLEVEL=0")
    answered = c_echo(server, context)
    check = posture_check(server, "dicom-tls-measured")
    if orthanc_version(server) >= (1, 12, 4):
        # DicomTlsMinimumProtocolVersion 4 and a forward-secret DicomTlsCiphersAccepted.
        assert answered is False
        assert check["status"] == "pass", check
        assert "refused: TLS 1.0, TLS 1.1, TLS 1.2 without forward secrecy" in check["evidence"]
    else:
        # Orthanc 1.10 has no DICOM TLS version setting: the weak association is answered, and
        # the posture report says so, naming what was accepted.
        assert answered is True
        assert check["status"] == "fail" and check["severity"] == "high", check
        assert "accepted TLS 1.0, TLS 1.1, TLS 1.2 without forward secrecy" in check["evidence"]
        assert "1.12.4" in check["remedy"]


def test_forward_secret_dicom_association_still_works(server):
    context = weak_context(server, ssl.TLSVersion.TLSv1_2, "ECDHE+AESGCM")
    assert c_echo(server, context) is True
