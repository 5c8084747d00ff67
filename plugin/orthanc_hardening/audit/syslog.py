"""Syslog messages of audit events: RFC 5424 messages, RFC 5425 octet-counting framing.

``syslog_message`` builds one RFC 5424 message (``<PRI>1 TIMESTAMP HOST APP PROCID MSGID - MSG``,
MSGID ``IHE+RFC-3881`` as IHE ATNA asks) and ``frame`` prefixes it with its length (RFC 5425
§4.3 octet counting); ``parse_frames`` reads them back. Pure: the connection to the collector is
``services/syslog_transport.py``.
"""

from __future__ import annotations

import re
from datetime import datetime

from orthanc_hardening.timefmt import format_time

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
    return format_time(moment)


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
