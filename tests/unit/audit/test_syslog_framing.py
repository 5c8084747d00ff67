"""RFC 5424 messages and RFC 5425 octet-counting frames for the ATNA export."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from orthanc_hardening.audit.syslog import MSGID, frame, parse_frames, syslog_message, syslog_timestamp

NOW = datetime(2026, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)
XML = '<?xml version="1.0"?><AuditMessage>é</AuditMessage>'.encode()
HEADER = re.compile(rb"^<(\d+)>1 (\S+) (\S+) (\S+) (\S+) (\S+) (-) (.*)$", re.S)


def test_header_fields_follow_rfc5424() -> None:
    message = syslog_message(XML, time=NOW, hostname="pacs1.example.org", app_name="orthanc-hardening", procid="42")
    match = HEADER.match(message)
    assert match is not None
    pri, timestamp, host, app, procid, msgid, _, payload = match.groups()
    assert int(pri) == 10 * 8 + 5  # authpriv.notice
    assert timestamp == b"2026-03-04T05:06:07.123456Z"
    assert (host, app, procid, msgid) == (b"pacs1.example.org", b"orthanc-hardening", b"42", b"IHE+RFC-3881")
    assert payload == XML


def test_failure_is_warning_severity() -> None:
    message = syslog_message(XML, time=NOW, hostname="h", app_name="a", procid="1", failure=True)
    assert message.startswith(b"<84>1 ")


def test_header_fields_are_printable_ascii_and_never_empty() -> None:
    message = syslog_message(XML, time=NOW, hostname="bad host\n", app_name="", procid="1")
    header = message.split(b" <?xml", 1)[0]
    assert header.split(b" ")[2:5] == [b"bad_host_", b"-", b"1"]
    assert MSGID.encode() in header


def test_naive_time_is_refused() -> None:
    with pytest.raises(ValueError):
        syslog_timestamp(datetime(2026, 1, 1))


def test_octet_counting_counts_bytes_not_characters() -> None:
    message = syslog_message(XML, time=NOW, hostname="h", app_name="a", procid="1")
    framed = frame(message)
    length, _, rest = framed.partition(b" ")
    assert int(length) == len(message) == len(rest)


def test_frames_split_back_even_with_spaces_and_newlines_inside() -> None:
    messages = [b"<85>1 - - - - IHE+RFC-3881 - a b\nc", b"<85>1 x", "<85>1 é".encode()]
    stream = b"".join(frame(m) for m in messages)
    assert parse_frames(stream) == (messages, b"")
    assert parse_frames(stream[:-2]) == (messages[:2], frame(messages[2])[:-2])


@pytest.mark.parametrize("bad", [b"abc <85>1", b"012 <85>1"])
def test_bad_framing_is_refused(bad: bytes) -> None:
    with pytest.raises(ValueError):
        parse_frames(bad)


def test_sequence_id_goes_into_meta_structured_data() -> None:
    message = syslog_message(XML, time=NOW, hostname="h", app_name="a", procid="1", sequence_id=42)
    assert b' IHE+RFC-3881 [meta sequenceId="42"] <?xml' in message
