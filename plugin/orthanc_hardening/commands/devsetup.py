"""``python -m orthanc_hardening devsetup``: self-made certificates, keys and accounts for a dev instance.

Creates, under ``--home`` and only where missing (a re-run reuses everything):

- ``tls/ca.pem`` + ``tls/ca.key``: a development CA (RSA 2048, 5 years);
- ``tls/server.crt`` + ``tls/server.key`` and ``tls/server.pem`` (certificate and key in one
  file, as Orthanc's ``SslCertificate`` wants): HTTPS and DICOM TLS server identity, with
  ``subjectAltName`` localhost, 127.0.0.1 and ::1 and both serverAuth and clientAuth usage
  (Orthanc is a TLS client too when it sends to a modality);
- ``tls/client.pem`` + ``tls/client.key``: a client certificate for DCMTK ``+tls`` and HTTPS;
- ``keys/seal-key.pem``: the Ed25519 signing key, PKCS#8 encrypted with the passphrase kept
  in ``keys/passphrase`` (mode 0600);
- ``credentials.json`` (mode 0600): random passwords for ``admin``, ``auditor``, ``user``;
- ``config/instance.json``: the per-instance Orthanc keys (``HttpPort``, ``DicomPort``,
  ``DicomAet``, ``RegisteredUsers``), rewritten on every run from the options.

These are development credentials: a hospital deployment brings its own PKI.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from orthanc_hardening.commands import devnode

ACCOUNTS = ("admin", "auditor", "user")


@dataclass(frozen=True, slots=True)
class DevFiles:
    """Paths of everything ``devsetup`` creates under one home."""

    home: Path

    @property
    def tls(self) -> Path:
        return self.home / "tls"

    @property
    def ca_cert(self) -> Path:
        return self.tls / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.tls / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.tls / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.tls / "server.key"

    @property
    def server_pem(self) -> Path:
        return self.tls / "server.pem"

    @property
    def client_cert(self) -> Path:
        return self.tls / "client.pem"

    @property
    def client_key(self) -> Path:
        return self.tls / "client.key"

    @property
    def signing_key(self) -> Path:
        return self.home / "keys" / "seal-key.pem"

    @property
    def passphrase_file(self) -> Path:
        return self.home / "keys" / "passphrase"

    @property
    def credentials(self) -> Path:
        return self.home / "credentials.json"

    @property
    def instance_config(self) -> Path:
        return self.home / "config" / "instance.json"


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, 0o600)


def _write_public(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, 0o644)


def _key_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "orthanc-hardening development"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def make_ca(now: dt.datetime, days: int = 1825) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    """Return a new self-signed CA certificate and its key."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = _name("orthanc-hardening dev CA")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def make_leaf(
    common_name: str,
    ca_cert: x509.Certificate,
    ca_key: rsa.RSAPrivateKey,
    now: dt.datetime,
    days: int = 825,
    not_before: dt.datetime | None = None,
) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    """Return a certificate for ``common_name`` signed by the CA (server and client usage).

    ``not_before``/``days`` let tests make expired or not-yet-valid certificates.
    """
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    start = not_before or (now - dt.timedelta(minutes=5))
    alt_names: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def cert_pem(cert: x509.Certificate) -> bytes:
    """PEM encoding of a certificate."""
    return cert.public_bytes(serialization.Encoding.PEM)


def make_signing_key(passphrase: bytes) -> bytes:
    """Return a new Ed25519 private key as passphrase-encrypted PKCS#8 PEM."""
    key = ed25519.Ed25519PrivateKey.generate()
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase),
    )


def ensure_pki(files: DevFiles, now: dt.datetime) -> None:
    """Create the CA, server and client certificates that do not exist yet."""
    if files.ca_cert.exists() and files.ca_key.exists():
        ca_cert = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
        loaded = serialization.load_pem_private_key(files.ca_key.read_bytes(), password=None)
        if not isinstance(loaded, rsa.RSAPrivateKey):
            raise SystemExit(f"{files.ca_key}: expected the RSA key devsetup made")
        ca_key = loaded
    else:
        ca_cert, ca_key = make_ca(now)
        _write_private(files.ca_key, _key_pem(ca_key))
        _write_public(files.ca_cert, cert_pem(ca_cert))
    if not (files.server_pem.exists() and files.server_key.exists() and files.server_cert.exists()):
        cert, key = make_leaf("localhost", ca_cert, ca_key, now)
        _write_private(files.server_key, _key_pem(key))
        _write_public(files.server_cert, cert_pem(cert))
        _write_private(files.server_pem, cert_pem(cert) + _key_pem(key))
    if not (files.client_cert.exists() and files.client_key.exists()):
        cert, key = make_leaf("orthanc-hardening dev client", ca_cert, ca_key, now)
        _write_private(files.client_key, _key_pem(key))
        _write_public(files.client_cert, cert_pem(cert))


def ensure_signing_key(files: DevFiles) -> None:
    """Create the passphrase and the encrypted Ed25519 signing key if missing."""
    if not files.passphrase_file.exists():
        _write_private(files.passphrase_file, secrets.token_urlsafe(24).encode("ascii"))
    if not files.signing_key.exists():
        passphrase = files.passphrase_file.read_bytes().strip()
        _write_private(files.signing_key, make_signing_key(passphrase))


def ensure_credentials(files: DevFiles) -> dict[str, str]:
    """Create ``credentials.json`` with random passwords if missing; return its content."""
    if files.credentials.exists():
        loaded: dict[str, str] = json.loads(files.credentials.read_text())
        return loaded
    credentials = {name: secrets.token_urlsafe(18) for name in ACCOUNTS}
    _write_private(files.credentials, json.dumps(credentials, indent=2).encode("utf-8") + b"\n")
    return credentials


def instance_config(credentials: dict[str, str], https_port: int, dicom_port: int, aet: str) -> dict[str, Any]:
    """The per-instance Orthanc keys that cannot come from ``${ENV}`` (integers, the users)."""
    return {
        "HttpPort": https_port,
        "DicomPort": dicom_port,
        "DicomAet": aet,
        "RegisteredUsers": dict(credentials),
    }


@dataclass(frozen=True, slots=True)
class NodeOptions:
    """How this instance joins a shared archive (``commands/devnode.py``)."""

    postgres: str
    storage: Path
    orthanc_json: Path
    join: Path | None = None


def setup(
    home: Path, https_port: int, dicom_port: int, aet: str, now: dt.datetime, node: NodeOptions | None = None
) -> DevFiles:
    """Create or reuse everything under ``home``; rewrite the per-instance configuration.

    With ``node``, the instance is a node of a shared archive: the checks run first (so a
    wrong variable changes nothing), a joining node takes the joined node's trust before
    anything missing is created, and ``config/orthanc.json`` is generated for the node.

    Raises:
        SystemExit: a node option is wrong (not a node home, PostgreSQL unreachable, storage
            not writable).
    """
    files = DevFiles(home.resolve())
    if node is not None:
        if node.join is not None:
            devnode.check_join_home(node.join, files.home)
        devnode.check_storage(node.storage)
        devnode.check_postgres(node.postgres)
    files.home.mkdir(parents=True, exist_ok=True)
    if node is not None and node.join is not None:
        devnode.join_home(node.join, files.home)
    ensure_pki(files, now)
    ensure_signing_key(files)
    credentials = ensure_credentials(files)
    generated = instance_config(credentials, https_port, dicom_port, aet)
    if node is not None:
        # Orthanc 1.11 and later: this node's identity among the servers sharing the index
        # (1.10 does not read it).
        generated["DatabaseServerIdentifier"] = f"{aet}-{https_port}"
        config = devnode.node_configuration(node.orthanc_json.read_text(encoding="utf-8"), node.postgres, node.storage)
        devnode.write_node_configuration(files.home / "config" / "orthanc.json", config)
    _write_private(files.instance_config, json.dumps(generated, indent=2).encode("utf-8") + b"\n")
    return files


def _run(args: argparse.Namespace) -> int:
    node = None
    if args.postgres:
        storage = Path(args.storage or Path(args.home) / "storage").absolute()
        join = Path(args.join).absolute() if args.join else None
        node = NodeOptions(postgres=args.postgres, storage=storage, orthanc_json=Path(args.orthanc_json), join=join)
    elif args.join:
        raise SystemExit("HARDENING_JOIN needs HARDENING_POSTGRES (and HARDENING_STORAGE): nodes of one archive "
                         "share Orthanc's index in PostgreSQL and one storage folder")
    files = setup(
        Path(args.home), args.https_port, args.dicom_port, args.aet, dt.datetime.now(dt.timezone.utc), node
    )
    print(f"development files ready in {files.home}")
    return 0


def register(subparsers: Any) -> None:
    """Add the ``devsetup`` command."""
    parser = subparsers.add_parser(
        "devsetup", help="create (or reuse) dev certificates, signing key and accounts"
    )
    parser.add_argument("--home", required=True, help="directory for certificates, keys, credentials")
    parser.add_argument("--https-port", type=int, default=8443)
    parser.add_argument("--dicom-port", type=int, default=4242)
    parser.add_argument("--aet", default="HARDENED")
    parser.add_argument("--postgres", default="", help="libpq URL: this instance is a node of the archive there")
    parser.add_argument("--storage", default="", help="the archive's shared storage folder (with --postgres)")
    parser.add_argument("--join", default="", help="home of a running node whose CA, keys and accounts to take")
    parser.add_argument("--orthanc-json", default="orthanc.json", help="the configuration a node's is made from")
    parser.set_defaults(handler=_run)
