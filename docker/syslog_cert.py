#!/usr/bin/env python3
"""Give the syslog collector its TLS files, signed by the deployment's CA.

``syslog_cert.py HARDENING_HOME OUTPUT_DIR NAME`` writes, in OUTPUT_DIR (the volume the
collector mounts, and all it mounts of the deployment):

- ``ca.pem``: the deployment's CA certificate (the collector accepts clients it signed);
- ``server.crt`` + ``server.key`` (0600): the collector's certificate for NAME, the host name
  Orthanc connects to (the Compose service name; an IP address gets an IP subjectAltName).

The CA key stays in HARDENING_HOME. An existing certificate is kept while it was signed by the
current CA, names NAME and is valid for another 30 days; otherwise it is replaced, so a new CA
or a new name never leaves the collector with a certificate Orthanc refuses.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import sys
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

RENEW_BEFORE = dt.timedelta(days=30)


def subject_alternative_name(name: str) -> x509.GeneralName:
    """The subjectAltName entry for ``name``: an IP address entry for an address, else a DNS name."""
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def is_current(cert_path: Path, key_path: Path, ca_cert: x509.Certificate, name: str, now: dt.datetime) -> bool:
    """Whether the certificate in ``cert_path`` can be kept (see the module docstring)."""
    if not (cert_path.is_file() and key_path.is_file()):
        return False
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        public_key = ca_cert.public_key()
        if not isinstance(public_key, rsa.RSAPublicKey) or cert.signature_hash_algorithm is None:
            return False
        public_key.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), cert.signature_hash_algorithm)
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, InvalidSignature, x509.ExtensionNotFound):
        return False
    return (
        cert.issuer == ca_cert.subject
        and subject_alternative_name(name) in names
        and cert.not_valid_after_utc - now > RENEW_BEFORE
    )


def write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.chmod(path, 0o600)


def main(home: Path, output: Path, name: str) -> None:
    tls = home / "tls"
    ca_cert = x509.load_pem_x509_certificate((tls / "ca.pem").read_bytes())
    output.mkdir(parents=True, exist_ok=True)
    (output / "ca.pem").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    os.chmod(output / "ca.pem", 0o644)
    cert_path, key_path = output / "server.crt", output / "server.key"
    now = dt.datetime.now(dt.timezone.utc)
    if is_current(cert_path, key_path, ca_cert, name, now):
        return
    ca_key = serialization.load_pem_private_key((tls / "ca.key").read_bytes(), password=None)
    if not isinstance(ca_key, rsa.RSAPrivateKey):
        raise SystemExit(f"{tls / 'ca.key'}: expected the RSA CA key devsetup made")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=825))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([subject_alternative_name(name)]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    write_private(
        key_path,
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    os.chmod(cert_path, 0o644)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: syslog_cert.py HARDENING_HOME OUTPUT_DIR NAME")
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3])
