"""Audit trail queries: parse filters from a request, format the answer (JSON, CSV, NDJSON).

``parse_query`` turns untrusted parameters into an ``AuditQuery`` or raises
``BadRequestError`` naming the parameter; the store runs the query. The CSV writer neutralises
spreadsheet formula injection (OWASP "CSV Injection"): a cell that begins with ``=``, ``+``,
``-``, ``@``, a tab or a carriage return gets a leading apostrophe. No I/O here.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from orthanc_hardening.audit.chain import StoredEvent
from orthanc_hardening.audit.event import Action, EventCode, Outcome
from orthanc_hardening.errors import BadRequestError
from orthanc_hardening.timefmt import format_time

DEFAULT_LIMIT = 100
FORMATS = ("json", "csv", "ndjson")
_TEXT_FILTERS = ("series", "study", "patient", "user")
_KNOWN = frozenset({*_TEXT_FILTERS, "action", "event", "outcome", "since", "until", "limit", "after", "format"})
_MAX_TEXT = 256
COLUMNS = (
    "seq", "time", "event", "event_name", "action", "outcome", "user", "roles", "source_ip", "calling_aet",
    "called_aet", "transport", "route", "patient_id", "study_uid", "series_uid", "instance_count", "detail",
    "prev_hash", "hash",
)
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """A validated audit query: every filter is optional; newest first."""

    series: str = ""
    study: str = ""
    patient: str = ""
    user: str = ""
    action: Action | None = None
    event: EventCode | None = None
    outcome: Outcome | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = DEFAULT_LIMIT
    after: int | None = None  # continue below this seq (paging, newest first)
    format: str = "json"

    @property
    def since_text(self) -> str | None:
        return format_time(self.since) if self.since else None

    @property
    def until_text(self) -> str | None:
        return format_time(self.until) if self.until else None


def parse_query(params: Mapping[str, str], max_limit: int, reject_unknown: bool = True) -> AuditQuery:
    """Validate request parameters into an ``AuditQuery``.

    Args:
        params: the query string (name -> value).
        max_limit: ``Hardening.Audit.MaxQueryLimit``; a larger ``limit`` is capped to it.
        reject_unknown: refuse unknown parameter names (a typo must not widen the answer).

    Returns:
        The query.

    Raises:
        BadRequestError: a parameter is unknown or its value is invalid; ``parameter`` names it.
    """
    if reject_unknown:
        for name in params:
            if name not in _KNOWN:
                raise BadRequestError(name, f"unknown filter (known: {', '.join(sorted(_KNOWN))})")
    texts = {}
    for name in _TEXT_FILTERS:
        value = params.get(name, "")
        if len(value) > _MAX_TEXT or any(ord(c) < 32 for c in value):
            raise BadRequestError(name, f"must be at most {_MAX_TEXT} printable characters")
        texts[name] = value
    limit = _integer(params, "limit", DEFAULT_LIMIT, minimum=1) or DEFAULT_LIMIT
    after = _integer(params, "after", None, minimum=1)
    fmt = params.get("format", "json") or "json"
    if fmt not in FORMATS:
        raise BadRequestError("format", f"must be one of {', '.join(FORMATS)}")
    since = _time(params, "since")
    until = _time(params, "until")
    if since and until and since > until:
        raise BadRequestError("until", "is before since")
    return AuditQuery(
        series=texts["series"], study=texts["study"], patient=texts["patient"], user=texts["user"],
        action=_action(params.get("action", "")), event=_event(params.get("event", "")),
        outcome=_outcome(params.get("outcome", "")), since=since, until=until,
        limit=min(limit, max_limit), after=after, format=fmt,
    )


def _integer(params: Mapping[str, str], name: str, default: int | None, minimum: int) -> int | None:
    raw = params.get(name, "")
    if raw == "":
        return default
    if not raw.isdigit() or len(raw) > 18:
        raise BadRequestError(name, f"must be a positive integer, not {raw[:40]!r}")
    value = int(raw)
    if value < minimum:
        raise BadRequestError(name, f"must be at least {minimum}")
    return value


def _time(params: Mapping[str, str], name: str) -> datetime | None:
    raw = params.get(name, "")
    if raw == "":
        return None
    text = raw.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise BadRequestError(name, f"must be an ISO 8601 date or time (e.g. 2026-01-31T08:00:00Z), not {raw[:40]!r}") \
            from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _action(raw: str) -> Action | None:
    if raw == "":
        return None
    for member in Action:
        if raw.upper() in (member.value, member.name):
            return member
    raise BadRequestError("action", "must be one of C, R, U, D, E")


def _event(raw: str) -> EventCode | None:
    if raw == "":
        return None
    for member in EventCode:
        if raw == member.code or raw.upper() == member.name or raw.lower() == member.display_name.lower():
            return member
    raise BadRequestError("event", "must be an A.5 event code such as 110103 (or its name)")


def _outcome(raw: str) -> Outcome | None:
    if raw == "":
        return None
    for member in Outcome:
        if raw == str(member.value) or raw.upper() == member.name:
            return member
    if raw.lower() == "failure":
        return Outcome.SERIOUS_FAILURE
    raise BadRequestError("outcome", "must be 0, 4, 8 or 12 (success, minor, serious, major failure)")


# -- formatting ----------------------------------------------------------------------------


def neutralise(value: object) -> str:
    """Return ``value`` as a CSV-safe string: formulas get a leading apostrophe."""
    text = "" if value is None else ",".join(value) if isinstance(value, list | tuple) else str(value)
    if text.startswith(_FORMULA_START):
        return "'" + text
    return text


def rows_of(events: Iterable[StoredEvent]) -> list[dict[str, object]]:
    """Flat dictionaries of stored events (the JSON shape)."""
    return [event.as_dict() for event in events]


def to_json(events: Sequence[StoredEvent], query: AuditQuery) -> str:
    """The JSON answer: events plus the ``next`` paging cursor (``after``) when more may follow."""
    rows = rows_of(events)
    following = events[-1].seq if len(events) == query.limit and events else None
    return json.dumps({"events": rows, "count": len(rows), "limit": query.limit, "next_after": following},
                      ensure_ascii=True, sort_keys=True, indent=1)


def to_ndjson(events: Iterable[StoredEvent]) -> str:
    """One JSON object per line."""
    return "".join(json.dumps(row, ensure_ascii=True, sort_keys=True) + "\n" for row in rows_of(events))


def to_csv(events: Iterable[StoredEvent]) -> str:
    """CSV with a header row; every cell neutralised against formula injection."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    for row in rows_of(events):
        writer.writerow([neutralise(row.get(column, "")) for column in COLUMNS])
    return buffer.getvalue()


def render(events: Sequence[StoredEvent], query: AuditQuery) -> tuple[str, str]:
    """Return ``(body, content type)`` in the query's format."""
    if query.format == "csv":
        return to_csv(events), "text/csv; charset=utf-8"
    if query.format == "ndjson":
        return to_ndjson(events), "application/x-ndjson"
    return to_json(events, query), "application/json"
