"""Audit query parsing and formatting, and the classification of HTTP requests into events."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime

import pytest

from orthanc_hardening.audit.chain import link
from orthanc_hardening.audit.event import Action, EventCode, Outcome
from orthanc_hardening.audit.query import neutralise, parse_query, render
from orthanc_hardening.audit.routes import classify
from orthanc_hardening.errors import BadRequestError
from tests.unit.audit.conftest import make_event

ID = "6e2c0ec2-5d99ba4a-6a4a0e2f-8a3a0b2c-7d3c7a4e"


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"since": "yesterday"}, "since"),
        ({"until": "2026-13-01"}, "until"),
        ({"limit": "-1"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"after": "0"}, "after"),
        ({"action": "X"}, "action"),
        ({"event": "999"}, "event"),
        ({"outcome": "2"}, "outcome"),
        ({"format": "xml"}, "format"),
        ({"series": "a\nb"}, "series"),
        ({"user": "x" * 300}, "user"),
        ({"serie": "1.2"}, "serie"),
        ({"since": "2026-02-01", "until": "2026-01-01"}, "until"),
    ],
)
def test_bad_values_name_the_parameter(params: dict[str, str], parameter: str) -> None:
    with pytest.raises(BadRequestError) as caught:
        parse_query(params, 100)
    assert caught.value.parameter == parameter


def test_good_query_is_parsed() -> None:
    query = parse_query({"series": "1.2", "action": "r", "event": "110103", "outcome": "0",
                         "since": "2026-01-01T00:00:00Z", "until": "2026-01-02", "limit": "5", "after": "9"}, 100)
    assert (query.series, query.action, query.event, query.outcome, query.limit, query.after) == (
        "1.2", Action.READ, EventCode.INSTANCES_ACCESSED, Outcome.SUCCESS, 5, 9)
    assert query.since == datetime(2026, 1, 1, tzinfo=UTC)


def test_huge_limit_is_capped() -> None:
    assert parse_query({"limit": "999999999"}, 250).limit == 250


@pytest.mark.attack
@pytest.mark.parametrize("value", ["=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx"])
def test_csv_formula_injection_is_neutralised(value: str) -> None:
    assert neutralise(value) == "'" + value
    row = link(None, make_event(1, user=value, patient_id=value))
    body, content_type = render([row], parse_query({"format": "csv"}, 10))
    assert content_type.startswith("text/csv")
    parsed = list(csv.DictReader(io.StringIO(body)))
    assert parsed[0]["user"] == "'" + value and parsed[0]["patient_id"] == "'" + value


def test_plain_values_are_not_changed() -> None:
    assert neutralise("alice") == "alice" and neutralise(3) == "3"


def test_json_and_ndjson_formats() -> None:
    rows = [link(None, make_event(1))]
    body, _ = render(rows, parse_query({"limit": "1"}, 10))
    answer = json.loads(body)
    assert answer["count"] == 1 and answer["next_after"] == 1
    assert answer["events"][0]["event_name"] == "DICOM Instances Accessed"
    body, content_type = render(rows, parse_query({"format": "ndjson"}, 10))
    assert content_type == "application/x-ndjson" and json.loads(body.splitlines()[0])["seq"] == 1


@pytest.mark.parametrize(
    ("method", "uri", "kind", "event", "action", "per_series"),
    [
        ("GET", f"/instances/{ID}/file", "access", EventCode.INSTANCES_ACCESSED, Action.READ, True),
        ("GET", f"/instances/{ID}/frames/0/rendered", "access", EventCode.INSTANCES_ACCESSED, Action.READ, True),
        ("GET", f"/instances/{ID}/simplified-tags", "access", EventCode.INSTANCES_ACCESSED, Action.READ, True),
        ("GET", f"/series/{ID}/archive", "archive", EventCode.INSTANCES_TRANSFERRED, Action.READ, True),
        ("POST", f"/studies/{ID}/media", "archive", EventCode.INSTANCES_TRANSFERRED, Action.READ, True),
        ("GET", "/studies", "query", EventCode.QUERY, Action.EXECUTE, False),
        ("GET", f"/studies/{ID}", "query", EventCode.QUERY, Action.EXECUTE, False),
        ("GET", f"/studies/{ID}/series", "query", EventCode.QUERY, Action.EXECUTE, False),
        ("POST", "/tools/find", "query", EventCode.QUERY, Action.EXECUTE, False),
        ("DELETE", f"/studies/{ID}", "delete", EventCode.STUDY_DELETED, Action.DELETE, True),
        ("DELETE", f"/instances/{ID}", "delete", EventCode.STUDY_DELETED, Action.DELETE, True),
        ("PUT", f"/series/{ID}/metadata/1024", "change", EventCode.INSTANCES_ACCESSED, Action.UPDATE, True),
        ("POST", f"/studies/{ID}/anonymize", "modify", EventCode.INSTANCES_ACCESSED, Action.READ, True),
        ("POST", "/modalities/pacs/store", "send", EventCode.BEGIN_TRANSFERRING, Action.EXECUTE, False),
        ("POST", "/peers/other/store", "send", EventCode.BEGIN_TRANSFERRING, Action.EXECUTE, False),
        ("POST", "/instances", "upload", EventCode.IMPORT, Action.CREATE, True),
        ("POST", "/dicom-web/studies", "upload", EventCode.IMPORT, Action.CREATE, True),
        ("GET", "/dicom-web/studies", "query", EventCode.QUERY, Action.EXECUTE, False),
        ("GET", "/dicom-web/studies/1.2.3/series", "query", EventCode.QUERY, Action.EXECUTE, False),
        ("GET", "/dicom-web/studies/1.2.3/series/1.2.4", "access", EventCode.INSTANCES_ACCESSED, Action.READ, True),
        ("GET", "/dicom-web/studies/1.2.3/metadata", "access", EventCode.INSTANCES_ACCESSED, Action.READ, True),
        ("POST", "/dicom-web/servers/remote/stow", "send", EventCode.BEGIN_TRANSFERRING, Action.EXECUTE, False),
        ("POST", "/tools/create-archive", "archive", EventCode.INSTANCES_TRANSFERRED, Action.READ, False),
    ],
)
def test_classify(method: str, uri: str, kind: str, event: EventCode, action: Action, per_series: bool) -> None:
    access = classify(method, uri, {})
    assert access is not None
    assert (access.kind, access.event, access.action, access.per_series) == (kind, event, action, per_series)


@pytest.mark.parametrize(("method", "uri"), [("GET", "/system"), ("GET", "/app/explorer.html"),
                                             ("GET", "/jobs"), ("GET", "/dicom-web/info"),
                                             ("GET", "/hardening/audit")])
def test_requests_without_dicom_data_are_not_classified(method: str, uri: str) -> None:
    assert classify(method, uri, {}) is None


def test_dicomweb_access_carries_the_uids() -> None:
    access = classify("GET", "/dicom-web/studies/1.2.3/series/1.2.4/instances/1.2.5/frames/1", {})
    assert access is not None and access.uids == ("1.2.3", "1.2.4", "1.2.5")
