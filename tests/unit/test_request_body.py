"""``parse_json_object`` refuses hostile bodies before the JSON parser sees them."""

from __future__ import annotations

import json

import pytest

from orthanc_hardening.errors import BadRequestError, HostileInputError
from orthanc_hardening.request_body import MAX_BODY_BYTES, job_request, nesting_depth, parse_json_object


def test_valid_object_is_parsed() -> None:
    assert parse_json_object(b'{"Level": "Study", "Query": {"PatientID": "[{x"}}') == {
        "Level": "Study",
        "Query": {"PatientID": "[{x"},
    }


def test_depth_ignores_brackets_inside_strings() -> None:
    assert nesting_depth(b'{"a": "[[[[{{{{\\"[[["}') == 1
    assert nesting_depth(b'[[[]], {"a": [1]}]') == 3


@pytest.mark.attack
def test_deeply_nested_body_is_refused_without_parsing() -> None:
    hostile = b"[" * 5000 + b"]" * 5000
    with pytest.raises(BadRequestError, match="nested deeper"):
        parse_json_object(hostile)


@pytest.mark.parametrize(
    ("body", "message"),
    [(b"", "not empty"), (b"[1, 2]", "JSON object"), (b"{not json", "JSON object"), (b"3", "JSON object")],
)
def test_bad_bodies_name_the_parameter(body: bytes, message: str) -> None:
    with pytest.raises(BadRequestError, match=message) as caught:
        parse_json_object(body, name="body")
    assert caught.value.parameter == "body"


def test_empty_body_may_mean_empty_object() -> None:
    assert parse_json_object(b"  ", empty_ok=True) == {}


def test_huge_body_is_refused() -> None:
    with pytest.raises(BadRequestError, match="larger than"):
        parse_json_object(b'{"a": "' + b"x" * MAX_BODY_BYTES + b'"}')


# -- job_request: how a job route's body is handed on ----------------------------------------

ORTHANC_ID = "a98e0d87-aa91e3c9-bd876064-db292aca-7c0c1894"


def test_a_job_body_nested_too_deep_is_refused_before_it_is_parsed() -> None:
    with pytest.raises(HostileInputError, match="more than 32 levels deep"):
        job_request(b"[" * 500 + b"]" * 500)


@pytest.mark.parametrize(("body", "synchronous"), [
    ({}, True), ({"Synchronous": True}, True), ({"Asynchronous": False}, True),
    ({"Asynchronous": True}, False), ({"Synchronous": False, "Asynchronous": False}, False),
    ({"Synchronous": True, "Asynchronous": True}, True), ({"Synchronous": 1}, False), ({"Asynchronous": "no"}, False),
])
def test_a_job_body_is_synchronous_as_orthanc_reads_it(body: dict[str, object], synchronous: bool) -> None:
    raw = json.dumps(body).encode()
    request = job_request(raw)
    assert request.synchronous is synchronous
    if synchronous:
        forwarded = json.loads(request.body)
        assert forwarded["Asynchronous"] is True and "Synchronous" not in forwarded
    else:
        assert request.body == raw  # handed on unchanged: asynchronous, or refused by Orthanc


@pytest.mark.parametrize("body", [b"", b"not json", b"[]", b'"x"', b"12", b"null"])
def test_a_body_orthanc_refuses_before_any_job_is_handed_on_unchanged(body: bytes) -> None:
    assert job_request(body) == type(job_request(body))(body, synchronous=False)


@pytest.mark.parametrize("body", [f" {ORTHANC_ID} ".encode(), json.dumps(ORTHANC_ID).encode(),
                                  json.dumps([ORTHANC_ID]).encode()])
def test_a_send_of_a_bare_id_string_or_list_becomes_its_resources(body: bytes) -> None:
    request = job_request(body, resources_form=True)
    assert request.synchronous
    assert json.loads(request.body) == {"Resources": [ORTHANC_ID], "Asynchronous": True}
