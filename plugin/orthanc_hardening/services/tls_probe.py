"""Measure which TLS versions and cipher suites a running endpoint accepts (client handshakes).

The posture report must not trust the configuration alone (ORTHANC-NOTES: Orthanc 1.10's DICOM
TLS accepted TLS 1.0 and 1.1 whatever was configured): ``measure_tls`` offers, one handshake
each, TLS 1.0, TLS 1.1, TLS 1.2 with only non-forward-secret suites (RSA key exchange), TLS 1.2
with forward-secret suites and TLS 1.3, and records which ones the server completed. It closes
each connection right after the handshake (no HTTP request, no DICOM association). The client
presents a certificate when one is given (an endpoint that requires client certificates
refuses a handshake without one, whatever the protocol); the server's certificate is not
verified: the probe measures protocols, not identity. I/O: sockets only.
"""

from __future__ import annotations

import socket
import ssl
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orthanc_hardening.tls.facts import TLSMeasurement
from orthanc_hardening.tls.posture import setting

TIMEOUT_SECONDS = 3.0


@dataclass(frozen=True, slots=True)
class Offer:
    """One handshake the probe makes."""

    name: str
    version: ssl.TLSVersion
    ciphers: str | None  # OpenSSL cipher string for TLS <= 1.2; None leaves the default
    weak: bool


OFFERS = (
    Offer("TLS 1.0", ssl.TLSVersion.TLSv1, "ALL:@SECLEVEL=0", True),
    Offer("TLS 1.1", ssl.TLSVersion.TLSv1_1, "ALL:@SECLEVEL=0", True),
    Offer("TLS 1.2 without forward secrecy", ssl.TLSVersion.TLSv1_2, "kRSA:@SECLEVEL=0", True),
    Offer("TLS 1.2 forward-secret", ssl.TLSVersion.TLSv1_2, "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM", False),
    Offer("TLS 1.3", ssl.TLSVersion.TLSv1_3, None, False),
)


def _context(offer: Offer, certificate: Path | None, private_key: Path | None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():
        # Offering TLS 1.0/1.1 is the point of the probe (Python deprecates the names).
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = offer.version
        context.maximum_version = offer.version
    if offer.ciphers is not None:
        context.set_ciphers(offer.ciphers)
    if certificate is not None:
        context.load_cert_chain(str(certificate), str(private_key) if private_key else None)
    return context


def measure_tls(host: str, port: int, certificate: Path | None = None,
                private_key: Path | None = None) -> TLSMeasurement:
    """Offer each of ``OFFERS`` to ``host:port`` and record what was accepted.

    Args:
        host: the endpoint's address (loopback for the server the plugin runs in).
        port: its port.
        certificate: a client certificate to present (PEM; may hold the key too).
        private_key: its key, when not in ``certificate``.

    Returns:
        The measurement; ``error`` is set when no handshake completed at all (then the
        refusals say nothing about versions).
    """
    accepted: list[tuple[str, str, str]] = []
    refused: list[str] = []
    untested: list[str] = []
    last_error = ""
    for offer in OFFERS:
        try:
            context = _context(offer, certificate, private_key)
        except (ssl.SSLError, ValueError, OSError) as exc:
            untested.append(f"{offer.name} ({exc})")
            continue
        try:
            with socket.create_connection((host, port), timeout=TIMEOUT_SECONDS) as raw, \
                    context.wrap_socket(raw) as tls:
                cipher = tls.cipher()
                accepted.append((offer.name, str(tls.version()), cipher[0] if cipher else ""))
        except ssl.SSLError as exc:
            if "NO_PROTOCOLS_AVAILABLE" in str(exc) or "no protocols available" in str(exc):
                untested.append(f"{offer.name} (not offered by this client's OpenSSL)")
                continue
            refused.append(offer.name)
            last_error = f"{type(exc).__name__}: {exc.reason or exc}"
        except OSError as exc:
            refused.append(offer.name)
            last_error = f"{type(exc).__name__}: {exc}"
    weak = tuple(name for name, _protocol, _cipher in accepted
                 if any(offer.weak and offer.name == name for offer in OFFERS))
    error = "" if accepted else f"no handshake completed ({last_error or 'nothing offered'})"
    return TLSMeasurement(f"{host}:{port}", tuple(accepted), tuple(refused), weak, tuple(untested), error)


def measure_endpoints(config: Mapping[str, Any], base: Path) -> dict[str, TLSMeasurement]:
    """Measure what the running HTTPS and DICOM TLS endpoints accept (``services/tls_probe.py``).

    The client presents the server's own certificate (HTTPS: ``SslCertificate``, which holds
    the key too; DICOM: ``DicomTlsCertificate`` and ``DicomTlsPrivateKey``), so that an endpoint
    requiring client certificates completes the handshakes it would accept from a client.
    """
    found: dict[str, TLSMeasurement] = {}

    def path(key: str) -> Path | None:
        value = config.get(key)
        if not isinstance(value, str) or not value:
            return None
        resolved = Path(value)
        return resolved if resolved.is_absolute() else base / resolved

    if setting(config, "HttpServerEnabled") is not False and config.get("SslEnabled") is True:
        certificate = path("SslCertificate") if config.get("SslVerifyPeers") is True else None
        found["https"] = measure_tls("127.0.0.1", int(config.get("HttpPort", 8042)), certificate)
    if setting(config, "DicomServerEnabled") is not False and config.get("DicomTlsEnabled") is True:
        found["dicom"] = measure_tls("127.0.0.1", int(config.get("DicomPort", 4242)),
                                     path("DicomTlsCertificate"), path("DicomTlsPrivateKey"))
    return found
