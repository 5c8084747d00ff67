"""``devsetup`` makes working dev certificates, an encrypted key and accounts, and reuses them."""

from __future__ import annotations

import datetime as dt
import json
import stat
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from orthanc_hardening.commands.devsetup import setup

NOW = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)


def test_setup_creates_everything_and_reuses_it(tmp_path: Path) -> None:
    files = setup(tmp_path / "home", 9443, 9242, "DEVAET", NOW)
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    client = x509.load_pem_x509_certificate(files.client_cert.read_bytes())
    for leaf in (server, client):
        leaf.verify_directly_issued_by(ca)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    assert {str(ip) for ip in names.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}
    assert b"PRIVATE KEY" in files.server_pem.read_bytes() and b"CERTIFICATE" in files.server_pem.read_bytes()

    passphrase = files.passphrase_file.read_bytes().strip()
    key = load_pem_private_key(files.signing_key.read_bytes(), password=passphrase)
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    assert b"ENCRYPTED" in files.signing_key.read_bytes()

    credentials = json.loads(files.credentials.read_text())
    assert set(credentials) == {"admin", "auditor", "user"}
    assert all(len(p) >= 20 for p in credentials.values())
    for private in (files.credentials, files.ca_key, files.server_key, files.signing_key, files.passphrase_file):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600, private

    generated = json.loads(files.instance_config.read_text())
    assert generated == {"HttpPort": 9443, "DicomPort": 9242, "DicomAet": "DEVAET", "RegisteredUsers": credentials}

    before = {p: p.read_bytes() for p in (files.ca_cert, files.server_pem, files.signing_key, files.credentials)}
    again = setup(tmp_path / "home", 10443, 10242, "OTHER", NOW)
    assert {p: p.read_bytes() for p in before} == before
    assert json.loads(again.instance_config.read_text())["HttpPort"] == 10443
