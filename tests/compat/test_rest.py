"""Orthanc's REST API answers the same with the plugin (monitor mode, and enforce mode on
untampered data): every route the plugin overrides or filters, every level and form.

Each case is one request sent to the three servers; the normalised answers must be equal
(``compare.py``). The deliberate differences are listed in ``deliberate.py`` (and the README).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from orthanc_hardening.integrity.query import orthanc_id
from tests.compat import deliberate, timing
from tests.compat.compare import Answer, describe, header_differences
from tests.compat.conftest import STUDIES, Trio
from tests.support.server import OrthancServer, orthanc_version

P1 = orthanc_id("CMP-1")
P3 = orthanc_id("CMP-3")
S1 = orthanc_id("CMP-1", STUDIES[0][3])
S4 = orthanc_id("CMP-3", STUDIES[3][3])
SE1 = orthanc_id("CMP-1", STUDIES[0][3], STUDIES[0][3] + ".1")
SE4 = orthanc_id("CMP-3", STUDIES[3][3], STUDIES[3][3] + ".2")
I1 = orthanc_id("CMP-1", STUDIES[0][3], STUDIES[0][3] + ".1", STUDIES[0][3] + ".1.1")
I3 = orthanc_id("CMP-2", STUDIES[2][3], STUDIES[2][3] + ".1", STUDIES[2][3] + ".1.2")
UNKNOWN = "00000000-00000000-00000000-00000000-00000000"


GETS = [
    # Resource lists, every level, every form.
    "/patients", "/studies", "/series", "/instances",
    "/patients?expand", "/studies?expand", "/series?expand", "/instances?expand",
    "/studies?expand&since=1&limit=2", "/studies?since=0&limit=1", "/series?expand&full", "/studies?expand&short",
    "/patients?expand&requestedTags=PatientName;NumberOfPatientRelatedStudies",
    # One resource, every level.
    f"/patients/{P1}", f"/studies/{S1}", f"/series/{SE1}", f"/instances/{I1}",
    f"/studies/{S4}?full", f"/series/{SE4}?short", f"/instances/{I3}?simplify",
    # Children and parents.
    f"/patients/{P1}/studies", f"/patients/{P1}/series", f"/patients/{P1}/instances",
    f"/studies/{S1}/series", f"/studies/{S1}/instances", f"/studies/{S1}/patient",
    f"/series/{SE1}/instances", f"/series/{SE1}/study", f"/series/{SE1}/patient",
    f"/instances/{I1}/series", f"/instances/{I1}/study", f"/instances/{I1}/patient",
    f"/studies/{S1}/series?expand", f"/patients/{P3}/studies?full",
    # Unknown ids and other-level ids.
    f"/patients/{UNKNOWN}", f"/studies/{UNKNOWN}", f"/series/{UNKNOWN}", f"/instances/{UNKNOWN}",
    f"/studies/{SE1}", f"/studies/{UNKNOWN}/series", f"/studies/{P1}/series",
    # Bytes and tags of instances.
    f"/instances/{I1}/file", f"/instances/{I1}/tags", f"/instances/{I1}/simplified-tags",
    f"/instances/{I3}/tags?short", f"/instances/{I1}/frames/0/raw", f"/instances/{I1}/preview",
    f"/instances/{I1}/attachments/dicom/data", f"/instances/{I1}/metadata?expand",
    # Archives and media, every level, other-level ids, parameters.
    f"/studies/{S1}/archive", f"/series/{SE1}/archive", f"/patients/{P1}/archive", f"/studies/{S4}/media",
    f"/studies/{SE1}/archive", f"/patients/{I1}/media", f"/studies/{UNKNOWN}/archive",
    f"/studies/{S1}/archive?transcode=1.2.840.10008.1.2", f"/studies/{S1}/archive?transcode=nonsense",
    f"/studies/{S1}/media?extended",
]

FINDS: list[Any] = [
    {"Level": "Patient", "Query": {}},
    {"Level": "Study", "Query": {"PatientID": "CMP-1"}, "Expand": True},
    {"Level": "Study", "Query": {"StudyDate": "20240101-20251231"}},
    {"Level": "Study", "Query": {"PatientName": "*oe*"}, "Expand": True},
    {"Level": "Study", "Query": {"PatientName": "doe*"}, "CaseSensitive": False},
    {"Level": "Study", "Query": {"PatientName": "doe*"}, "CaseSensitive": True},
    {"Level": "Study", "Query": {"AccessionNumber": "*"}},
    {"Level": "Study", "Query": {"ModalitiesInStudy": "MR"}},
    {"Level": "Series", "Query": {"Modality": "CT\\MR"}, "Expand": True, "Limit": 2},
    {"Level": "Series", "Query": {"Modality": "CT"}, "Since": 1, "Limit": 1},
    {"Level": "Instance", "Query": {"SOPInstanceUID": STUDIES[2][3] + ".1.2"}, "Expand": True},
    {"Level": "Instance", "Query": {"InstanceNumber": "2"}, "Expand": True, "Short": True},
    {"Level": "Study", "Query": {}, "Expand": True, "Full": True},
    {"Level": "Study", "Query": {}, "Expand": True, "RequestedTags": ["NumberOfStudyRelatedInstances"]},
    {"Level": "Study", "Query": {}, "OrderBy": [{"Type": "DicomTag", "Key": "StudyDate", "Direction": "DESC"}]},
    {"Level": "Study", "Query": {}, "ResponseContent": ["MainDicomTags", "Children"]},
    {"Level": "Study", "Query": {"BodyPartExamined": "CHEST"}, "Expand": True},
    {"Level": "Nonsense", "Query": {}},
    {"Query": {}},
    [],
    "not json",
]

POSTS: list[tuple[str, Any]] = [
    ("/tools/lookup", STUDIES[0][3]),
    ("/tools/lookup", "1.2.3.nothing"),
    ("/tools/create-archive", {"Resources": [S1, SE4]}),
    ("/tools/create-archive", [S1, I3]),
    ("/tools/create-media", [P3]),
    ("/tools/create-media-extended", {"Resources": [SE1]}),
    ("/tools/create-archive", {"Resources": [UNKNOWN]}),
    ("/tools/create-archive", {"Resources": "not a list"}),
    ("/tools/create-archive", {"Resources": [S1], "Transcode": "nonsense"}),
    (f"/studies/{S1}/archive", {}),
    (f"/studies/{S1}/archive", {"Transcode": "nonsense"}),
]


def answers(trio: Trio, method: str, path: str, body: Any = None) -> list[Answer]:
    found = []
    kind = "DICOMweb" if path.startswith(("/dicom-web", "/wado")) else \
        "archives and media" if any(part in path for part in ("/archive", "/media", "/create-")) else "REST"
    for name, server in zip(timing.SERVERS, trio.all, strict=True):
        kwargs: dict[str, Any] = {}
        if body is not None:
            kwargs["data"] = body.encode() if isinstance(body, str) else json.dumps(body)
        response = timing.timed(kind, name, lambda: server.request(method, path, **kwargs))  # noqa: B023
        found.append(Answer.of(response))
    return found


def assert_same(trio: Trio, method: str, path: str, body: Any = None) -> None:
    plain, monitor, enforce = answers(trio, method, path, body)
    for name, answer in (("monitor", monitor), ("enforce", enforce)):
        assert answer == plain, (f"{name} differs on {method} {path}:\n plain   {describe(plain)}\n"
                                 f" {name:<7} {describe(answer)}")
        unexpected = header_differences(plain, answer) - deliberate.extra_headers(path)
        assert not unexpected, f"{name} headers differ on {method} {path}: {sorted(unexpected)}"


@pytest.mark.parametrize("path", GETS)
def test_get_answers_like_plain_orthanc(trio: Trio, path: str) -> None:
    assert_same(trio, "GET", path)


@pytest.mark.parametrize("body", FINDS, ids=lambda b: json.dumps(b)[:60])
def test_find_answers_like_plain_orthanc(trio: Trio, body: Any) -> None:
    assert_same(trio, "POST", "/tools/find", body)


@pytest.mark.parametrize(("path", "body"), POSTS, ids=lambda v: json.dumps(v)[:50] if not isinstance(v, str) else v)
def test_post_answers_like_plain_orthanc(trio: Trio, path: str, body: Any) -> None:
    assert_same(trio, "POST", path, body)


def test_the_servers_run_the_same_orthanc(trio: Trio) -> None:
    versions = {server.get("/system").json()["Version"] for server in trio.all}
    assert versions == {".".join(map(str, orthanc_version()))}


def server_of(trio: Trio) -> OrthancServer:
    return trio.plain


@pytest.mark.parametrize("body", [{"Resources": [I1, S1], "Level": "Instance"}, {"Resources": [UNKNOWN]}, {},
                                  "not json", [1, [2, [3]]]], ids=lambda b: json.dumps(b)[:40])
def test_bulk_content_answers_like_plain_orthanc(trio: Trio, body: Any) -> None:
    assert_same(trio, "POST", "/tools/bulk-content", body)


@pytest.mark.parametrize("body", [{"Resources": [UNKNOWN]}, {}, "not json"], ids=lambda b: json.dumps(b)[:40])
def test_bulk_delete_answers_like_plain_orthanc(trio: Trio, body: Any) -> None:
    assert_same(trio, "POST", "/tools/bulk-delete", body)


def test_uploads_answer_and_record_like_plain_orthanc(trio: Trio) -> None:
    from tests.support.dicom import make_instance
    from tests.support.poison import nested_instance

    new = make_instance(patient_id="CMP-UP", seed=7)
    cases = [("new", new), ("again", new), ("nested-24", nested_instance(24, patient_id="CMP-UP24")),
             ("not-dicom", b"not a DICOM file")]
    for name, data in cases:
        found = [Answer.of(server.request("POST", "/instances", data=data)) for server in trio.all]
        plain = found[0]
        for label, answer in zip(("monitor", "enforce"), found[1:], strict=True):
            assert answer == plain, f"{label} differs on upload {name}:\n {describe(plain)}\n {describe(answer)}"
    instance = trio.plain.request("POST", "/instances", data=new).json()["ID"]
    for metadata in ("Origin", "RemoteIP", "HttpUsername"):
        values = {server.request("GET", f"/instances/{instance}/metadata/{metadata}").text for server in trio.all}
        assert len(values) == 1, (metadata, values)
