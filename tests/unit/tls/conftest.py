"""Fixtures for the TLS core tests: certificates made with fixed times, a secure configuration."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from orthanc_hardening.commands.devsetup import DevFiles, cert_pem, ensure_pki, make_ca, make_leaf

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.timezone.utc)


@pytest.fixture(scope="session")
def pki_files(tmp_path_factory: pytest.TempPathFactory) -> DevFiles:
    """A CA, server and client certificate valid around ``NOW``."""
    files = DevFiles(tmp_path_factory.mktemp("tls-pki"))
    ensure_pki(files, NOW)
    return files


@pytest.fixture(scope="session")
def ca(pki_files: DevFiles) -> tuple[Any, rsa.RSAPrivateKey]:
    return make_ca(NOW)


def leaf_pem(ca: tuple[Any, rsa.RSAPrivateKey], not_before: dt.datetime, days: int) -> bytes:
    """A server certificate + key PEM (as Orthanc's SslCertificate holds) for the given validity."""
    from cryptography.hazmat.primitives import serialization

    cert, key = make_leaf("localhost", ca[0], ca[1], NOW, days=days, not_before=not_before)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert_pem(cert) + key_pem


def secure_config(files: DevFiles, storage: Path) -> dict[str, Any]:
    """An Orthanc configuration that passes every critical check."""
    return {
        "HttpServerEnabled": True,
        "SslEnabled": True,
        "SslCertificate": str(files.server_pem),
        "SslMinimumProtocolVersion": 4,
        "SslVerifyPeers": True,
        "RemoteAccessAllowed": True,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {"admin": "kX9#vQ2!mZ7@pL4$", "auditor": "Qw8^rT5&yU1*iO3("},
        "DicomServerEnabled": True,
        "DicomTlsEnabled": True,
        "DicomTlsCertificate": str(files.server_cert),
        "DicomTlsPrivateKey": str(files.server_key),
        "DicomTlsTrustedCertificates": str(files.ca_cert),
        "DicomTlsRemoteCertificateRequired": True,
        "DicomAlwaysAllowEcho": False,
        "DicomAlwaysAllowStore": False,
        "DicomCheckModalityHost": True,
        "DicomModalities": {"TLSMOD": {"AET": "TLSMOD", "Host": "127.0.0.1", "Port": 104, "UseDicomTls": True}},
        "OrthancPeers": {"tlspeer": {"Url": "https://127.0.0.1:8443/"}},
        "HttpsVerifyPeers": True,
        "LuaScripts": [],
        "ExecuteLuaEnabled": False,
        "WebDavEnabled": False,
        "RestApiWriteToFileSystemEnabled": False,
        "MaximumStorageCacheSize": 0,
        "StorageDirectory": str(storage),
    }
