"""Fuzz: mutated DICOM over REST and C-STORE, malformed HTTP against every ``/hardening`` route.

Expectations: clear errors (4xx with a JSON body from the plugin's routes, never a 5xx), Orthanc
stays up (``/system`` answers after each batch), the instances stored before the fuzzing still
verify and download byte-identical, and the audit chain still verifies. Bounded: fixed seeds, a
few hundred cases."""

from __future__ import annotations

import io
import random
from collections.abc import Callable
from typing import Any

import pydicom
import pytest
import requests
from pydicom.dataset import Dataset
from pynetdicom import AE

from tests.reliability.conftest import audit_verifies, seal_report
from tests.support.dicom import make_instance, new_uid
from tests.support.dimse import STORAGE, _associate
from tests.support.server import OrthancServer

REST_CASES = 220
DIMSE_CASES = 40
SERVER_ERRORS = range(500, 600)
VRS = [b"SQ", b"OB", b"UN", b"FD", b"AT", b"XX", b"\x00\x00", b"UL", b"OW"]
HUGE_BODY = 20 * 1024 * 1024


@pytest.fixture(scope="module")
def fuzzed(start_orthanc_module: Any) -> dict[str, Any]:
    """A hardened server holding a few known instances before any fuzzing."""
    server: OrthancServer = start_orthanc_module()
    study_uid = new_uid()
    originals = {}
    for i in range(4):
        data = make_instance(patient_id="FUZZ-KEEP", study_uid=study_uid, instance_number=i + 1, seed=i)
        originals[server.upload(data)["ID"]] = data
    return {"server": server, "originals": originals, "study_uid": study_uid}


def _element_offsets(data: bytes) -> list[int]:
    """Offsets of explicit-VR element headers after the preamble (a VR made of two capitals)."""
    offsets = []
    for i in range(132, len(data) - 8):
        if data[i + 4 : i + 6].isalpha() and data[i + 4 : i + 6].isupper() and data[i + 1] in (0x00, 0x7F):
            offsets.append(i)
    return offsets


def mutate(base: bytes, rng: random.Random) -> tuple[str, bytes]:
    """One byte-level mutation of ``base``: flips, truncation, absurd length, wrong VR or garbage."""
    data = bytearray(base)
    kind = rng.choice(["flip", "truncate", "length", "vr", "garbage", "preamble-garbage"])
    if kind == "flip":
        for _ in range(rng.randint(1, 16)):
            position = rng.randrange(128, len(data))
            data[position] ^= 1 << rng.randrange(8)
    elif kind == "truncate":
        data = data[: rng.randrange(0, len(data))]
    elif kind in ("length", "vr"):
        offsets = _element_offsets(base)
        at = rng.choice(offsets)
        if kind == "vr":
            data[at + 4 : at + 6] = rng.choice(VRS)
        elif bytes(data[at + 4 : at + 6]) in (b"OB", b"OW", b"SQ", b"UN", b"UT", b"UC", b"UR"):
            data[at + 8 : at + 12] = rng.choice([0xFFFFFFF0, 0x7FFFFFFF, 0xFFFFFFFE]).to_bytes(4, "little")
        else:
            data[at + 6 : at + 8] = rng.choice([0xFFFF, 0xFFFE, 0x8001]).to_bytes(2, "little")
    elif kind == "garbage":
        data = bytearray(rng.randbytes(rng.randint(0, 4096)))
    else:
        data = bytearray(b"\x00" * 128 + b"DICM" + rng.randbytes(rng.randint(0, 2048)))
    return kind, bytes(data)


DATASET_MUTATIONS: list[tuple[str, Callable[[Dataset, random.Random], None]]] = [
    ("rows not a number", lambda ds, rng: ds.__setitem__(0x00280010, pydicom.DataElement(0x00280010, "US", 0xFFFF))),
    ("pixel data too short", lambda ds, rng: setattr(ds, "PixelData", ds.PixelData[: rng.randint(0, 100)])),
    ("huge patient id", lambda ds, rng: setattr(ds, "PatientID", "P" * rng.randint(70, 5000))),
    ("uid too long", lambda ds, rng: setattr(ds, "SeriesInstanceUID", "1." * 60)),
    ("uid garbage", lambda ds, rng: setattr(ds, "StudyInstanceUID", "not/a../uid")),
    ("no sop instance uid", lambda ds, rng: delattr(ds, "SOPInstanceUID")),
    ("no study uid", lambda ds, rng: delattr(ds, "StudyInstanceUID")),
    ("patient id with traversal", lambda ds, rng: setattr(ds, "PatientID", "../../etc/passwd")),
    ("wrong VR for rows", lambda ds, rng: ds.__setitem__(0x00280010, pydicom.DataElement(0x00280010, "LO", "512"))),
    ("nul and control characters", lambda ds, rng: setattr(ds, "PatientName", "A\x00B\x1b[31mC")),
    ("bits allocated absurd", lambda ds, rng: setattr(ds, "BitsAllocated", 64)),
    ("negative-looking frames", lambda ds, rng: setattr(ds, "NumberOfFrames", "-5")),
]


@pytest.mark.attack
def test_mutated_dicom_over_rest_gets_clear_errors_and_orthanc_stays_up(fuzzed: dict[str, Any]) -> None:
    server: OrthancServer = fuzzed["server"]
    rng = random.Random(20261123)
    base = make_instance(patient_id="FUZZ", rows=32, cols=32, seed=1)
    statuses: dict[int, int] = {}
    server_errors = []
    for case in range(REST_CASES):
        kind, data = mutate(base, rng)
        response = server.post("/instances", data=data, headers={"Content-Type": "application/dicom"}, timeout=60)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        if response.status_code in SERVER_ERRORS:
            server_errors.append((case, kind, response.status_code, response.text[:200]))
        if case % 50 == 49:
            assert server.get("/system", timeout=30).status_code == 200, f"Orthanc down after case {case}"
    assert server.get("/system", timeout=30).status_code == 200
    print(f"\nfuzz REST: {REST_CASES} mutated files, statuses {statuses}")
    assert server_errors == [], f"5xx answers to mutated DICOM: {server_errors[:10]}"
    # 404: Orthanc's own answer for some mutations (an unknown referenced resource).
    assert set(statuses) <= {200, 400, 403, 404, 409, 413, 415}, statuses


@pytest.mark.attack
def test_mutated_datasets_over_cstore_tls_get_statuses_and_orthanc_stays_up(fuzzed: dict[str, Any]) -> None:
    server: OrthancServer = fuzzed["server"]
    rng = random.Random(7)
    ae = AE(ae_title="TESTSCU")
    for sop_class in STORAGE:
        ae.add_requested_context(sop_class)
    statuses: dict[str, int] = {}
    assoc = _associate(ae, server)
    try:
        for case in range(DIMSE_CASES):
            _name, mutation = DATASET_MUTATIONS[case % len(DATASET_MUTATIONS)]
            ds = pydicom.dcmread(io.BytesIO(make_instance(patient_id="FUZZ-DIMSE", rows=32, cols=32, seed=case)))
            mutation(ds, rng)
            if not assoc.is_established:
                assoc = _associate(ae, server)
            try:
                answer = assoc.send_c_store(ds)
                status = f"0x{int(answer.Status):04X}" if "Status" in answer else "no response"
            except (ValueError, AttributeError, TypeError) as exc:  # pynetdicom refused to encode it
                status = f"not sent: {type(exc).__name__}"
            statuses[status] = statuses.get(status, 0) + 1
    finally:
        if assoc.is_established:
            assoc.release()
    assert server.get("/system", timeout=30).status_code == 200
    print(f"\nfuzz C-STORE: {DIMSE_CASES} mutated datasets, statuses {statuses}")
    assert sum(v for k, v in statuses.items() if k.startswith("0x")) >= DIMSE_CASES // 2, statuses


def _hardening_requests(instance_id: str, study_id: str) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(user, method, path, requests kwargs) of malformed requests against every /hardening route."""
    odd_ids = ["%2e%2e%2f%2e%2e%2fetc%2fpasswd", "..%2F..%2Findex", "%00", "%C3%BF%C3%BE", "a" * 4000,
               "%3Cscript%3Ealert(1)%3C%2Fscript%3E", "'%20OR%201=1--", "%25", "%7B%7D", "-1", instance_id + "x"]
    routes = {
        "/hardening/instances/{id}/seal": ["GET"],
        "/hardening/studies/{id}/manifest": ["GET"],
        "/hardening/audit": ["GET"],
        "/hardening/audit/verify": ["GET"],
        "/hardening/posture": ["GET"],
        "/hardening/keys": ["GET"],
        "/hardening/keys/rotate": ["POST"],
        "/hardening/seal-existing": ["POST"],
        "/hardening/scrub": ["GET", "POST"],
        "/hardening/ui/{id}": ["GET"],
    }
    cases: list[tuple[str, str, str, dict[str, Any]]] = []
    for route, methods in routes.items():
        if "{id}" in route:
            for odd in odd_ids:
                cases.append(("admin", "GET", route.replace("{id}", odd), {}))
            path = route.replace("{id}", study_id if "studies" in route else instance_id)
        else:
            path = route
        for method in ["GET", "POST", "PUT", "DELETE"]:
            if method not in methods:
                cases.append(("admin", method, path, {"data": b"{}"}))
        cases.append(("user", methods[0], path, {}))  # wrong role (or any user for the seal route)
        cases.append(("admin", methods[0], path, {"params": {"x": "\x00\u202e../..", "limit": "1e999"}}))
    bad_filters = {
        "limit": ["-1", "abc", "1" * 40, "0"], "after": ["xyz", "-5", "9" * 30], "since": ["not-a-date", "2026-13-45"],
        "until": ["'; DROP TABLE events;--"], "format": ["xml", "csv\r\nX-Injected: 1", ""],
        "outcome": ["99", "x"], "action": ["Z", "CC"], "event": ["abc", "1" * 100],
        "series": ["' OR 1=1 --", "%", "*"], "study": ["\x00"], "patient": ["../../"], "user": ["admin' --"],
        "unknown": ["1"],
    }
    for name, values in bad_filters.items():
        for value in values:
            cases.append(("auditor", "GET", "/hardening/audit", {"params": {name: value}}))
    for body in [b"{", b"[]", b"null", b'{"PauseMilliseconds": "x"}', b'{"MaxMegabytesPerSecond": -1}',
                 b'{"PauseMilliseconds": 1e308}', "\u0000\ufffe".encode()]:
        cases.append(("admin", "POST", "/hardening/scrub", {"data": body}))
        cases.append(("user", "POST", "/hardening/keys/rotate", {"data": body}))
    huge = b"{" + b"x" * HUGE_BODY
    cases.append(("admin", "POST", "/hardening/scrub", {"data": huge}))
    cases.append(("user", "POST", "/hardening/keys/rotate", {"data": huge}))
    cases.append(("auditor", "GET", "/hardening/audit", {"data": huge}))
    return cases


@pytest.mark.attack
def test_malformed_http_against_every_hardening_route_gets_clear_4xx(fuzzed: dict[str, Any]) -> None:
    server: OrthancServer = fuzzed["server"]
    instance_id = next(iter(fuzzed["originals"]))
    study_id = server.get(f"/instances/{instance_id}/study").json()["ID"]
    cases = _hardening_requests(instance_id, study_id)
    server_errors, not_json, statuses, accepted_bad_bodies = [], [], {}, []
    for number, (user, method, path, kwargs) in enumerate(cases):
        try:
            response = server.request(method, path, user, timeout=60, **kwargs)
        except requests.RequestException as exc:
            server_errors.append((method, path[:80], f"no answer: {exc}"))
            continue
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        if method == "POST" and "data" in kwargs and response.status_code < 400:
            accepted_bad_bodies.append((path, kwargs["data"][:60], response.status_code))
        if response.status_code in SERVER_ERRORS:
            server_errors.append((method, path[:80], response.status_code, response.text[:200]))
        elif response.status_code == 405:
            if "Allow" not in response.headers:
                not_json.append((method, path[:80], 405, "no Allow header"))
        elif 400 <= response.status_code < 500 and response.status_code != 401:
            try:
                body = response.json()
            except ValueError:
                not_json.append((method, path[:80], response.status_code, response.text[:80]))
            else:
                if not (isinstance(body, dict) and ("error" in body or "HttpError" in body)):
                    not_json.append((method, path[:80], response.status_code, str(body)[:80]))
        if number % 40 == 39:
            assert server.get("/system", timeout=30).status_code == 200, f"Orthanc down after {method} {path[:80]}"
    assert server.get("/system", timeout=30).status_code == 200
    print(f"\nfuzz HTTP: {len(cases)} malformed requests, statuses {statuses}")
    assert server_errors == [], f"server errors: {server_errors}"
    assert not_json == [], f"4xx without a JSON error body: {not_json}"
    assert accepted_bad_bodies == [], f"malformed or absurd bodies accepted: {accepted_bad_bodies}"


@pytest.mark.attack
def test_deeply_nested_json_body_does_not_crash_orthanc(start_orthanc: Any) -> None:
    server: OrthancServer = start_orthanc()
    for path in ("/hardening/scrub", "/hardening/keys/rotate", "/hardening/seal-existing"):
        try:
            response = server.post(path, data=b'{"a":' * 5000, timeout=60)
        except requests.RequestException as exc:
            response = None
            problem = f"no answer: {exc}"
        else:
            problem = f"{response.status_code} {response.text[:120]}"
        assert server.returncode is None, f"Orthanc died on a nested JSON body to {path} ({problem})"
        assert response is not None and response.status_code < 500, f"{path}: {problem}"


def test_after_fuzzing_stored_instances_verify_and_download_identical(fuzzed: dict[str, Any]) -> None:
    server: OrthancServer = fuzzed["server"]
    for instance_id, data in fuzzed["originals"].items():
        assert seal_report(server, instance_id)["verified"] is True
        download = server.get(f"/instances/{instance_id}/file")
        assert download.status_code == 200
        assert download.content == data, f"{instance_id} changed"
    audit_verifies(server)
