"""Inspect a PEM certificate: who it names, when it expires, how strong its key is.

Pure: the caller passes the PEM bytes (a file may hold the certificate and its private key,
as Orthanc's ``SslCertificate`` does) and ``now``. Private keys in the same file are skipped,
never parsed or reported. No I/O here.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID

from orthanc_hardening.errors import ConfigError

# NIST SP 800-57 Part 1 Rev. 5, table 2: at least 112 bits of security until 2030, which is
# RSA 2048 / ECC 224; we ask for P-256 as the smallest curve in common TLS use.
MINIMUM_RSA_BITS = 2048
MINIMUM_EC_BITS = 256
# A certificate expiring within this many days is reported as a warning.
RENEWAL_WARNING_DAYS = 30

_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----\s+.+?\s+-----END CERTIFICATE-----", re.DOTALL
)


@dataclass(frozen=True, slots=True)
class CertificateInfo:
    """What a security reviewer needs to know about one certificate (no key material)."""

    subject: str
    issuer: str
    not_before: dt.datetime
    not_after: dt.datetime
    key_type: str
    key_bits: int
    signature_hash: str

    def days_left(self, now: dt.datetime) -> int:
        """Return whole days until expiry (negative once expired)."""
        return (self.not_after - now) // dt.timedelta(days=1)

    def is_expired(self, now: dt.datetime) -> bool:
        """Return whether ``now`` is past ``not_after``."""
        return now > self.not_after

    def is_not_yet_valid(self, now: dt.datetime) -> bool:
        """Return whether ``now`` is before ``not_before``."""
        return now < self.not_before

    @property
    def key_problem(self) -> str:
        """Why the public key is too weak, or ``""`` when it is strong enough."""
        if self.key_type == "RSA" and self.key_bits < MINIMUM_RSA_BITS:
            return f"RSA key of {self.key_bits} bits (at least {MINIMUM_RSA_BITS} needed)"
        if self.key_type == "EC" and self.key_bits < MINIMUM_EC_BITS:
            return f"EC key of {self.key_bits} bits (at least {MINIMUM_EC_BITS} needed)"
        if self.key_type in ("DSA", "unknown"):
            return f"{self.key_type} key is not accepted for TLS server certificates"
        if self.signature_hash in ("md5", "sha1"):
            return f"signed with {self.signature_hash.upper()}, which is broken"
        return ""

    def describe(self, now: dt.datetime) -> str:
        """Return a one-line description for a report's evidence."""
        return (
            f"subject {self.subject}, issuer {self.issuer}, expires {self.not_after:%Y-%m-%d %H:%M} UTC "
            f"({self.days_left(now)} days left), {self.key_type} {self.key_bits} bits"
        )


def inspect_certificate(pem: bytes, name: str) -> CertificateInfo:
    """Parse the first certificate of a PEM file.

    Args:
        pem: the file content; a private key block in it is ignored.
        name: the configuration key naming the file (``SslCertificate``), for the error.

    Returns:
        The certificate's description.

    Raises:
        ConfigError: the content holds no PEM certificate or it cannot be parsed.
    """
    match = _PEM_CERTIFICATE.search(pem)
    if match is None:
        raise ConfigError(name, "holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
    try:
        cert = x509.load_pem_x509_certificate(match.group(0))
        key_type, key_bits = _key_strength(cert)
        not_before = cert.not_valid_before_utc
        not_after = cert.not_valid_after_utc
    except ValueError as exc:
        raise ConfigError(name, "holds a certificate that cannot be parsed") from exc
    hash_algorithm = cert.signature_hash_algorithm
    return CertificateInfo(
        subject=_common_name(cert.subject),
        issuer=_common_name(cert.issuer),
        not_before=not_before,
        not_after=not_after,
        key_type=key_type,
        key_bits=key_bits,
        signature_hash=hash_algorithm.name if hash_algorithm is not None else "none",
    )


def _key_strength(cert: x509.Certificate) -> tuple[str, int]:
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        return "RSA", key.key_size
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "EC", key.curve.key_size
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519", 256
    if isinstance(key, ed448.Ed448PublicKey):
        return "Ed448", 456
    if isinstance(key, dsa.DSAPublicKey):
        return "DSA", key.key_size
    return "unknown", 0


def _common_name(name: x509.Name) -> str:
    names = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if names:
        return f"CN={names[0].value!s}"
    return name.rfc4514_string() or "(empty)"
