"""Orthanc's job routes, create-dicom and the modality queries answer the same with the plugin.

The plugin stands in for these routes to look at the JSON body before Orthanc's parser does
(``shell/job_routes.py``); a synchronous request runs as an asynchronous job the plugin waits
for. Each case goes to the three servers; compared: status, headers and body (new resources'
ids, random with each modification, and job ids normalised), the jobs the request left in
``/jobs`` and the metadata of what it stored. These requests change data, so the module has
servers of its own.
"""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from orthanc_hardening.integrity.query import orthanc_id
from tests.compat import deliberate
from tests.compat.compare import Answer, describe, header_differences, normalise_json
from tests.compat.conftest import STUDIES, Trio, start_trio
from tests.support.scp import StorageSCP
from tests.support.server import OrthancServer, orthanc_version

P1 = orthanc_id("CMP-1")
P2 = orthanc_id("CMP-2")
S1 = orthanc_id("CMP-1", STUDIES[0][3])
S2 = orthanc_id("CMP-1", STUDIES[1][3])
S3 = orthanc_id("CMP-2", STUDIES[2][3])
S5 = orthanc_id("CMP-4", STUDIES[4][3])
SE1 = orthanc_id("CMP-1", STUDIES[0][3], STUDIES[0][3] + ".1")
UNKNOWN = "00000000-00000000-00000000-00000000-00000000"
ORTHANC_ID = re.compile(r"[0-9a-f]{8}(?:-[0-9a-f]{8}){4}")
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# Job fields that depend on when, or on the job's id.
JOB_VOLATILE = frozenset({"ID", "CreationTime", "CompletionTime", "EffectiveRuntime", "Timestamp",
                          "EstimatedTimeOfArrival"})
# The ids of the dataset's resources (the same on every server); any other id is a new resource's.
DATASET_IDS: set[str] = set()
# The job-running metadata of a stored instance; the rest (reception time, attachment ids) is volatile.
ORIGIN_METADATA = ("Origin", "RemoteIP", "HttpUsername", "CalledAET", "RemoteAET", "ModifiedFrom",
                   "AnonymizedFrom")


@pytest.fixture(scope="module")
def trio(pki: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trio]:
    from tests.integration.conftest import _factory

    factory = _factory(pki, tmp_path_factory)
    start = next(factory)
    try:
        trio = start_trio(lambda **kwargs: start(**_with_peer(kwargs)))
        DATASET_IDS.update(known_ids(trio.plain))
        yield trio
    finally:
        factory.close()


def _with_peer(kwargs: dict[str, Any]) -> dict[str, Any]:
    # PEER: a secure peer nobody answers at (an insecure or unknown one is refused by the TLS gate).
    config = dict(kwargs.get("config") or {})
    config["OrthancPeers"] = {"PEER": {"Url": "https://127.0.0.1:9/"}}
    return {**kwargs, "config": config}


def known_ids(server: OrthancServer) -> set[str]:
    return {item for level in ("patients", "studies", "series", "instances") for item in server.get(f"/{level}").json()}


def normalise_ids(value: Any, known: set[str]) -> Any:
    """Ids of resources a request created (random UIDs: each server's differ) and job ids, as placeholders."""
    if isinstance(value, dict):
        return {key: normalise_ids(item, known) for key, item in value.items()}
    if isinstance(value, list):
        return [normalise_ids(item, known) for item in value]
    if isinstance(value, str):
        value = UUID.sub("<job>", value)
        return ORTHANC_ID.sub(lambda m: m.group(0) if m.group(0) in known else "<new>", value)
    return value


def job_listing(server: OrthancServer, before: set[str]) -> list[Any]:
    """The jobs a request added to ``/jobs``, once ended, without their ids and times."""
    found = []
    for job_id in server.get("/jobs").json():
        if job_id in before:
            continue
        job = server.wait_job(job_id)
        found.append({key: value for key, value in job.items() if key not in JOB_VOLATILE})
    return found


def stored_metadata(server: OrthancServer, before: set[str]) -> list[Any]:
    """The origin metadata of every instance the request stored."""
    found = []
    for instance in server.get("/instances").json():
        if instance in before:
            continue
        metadata = server.get(f"/instances/{instance}/metadata", params={"expand": ""}).json()
        found.append({name: metadata.get(name) for name in ORIGIN_METADATA if name in metadata})
    return found


def outcome(server: OrthancServer, path: str, body: Any) -> tuple[Answer, list[Any], list[Any]]:
    known, jobs = known_ids(server), set(server.get("/jobs").json())
    data = body if isinstance(body, str) else json.dumps(body)
    response = server.request("POST", path, data=data.encode(), timeout=120)
    answer = Answer.of(response)
    listing = normalise_ids(normalise_json(job_listing(server, jobs)), DATASET_IDS)
    metadata = normalise_ids(stored_metadata(server, known), DATASET_IDS)
    answer = Answer(answer.status, answer.headers, normalise_ids(answer.body, DATASET_IDS), answer.names)
    return answer, in_order(listing), in_order(metadata)


def in_order(items: list[Any]) -> list[Any]:
    return sorted(items, key=lambda item: json.dumps(item, sort_keys=True))


def assert_same(trio: Trio, path: str, body: Any, metadata_differs: bool = False) -> None:
    plain, monitor, enforce = (outcome(server, path, body) for server in trio.all)
    for name, (answer, jobs, metadata) in (("monitor", monitor), ("enforce", enforce)):
        assert answer == plain[0], (f"{name} differs on POST {path} {body!r:.80}:\n plain   {describe(plain[0])}\n"
                                    f" {name:<7} {describe(answer)}")
        unexpected = header_differences(plain[0], answer) - deliberate.extra_headers(path)
        assert not unexpected, f"{name} headers differ on POST {path}: {sorted(unexpected)}"
        assert jobs == plain[1], f"{name} jobs differ on POST {path} {body!r:.80}:\n {plain[1]}\n {jobs}"
        if metadata_differs:
            assert metadata == in_order([deliberate.stored_by_plugin(item) for item in plain[2]]), (plain[2], metadata)
        else:
            assert metadata == plain[2], f"{name} stored metadata differs on POST {path}: {plain[2]} {metadata}"


MODIFY = {"Replace": {"StudyDescription": "Modified"}, "Force": True}
MODIFICATIONS: list[tuple[str, Any]] = [
    (f"/studies/{S1}/modify", MODIFY),
    (f"/studies/{S1}/modify", {**MODIFY, "Synchronous": True}),
    (f"/studies/{S1}/modify", {**MODIFY, "Asynchronous": False, "Priority": 3}),
    (f"/studies/{S1}/modify", {**MODIFY, "Asynchronous": True}),
    (f"/studies/{S1}/modify", {**MODIFY, "Synchronous": False, "Asynchronous": False}),
    (f"/studies/{S1}/modify", {"Replace": {"PatientID": "X"}}),  # refused: PatientID needs Force
    (f"/studies/{S1}/modify", {**MODIFY, "Synchronous": 1}),
    (f"/studies/{S1}/modify", []),
    (f"/studies/{S1}/modify", "not json"),
    (f"/studies/{UNKNOWN}/modify", MODIFY),
    (f"/series/{SE1}/modify", {"Remove": ["SeriesDescription"]}),
    (f"/patients/{P2}/modify", {"Replace": {"PatientName": "New^Name"}, "Force": True}),
    (f"/studies/{S2}/anonymize", {}),
    (f"/series/{SE1}/anonymize", {"Keep": ["SeriesDescription"], "KeepPrivateTags": True}),
    (f"/patients/{P1}/anonymize", {"Asynchronous": True}),
    (f"/studies/{S3}/anonymize", ""),
    ("/tools/bulk-modify", {"Resources": [S5], "Replace": {"StudyDescription": "Bulk"}, "Force": True}),
    ("/tools/bulk-modify", {"Resources": [S5], "Level": "Study", "Replace": {"StudyDescription": "B"},
                            "Asynchronous": True}),
    ("/tools/bulk-anonymize", {"Resources": [S5]}),
    ("/tools/bulk-anonymize", {}),
    ("/tools/bulk-modify", {"Resources": [UNKNOWN], "Replace": {"StudyDescription": "B"}}),
]


@pytest.mark.parametrize(("path", "body"), MODIFICATIONS, ids=lambda v: json.dumps(v)[:60])
def test_modify_and_anonymize_answer_like_plain_orthanc(trio: Trio, path: str, body: Any) -> None:
    assert_same(trio, path, body, metadata_differs=True)


@pytest.fixture
def receivers(trio: Trio) -> Iterator[dict[str, StorageSCP]]:
    scps = {server.home.name: StorageSCP(port=server.modality_port, pki=server.pki).start() for server in trio.all}
    try:
        yield scps
    finally:
        for scp in scps.values():
            scp.stop()


SENDS: list[tuple[str, Any]] = [
    ("/modalities/TESTSCU/store", [S3]),
    ("/modalities/TESTSCU/store", S3),
    ("/modalities/TESTSCU/store", f" {S3} "),  # a bare id, not JSON
    ("/modalities/TESTSCU/store", {"Resources": [SE1], "Synchronous": True}),
    ("/modalities/TESTSCU/store", {"Resources": [S3], "Asynchronous": True}),
    ("/modalities/TESTSCU/store", {"Resources": [UNKNOWN]}),
    ("/modalities/TESTSCU/store", {"Resources": "no list"}),
    ("/modalities/TESTSCU/store", 12),
]


@pytest.mark.parametrize(("path", "body"), SENDS, ids=lambda v: json.dumps(v)[:60])
def test_sends_to_a_modality_answer_like_plain_orthanc(trio: Trio, receivers: dict[str, StorageSCP], path: str,
                                                       body: Any) -> None:
    for scp in receivers.values():
        scp.received.clear()
    assert_same(trio, path, body)
    received = [sorted(scp.received) for scp in receivers.values()]
    assert received[1:] == received[:1] * 2


FAILING: list[tuple[str, Any]] = [
    # Nobody answers: the job fails, and a synchronous request answers the job's error.
    ("/modalities/TESTSCU/store", [S3]),
    ("/modalities/TESTSCU/move", {"Level": "Study", "Resources": [{"StudyInstanceUID": STUDIES[0][3]}]}),
    ("/modalities/TESTSCU/move", {"Level": "Study", "Resources": [{"StudyInstanceUID": STUDIES[0][3]}],
                                  "Asynchronous": True}),
    ("/modalities/TESTSCU/move", {"Resources": []}),
    ("/modalities/TESTSCU/get", {"Level": "Study", "Resources": [{"StudyInstanceUID": STUDIES[0][3]}]}),
    ("/peers/PEER/store", [S3]),
    ("/peers/PEER/store", {"Resources": [S3], "Asynchronous": True}),
    ("/peers/PEER/store", "not json"),
    ("/modalities/TESTSCU/query", {"Level": "Study", "Query": {"PatientID": "CMP-1"}}),
    ("/modalities/TESTSCU/query", {"Query": {}}),
    ("/modalities/TESTSCU/find-patient", {"PatientID": "*"}),
    ("/modalities/TESTSCU/find-study", {"Level": "Study", "Query": {}}),
    ("/modalities/TESTSCU/find-worklist", {"PatientID": "*"}),
]


@pytest.mark.parametrize(("path", "body"), FAILING, ids=lambda v: json.dumps(v)[:60])
def test_failing_sends_and_queries_answer_like_plain_orthanc(trio: Trio, path: str, body: Any) -> None:
    assert_same(trio, path, body)


def test_a_legacy_find_orthanc_refuses_without_an_error_code_answers_404(trio: Trio) -> None:
    """``/modalities/{m}/find-study|find-series|find-instance`` refuse some bodies with an empty
    400 and no error code; a plugin's forwarded call only learns "Unknown resource" (deliberate)."""
    path, body = "/modalities/TESTSCU/find-study", json.dumps({"PatientID": "*"})
    plain, *hardened = (server.request("POST", path, data=body) for server in trio.all)
    assert (plain.status_code, plain.content) == (400, b"")
    version = trio.enforce.get("/plugins/python").json().get("Version", "0")
    stand_in = tuple(int(part) for part in version.split(".")[:2]) >= (4, 3)  # Python.AllowThreads is set
    for answer in hardened:
        if stand_in:
            assert (answer.status_code, answer.json()["Message"]) == (404, "Unknown resource"), answer.text
        else:
            assert (answer.status_code, answer.content) == (400, b"")


def test_create_dicom_answers_like_plain_orthanc_and_records_the_plugin_as_origin(trio: Trio) -> None:
    uid = "1.2.826.0.1.3680043.10.543.90"
    tags = {"PatientID": "CMP-NEW", "PatientName": "New^Patient", "StudyInstanceUID": uid,
            "SeriesInstanceUID": f"{uid}.1", "SOPInstanceUID": f"{uid}.1.1", "Modality": "OT"}
    assert_same(trio, "/tools/create-dicom", {"Tags": tags}, metadata_differs=True)
    for body in ({"Tags": tags}, {"Tags": "no object"}, "not json", {"Tags": {"NoSuchTag": "x"}}):
        assert_same(trio, "/tools/create-dicom", body, metadata_differs=True)


@pytest.mark.parametrize(("path", "body"), [
    ("/modalities/TESTSCU/store", [S3]),
    ("/modalities/TESTSCU/query", {"Level": "Study", "Query": {"PatientID": "*"}}),
], ids=["store", "query"])
def test_a_stand_in_waiting_on_a_silent_modality_leaves_other_requests_answered(trio: Trio, path: str,
                                                                                 body: Any) -> None:
    """The modality accepts the connection and never answers: while Orthanc waits for it (its
    DICOM timeout), the plugin holds no lock other requests need (Python's, or its own index lock)."""
    server = trio.enforce
    connected = threading.Event()
    listener = socket.create_server(("127.0.0.1", server.modality_port))
    accepted: list[socket.socket] = []

    def silent_modality() -> None:
        connection, _address = listener.accept()
        accepted.append(connection)
        connected.set()

    answers: list[int] = []
    threads = [threading.Thread(target=silent_modality, name="silent-modality"),
               threading.Thread(target=lambda: answers.append(server.request(
                   "POST", path, data=json.dumps(body), timeout=120).status_code), name="send")]
    try:
        for thread in threads:
            thread.start()
        assert connected.wait(60), "Orthanc never connected to the modality"
        assert server.get("/system", timeout=60).status_code == 200
        assert server.get(f"/studies/{S3}", timeout=60).status_code == 200
        # A forwarded POST takes the plugin's index lock: the waiting request must not hold it.
        content = server.request("POST", "/tools/bulk-content", timeout=60,
                                 data=json.dumps({"Resources": [S3], "Level": "Study"}))
        assert content.status_code == 200, content.text[:200]
        assert threads[1].is_alive(), "the request did not wait for the modality"
    finally:
        for connection in accepted:
            connection.close()
        listener.close()
        for thread in threads:
            thread.join(timeout=120)
    assert answers and answers[0] >= 400  # the modality hung up: Orthanc's error


def test_the_job_servers_run_the_same_orthanc(trio: Trio) -> None:
    versions = {server.get("/system").json()["Version"] for server in trio.all}
    assert versions == {".".join(map(str, orthanc_version()))}
