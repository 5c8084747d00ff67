"""The one text form of a moment in every signed record, store and message of the plugin.

``format_time`` gives ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (UTC, microseconds; sortable as text, RFC
3339 as RFC 5424 §6.2.3 and the A.5 ``EventDateTime`` want); ``parse_time`` reads it back. A
naive ``datetime`` is a caller bug (``ValueError``): every time the plugin handles is aware UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime

_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def format_time(moment: datetime) -> str:
    """The canonical UTC text of ``moment``.

    Raises:
        ValueError: ``moment`` is naive.
    """
    if moment.tzinfo is None:
        raise ValueError("times must be timezone-aware")
    return moment.astimezone(UTC).strftime(_FORMAT)


def parse_time(text: str) -> datetime:
    """Parse the canonical text back to an aware UTC datetime.

    Raises:
        ValueError: not the canonical format.
    """
    return datetime.strptime(text, _FORMAT).replace(tzinfo=UTC)
