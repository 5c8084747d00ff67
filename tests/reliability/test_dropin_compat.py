"""Drop-in compatibility: with the plugin in monitor mode, Orthanc answers ordinary clients as a plain
Orthanc does (status codes and JSON shapes) for uploads, find, modify, anonymize, archives, jobs and
delete. Both servers run in the same test on the same data."""

from __future__ import annotations

import io
import time
import zipfile
from typing import Any

import pytest

from tests.support.dicom import make_instance, new_uid
from tests.support.server import OrthancServer

VOLATILE = {"ID", "Path", "ParentPatient", "ParentStudy", "ParentSeries", "LastUpdate", "CreationTime",
            "CompletionTime", "EffectiveRuntime", "Timestamp", "ElapsedTime", "EstimatedTimeOfArrival"}


def shape(value: Any) -> Any:
    """The JSON shape of ``value``: keys and types, not values (ids and times differ between servers)."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in sorted(value.items())}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return type(value).__name__


def scenario(server: OrthancServer, files: list[bytes]) -> list[tuple[str, int, Any]]:
    """What an ordinary client sees: (step, status, JSON shape or a content summary)."""
    seen: list[tuple[str, int, Any]] = []

    def record(step: str, response: Any) -> Any:
        try:
            body = response.json()
        except ValueError:
            body = None
        seen.append((step, response.status_code, shape(body) if body is not None else response.headers.get(
            "Content-Type", "").split(";")[0]))
        return body

    uploaded = [record("upload", server.post("/instances", data=data, headers={"Content-Type": "application/dicom"}))
                for data in files]
    record("upload again", server.post("/instances", data=files[0], headers={"Content-Type": "application/dicom"}))
    record("upload garbage", server.post("/instances", data=b"not dicom"))
    study_id = uploaded[0]["ParentStudy"]
    series_id = uploaded[0]["ParentSeries"]
    instance_id = uploaded[0]["ID"]
    record("list studies", server.get("/studies"))
    record("study", server.get(f"/studies/{study_id}"))
    record("series expand", server.get(f"/studies/{study_id}/series"))
    record("instance tags", server.get(f"/instances/{instance_id}/simplified-tags"))
    record("find", server.post("/tools/find", json={"Level": "Series", "Query": {"PatientID": "COMPAT"},
                                                    "Expand": True}))
    record("find bad", server.post("/tools/find", data=b"{not json"))
    record("lookup", server.post("/tools/lookup", data=files and uploaded[0]["ID"]))
    modified = record("modify series", server.post(f"/series/{series_id}/modify",
                                                   json={"Replace": {"SeriesDescription": "Modified"}, "Force": True}))
    record("modified series", server.get(f"/series/{modified['ID']}"))
    anonymized = record("anonymize study", server.post(f"/studies/{study_id}/anonymize", json={}))
    record("anonymized study", server.get(f"/studies/{anonymized['ID']}"))
    archive = server.get(f"/studies/{study_id}/archive")
    with zipfile.ZipFile(io.BytesIO(archive.content)) as zipped:
        seen.append(("archive", archive.status_code, len(zipped.namelist())))
    job = record("async archive", server.post(f"/studies/{study_id}/archive", json={"Asynchronous": True}))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state = server.get(f"/jobs/{job['ID']}").json()["State"]
        if state in ("Success", "Failure"):
            break
        time.sleep(0.2)
    record("job", server.get(f"/jobs/{job['ID']}"))
    download = server.get(f"/jobs/{job['ID']}/archive")
    seen.append(("job archive", download.status_code, download.headers.get("Content-Type", "")))
    # The hardened server also lists the archive jobs it ran to serve verified synchronous
    # archives (README, "Verification on every read"); compare the job this client created.
    record("jobs", [j for j in server.get("/jobs?expand").json() if j["ID"] == job["ID"]] and server.get(
        f"/jobs/{job['ID']}"))
    record("delete instance", server.delete(f"/instances/{instance_id}"))
    record("deleted instance", server.get(f"/instances/{instance_id}"))
    record("delete study", server.delete(f"/studies/{study_id}"))
    record("statistics", server.get("/statistics"))
    return seen


@pytest.mark.integration
def test_monitor_mode_answers_ordinary_clients_like_plain_orthanc(start_orthanc: Any) -> None:
    plain: OrthancServer = start_orthanc(plugin=False)
    monitored: OrthancServer = start_orthanc(hardening={"Mode": "monitor"})
    study_uid = new_uid()
    files = [make_instance(patient_id="COMPAT", study_uid=study_uid, series_uid=series, instance_number=i + 1, seed=i)
             for i, series in enumerate([new_uid(), new_uid()] * 2)]
    expected = scenario(plain, files)
    observed = scenario(monitored, files)
    differences = [(e, o) for e, o in zip(expected, observed, strict=True) if e != o]
    assert differences == [], "monitor mode changes what clients see:\n" + "\n".join(
        f"  plain {e}\n  hardened {o}" for e, o in differences)
