"""``parse_json_object`` refuses hostile bodies before the JSON parser sees them."""

from __future__ import annotations

import pytest

from orthanc_hardening.errors import BadRequestError
from orthanc_hardening.request_body import MAX_BODY_BYTES, nesting_depth, parse_json_object


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
