"""The connection to the syslog collector: RFC 5425 (syslog over TLS), or plain TCP.

``TLSSyslogTransport`` connects with the configured CA, client certificate and key
(``Hardening.Audit.Syslog``), sends frames (``audit/syslog.py`` builds them), and checks that
the collector is still there before the exporter treats a batch as delivered.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl

from orthanc_hardening.config import SyslogConfig
from orthanc_hardening.errors import StoreUnavailableError


def client_context(config: SyslogConfig) -> ssl.SSLContext:
    """The TLS client context for the collector: the configured CA, our certificate and key.

    Raises:
        StoreUnavailableError: the certificate files cannot be loaded.
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        if config.ca_certificate is not None:
            context.load_verify_locations(cafile=str(config.ca_certificate))
        if config.certificate is not None:
            context.load_cert_chain(str(config.certificate),
                                    str(config.private_key) if config.private_key is not None else None)
    except (OSError, ssl.SSLError) as exc:
        raise StoreUnavailableError(f"syslog TLS files cannot be loaded: {exc}") from exc
    return context


class TLSSyslogTransport:
    """A connection to the syslog collector (RFC 5425 over TLS, or plain TCP when ``Tls`` is false)."""

    def __init__(self, config: SyslogConfig, timeout: float = 10.0, settle: float = 0.05) -> None:
        """Prepare (not connect).

        Args:
            config: ``Hardening.Audit.Syslog``.
            timeout: connect and send timeout in seconds.
            settle: seconds to wait after a batch for the collector to report a closed
                connection before the batch counts as delivered.
        """
        self._config = config
        self._timeout = timeout
        self._settle = settle
        self._context = client_context(config) if config.tls else None
        self._socket: socket.socket | None = None

    def _connect(self) -> socket.socket:
        raw = socket.create_connection((self._config.host, self._config.port), timeout=self._timeout)
        if self._context is None:
            return raw
        try:
            return self._context.wrap_socket(raw, server_hostname=self._config.host)
        except BaseException:
            raw.close()
            raise

    def send(self, frames: list[bytes]) -> None:
        """Send frames in order; return once they were written and the collector is still connected.

        Raises:
            OSError: the collector cannot be reached or closed the connection (the batch may be
                partly delivered: the caller sends it again, so delivery is at least once).
        """
        if self._socket is None:
            self._socket = self._connect()
        sock = self._socket
        try:
            self._check_alive(sock, 0.0)
            sock.settimeout(self._timeout)
            sock.sendall(b"".join(frames))
            self._check_alive(sock, self._settle)
        except (OSError, ValueError) as exc:
            self.close()
            raise OSError(f"syslog collector {self._config.host}:{self._config.port}: {exc}") from exc

    @staticmethod
    def _check_alive(sock: socket.socket, wait: float) -> None:
        # The collector never writes to us: a readable socket means a close (EOF), a reset or a
        # TLS record (session ticket, alert). Read without blocking to tell them apart.
        readable, _, _ = select.select([sock], [], [], wait)
        if not readable:
            return
        sock.settimeout(0.0)
        try:
            data = sock.recv(4096)
        except (ssl.SSLWantReadError, BlockingIOError):
            return
        if data == b"":
            raise ConnectionResetError("collector closed the connection")

    def close(self) -> None:
        """Close the connection (the next send reconnects)."""
        if self._socket is not None:
            with contextlib.suppress(OSError):
                self._socket.close()
            self._socket = None
