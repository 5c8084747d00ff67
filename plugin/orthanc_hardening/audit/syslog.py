"""Syslog transport of audit messages: RFC 5424 messages, RFC 5425 octet-counting framing over TLS.

``syslog_message`` builds one RFC 5424 message (``<PRI>1 TIMESTAMP HOST APP PROCID MSGID - MSG``,
MSGID ``IHE+RFC-3881`` as IHE ATNA asks) and ``frame`` prefixes it with its length (RFC 5425
§4.3 octet counting). Both are pure. ``TLSSyslogTransport`` is the small piece of I/O: it
connects with the configured CA, client certificate and key (``Hardening.Audit.Syslog``), sends
frames, and checks that the collector is still there before the exporter treats a batch as
delivered.
"""

from __future__ import annotations

import contextlib
import re
import select
import socket
import ssl
from datetime import UTC, datetime

from orthanc_hardening.config import SyslogConfig
from orthanc_hardening.errors import StoreUnavailableError

MSGID = "IHE+RFC-3881"
# RFC 5424 §6.2.1: facility 10 = security/authorization (authpriv).
FACILITY_AUTHPRIV = 10
SEVERITY_WARNING = 4
SEVERITY_NOTICE = 5
NILVALUE = "-"
_PRINTUSASCII = re.compile(r"[^\x21-\x7e]")


def _header_field(value: str, limit: int) -> str:
    # RFC 5424 §6: header fields are PRINTUSASCII (33..126), never empty (NILVALUE instead).
    cleaned = _PRINTUSASCII.sub("_", value)[:limit]
    return cleaned or NILVALUE


def syslog_timestamp(moment: datetime) -> str:
    """RFC 5424 §6.2.3 TIMESTAMP (RFC 3339, UTC, microseconds).

    Raises:
        ValueError: ``moment`` is naive.
    """
    if moment.tzinfo is None:
        raise ValueError("syslog timestamps must be timezone-aware")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def syslog_message(payload: bytes, *, time: datetime, hostname: str, app_name: str, procid: str,
                   failure: bool = False, msgid: str = MSGID, sequence_id: int | None = None) -> bytes:
    """Return one RFC 5424 syslog message carrying ``payload`` (an audit message XML).

    Args:
        payload: the MSG part (UTF-8 XML).
        time: the event time (TIMESTAMP).
        hostname: HOSTNAME (FQDN, host name or IP).
        app_name: APP-NAME.
        procid: PROCID (the process id).
        failure: the event's outcome was a failure (severity warning instead of notice).
        msgid: MSGID, ``IHE+RFC-3881`` for ATNA.
        sequence_id: the audit trail's ``seq``, sent as RFC 5424 §7.3.1 ``[meta sequenceId]``
            so a collector can spot gaps and duplicates (at-least-once delivery).

    Returns:
        The message bytes, without framing.
    """
    severity = SEVERITY_WARNING if failure else SEVERITY_NOTICE
    pri = FACILITY_AUTHPRIV * 8 + severity
    header = " ".join((
        f"<{pri}>1",
        syslog_timestamp(time),
        _header_field(hostname, 255),
        _header_field(app_name, 48),
        _header_field(procid, 128),
        _header_field(msgid, 32),
        f'[meta sequenceId="{sequence_id}"]' if sequence_id is not None and sequence_id > 0 else NILVALUE,
    ))
    return header.encode("ascii") + b" " + payload


def frame(message: bytes) -> bytes:
    """RFC 5425 §4.3 / RFC 6587 octet counting: ``MSG-LEN SP SYSLOG-MSG``."""
    return str(len(message)).encode("ascii") + b" " + message


def parse_frames(data: bytes) -> tuple[list[bytes], bytes]:
    """Split octet-counted frames (for tests and tools); return ``(messages, rest)``.

    Raises:
        ValueError: the data is not octet-counted framing.
    """
    messages: list[bytes] = []
    position = 0
    while position < len(data):
        space = data.find(b" ", position)
        if space < 0:
            break
        length_text = data[position:space]
        if not length_text.isdigit() or length_text.startswith(b"0"):
            raise ValueError(f"bad octet count at byte {position}: {length_text[:12]!r}")
        end = space + 1 + int(length_text)
        if end > len(data):
            break
        messages.append(data[space + 1:end])
        position = end
    return messages, data[position:]


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
