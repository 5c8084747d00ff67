"""``tls.certificates``: expiry, days left and key strength from PEM bytes, no key material."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from orthanc_hardening.errors import ConfigError
from orthanc_hardening.tls.certificates import inspect_certificate
from tests.unit.tls.conftest import NOW, leaf_pem


def self_signed(key: object, not_before: dt.datetime, days: int, algorithm: hashes.HashAlgorithm) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "weak.example")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())  # type: ignore[attr-defined]
        .serial_number(1)
        .not_valid_before(not_before)
        .not_valid_after(not_before + dt.timedelta(days=days))
        .sign(key, algorithm)  # type: ignore[arg-type]
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def test_valid_certificate_reports_days_left_and_key(ca: tuple) -> None:
    info = inspect_certificate(leaf_pem(ca, NOW - dt.timedelta(days=10), 100), "SslCertificate")
    assert info.days_left(NOW) == 90
    assert not info.is_expired(NOW)
    assert (info.key_type, info.key_bits, info.key_problem) == ("RSA", 2048, "")
    assert info.subject == "CN=localhost"
    assert "90 days left" in info.describe(NOW)


def test_expired_certificate_has_negative_days_left(ca: tuple) -> None:
    info = inspect_certificate(leaf_pem(ca, NOW - dt.timedelta(days=40), 30), "SslCertificate")
    assert info.is_expired(NOW)
    assert info.days_left(NOW) == -10


def test_description_carries_no_private_key(ca: tuple) -> None:
    pem = leaf_pem(ca, NOW - dt.timedelta(days=1), 30)
    assert b"PRIVATE KEY" in pem
    info = inspect_certificate(pem, "SslCertificate")
    assert "PRIVATE" not in repr(info) and "PRIVATE" not in info.describe(NOW)


def test_small_rsa_key_is_weak() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    info = inspect_certificate(self_signed(key, NOW, 10, hashes.SHA256()), "SslCertificate")
    assert "1024 bits" in info.key_problem


def test_p256_key_is_strong_and_p192_is_weak() -> None:
    strong = ec.generate_private_key(ec.SECP256R1())
    assert inspect_certificate(self_signed(strong, NOW, 10, hashes.SHA256()), "x").key_problem == ""
    weak = ec.generate_private_key(ec.SECP224R1())
    assert "224 bits" in inspect_certificate(self_signed(weak, NOW, 10, hashes.SHA256()), "x").key_problem


def test_file_without_certificate_names_the_key() -> None:
    with pytest.raises(ConfigError, match="holds no PEM certificate") as caught:
        inspect_certificate(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "SslCertificate")
    assert caught.value.key == "SslCertificate"


def test_garbled_certificate_names_the_key() -> None:
    with pytest.raises(ConfigError, match="cannot be parsed") as caught:
        inspect_certificate(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "DicomTlsCertificate")
    assert caught.value.key == "DicomTlsCertificate"
