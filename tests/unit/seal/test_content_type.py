"""User-defined attachments are sealed under the content type Orthanc's index names."""

from __future__ import annotations

import pytest

from orthanc_hardening.seal.content_type import sealed_content_type, user_content_types

TYPES = user_content_types({"UserContentType": {"report": [1030, "application/pdf"], "notes": 1031, "bad": 5,
                                                "worse": "x"}})


def test_user_content_types_read_both_forms_and_skip_invalid_numbers():
    assert TYPES == {"report": 1030, "notes": 1031}
    assert user_content_types({}) == {} and user_content_types({"UserContentType": []}) == {}


@pytest.mark.parametrize(("given", "method", "uri", "expected"), [
    (0, "PUT", "/instances/abc/attachments/report", 1030),
    (0, "PUT", "/studies/abc/attachments/notes", 1031),
    (0, "PUT", "/instances/abc/attachments/1040", 1040),
    (0, "PUT", "/instances/abc/attachments/unknown", 0),
    (0, "GET", "/instances/abc/attachments/report", 0),
    (0, "", "", 0),
    (1, "PUT", "/instances/abc/attachments/report", 1),  # a type Orthanc named is kept
    (1030, "PUT", "/instances/abc/attachments/report", 1030),
])
def test_sealed_content_type(given, method, uri, expected):
    assert sealed_content_type(given, method, uri, TYPES) == expected
