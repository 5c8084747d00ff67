"""Signed study manifests and the archive scrub against a real Orthanc, attacked on disk.

Each attack stops Orthanc, changes its index database or its storage directory as someone with
access to the disk would, and starts it again; then the manifest verification and the scrub
must name what changed. Every test that changes the archive, or needs it untouched, gets an
archive of its own (``fresh_archive``); the read-only tests share one (``archive``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import uuid as uuidlib
from pathlib import Path
from typing import Any

import pytest

from tests.support.dicom import make_instance
from tests.support.server import OrthancServer
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration
STUDY_A, STUDY_B, STUDY_C = ("1.2.826.0.1.3680043.8.498.71", "1.2.826.0.1.3680043.8.498.72",
                             "1.2.826.0.1.3680043.8.498.73")


def edit_index(server: OrthancServer, *statements: tuple[str, tuple]) -> None:
    server.stop()
    db = sqlite3.connect(server.index_db)
    for name in ("SignalFileDeleted", "SignalResourceDeleted", "SignalRemainingAncestor"):
        db.create_function(name, -1, lambda *args: None)
    try:
        db.execute("PRAGMA foreign_keys = ON")
        for sql, args in statements:
            db.execute(sql, args)
        db.commit()
    finally:
        db.close()
    server.start()


def file_of(server: OrthancServer, uuid: str) -> Path:
    return server.storage_dir / uuid[0:2] / uuid[2:4] / uuid


def manifest(server: OrthancServer, study_id: str) -> dict[str, Any]:
    response = server.get(f"/hardening/studies/{study_id}/manifest", user="user")
    assert response.status_code == 200, response.text
    return response.json()


def problems(server: OrthancServer, study_id: str) -> set[tuple[str, str]]:
    return {(p["kind"], p["sop_instance_uid"]) for p in manifest(server, study_id)["verification"]["problems"]}


def run_scrub(server: OrthancServer, **options: Any) -> dict[str, Any]:
    started = server.post("/hardening/scrub", json=options)
    assert started.status_code == 200, started.text
    run_id = started.json()["run_id"]

    def finished() -> dict[str, Any] | None:
        body = server.get("/hardening/scrub").json()
        return body if body["run_id"] == run_id and body["state"] == "finished" else None

    return wait_for(finished, what="the scrub")["report"]


def findings(report: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [f for f in report["findings"] if f["kind"] == kind]


class Archive:
    """The server and what was uploaded: Orthanc ids and attachment uuids per SOP Instance UID."""

    def __init__(self, server: OrthancServer) -> None:
        self.server = server
        self.studies: dict[str, str] = {}
        self.instances: dict[str, str] = {}

    def upload(self, study: str, n: int, patient: str) -> None:
        answer = self.server.upload(make_instance(patient_id=patient, study_uid=study, series_uid=study + ".1",
                                                  sop_uid=f"{study}.1.{n}", instance_number=n))
        self.studies[study] = answer["ParentStudy"]
        self.instances[f"{study}.1.{n}"] = answer["ID"]

    def uuid(self, sop: str, name: str = "dicom") -> str:
        info = self.server.get(f"/instances/{self.instances[sop]}/attachments/{name}/info")
        return str(info.json()["Uuid"])

    def uuids(self, sop: str) -> set[str]:
        """Every attachment of the instance: the DICOM file, and on Orthanc before 1.13 (or with a
        storage area without range reads) the "DICOM until pixel data" header."""
        names = self.server.get(f"/instances/{self.instances[sop]}/attachments").json()
        return {self.uuid(sop, name) for name in names}

    @property
    def attachment_count(self) -> int:
        return sum(len(self.uuids(sop)) for sop in self.instances)


def build_archive(server: OrthancServer) -> Archive:
    archive = Archive(server)
    for n in range(3):
        archive.upload(STUDY_A, n, "PAT-A")
    for n in range(3):
        archive.upload(STUDY_B, n, "PAT-B")
    for n in range(2):
        archive.upload(STUDY_C, n, "PAT-C")
    for study_id in archive.studies.values():
        wait_for(lambda s=study_id: server.get(f"/hardening/studies/{s}/manifest").status_code == 200,
                 what=f"manifest of {study_id}")
    return archive


@pytest.fixture(scope="module")
def archive(start_orthanc_module) -> Archive:
    """An archive that no test changes."""
    return build_archive(start_orthanc_module(config={"StableAge": 1}))


@pytest.fixture
def fresh_archive(start_orthanc) -> Archive:
    """An archive of this test's own."""
    return build_archive(start_orthanc(config={"StableAge": 1}))


ALL_KINDS = ("tampered", "missing-file", "unsealed", "orphan-file", "orphan-seal", "manifest-mismatch")


def attack_every_way(archive: Archive) -> None:
    """Make one finding of every kind at once, as the single attacks below do one by one."""
    server = archive.server
    flip_last_bytes(file_of(server, archive.uuid(STUDY_A + ".1.2")))  # tampered
    file_of(server, archive.uuid(STUDY_B + ".1.2")).unlink()  # missing-file
    stray = file_of(server, str(uuidlib.uuid4()))  # orphan-file
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(b"not from orthanc")
    sop = STUDY_A + ".1.99"
    data = make_instance(patient_id="PAT-A", study_uid=STUDY_A, series_uid=STUDY_A + ".1", sop_uid=sop)
    uuid = str(uuidlib.uuid4())
    server.stop()
    file_of(server, uuid).parent.mkdir(parents=True, exist_ok=True)
    file_of(server, uuid).write_bytes(data)
    edit_index(server, *foreign_instance_rows(archive, uuid, sop, data),  # unsealed
               # orphan-seal and manifest-mismatch: an instance row removed from the index.
               ("DELETE FROM Resources WHERE publicId = ?", (archive.instances[STUDY_A + ".1.0"],)))


def flip_last_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))


def foreign_instance_rows(archive: Archive, uuid: str, sop: str, data: bytes) -> tuple[tuple[str, tuple], ...]:
    """Index rows that add an instance Orthanc never received (its file is ``uuid``)."""
    md5 = hashlib.md5(data).hexdigest()
    series_row = "(SELECT parentId FROM Resources WHERE publicId = ?)"
    new_row = "(SELECT MAX(internalId) FROM Resources)"
    return (
        (f"INSERT INTO Resources (resourceType, publicId, parentId) VALUES (4, 'foreign-0001', {series_row})",
         (archive.instances[STUDY_A + ".1.1"],)),
        (f"INSERT INTO MainDicomTags (id, tagGroup, tagElement, value) VALUES ({new_row}, 8, 24, ?)", (sop,)),
        (f"INSERT INTO DicomIdentifiers (id, tagGroup, tagElement, value) VALUES ({new_row}, 8, 24, ?)", (sop,)),
        ("INSERT INTO AttachedFiles (id, fileType, uuid, compressedSize, uncompressedSize, compressionType, "
         f"uncompressedMD5, compressedMD5) VALUES ({new_row}, 1, ?, ?, ?, 1, ?, ?)",
         (uuid, len(data), len(data), md5, md5)),
    )


def test_stable_studies_get_verified_manifests(archive: Archive) -> None:
    body = manifest(archive.server, archive.studies[STUDY_A])
    assert body["manifest"]["instance_count"] == 3 and body["manifest"]["study_uid"] == STUDY_A
    assert body["verification"]["ok"] is True
    assert body["verification"]["series"] == {STUDY_A + ".1": "ok"}
    assert archive.server.get("/hardening/studies/nope/manifest").status_code == 404


def test_clean_archive_scrubs_without_findings(archive: Archive) -> None:
    report = run_scrub(archive.server)
    assert report["findings"] == []
    # 8 instances, each with its DICOM file (and its header attachment where Orthanc stores one).
    assert report["progress"]["done"] == report["progress"]["total"] == archive.attachment_count
    assert archive.attachment_count in (8, 16)
    assert report["manifests_checked"] == 3


def test_scrub_is_for_administrators(archive: Archive) -> None:
    assert archive.server.post("/hardening/scrub", json={}, user="user").status_code == 403
    assert archive.server.get("/hardening/scrub", user="auditor").status_code == 403


def test_manifest_is_resigned_after_a_deletion_through_orthanc(fresh_archive: Archive) -> None:
    archive = fresh_archive
    server = archive.server
    assert server.delete(f"/instances/{archive.instances[STUDY_C + '.1.1']}").status_code == 200
    body = wait_for(lambda: (m := manifest(server, archive.studies[STUDY_C]))["manifest"]["instance_count"] == 1
                    and m, what="re-signed manifest")
    assert body["verification"]["ok"] is True


@pytest.mark.attack
def test_instance_row_deleted_from_index_is_named(fresh_archive: Archive) -> None:
    archive = fresh_archive
    server, sop = archive.server, STUDY_A + ".1.0"
    uuids = archive.uuids(sop)
    edit_index(server, ("DELETE FROM Resources WHERE publicId = ?", (archive.instances[sop],)))
    assert ("missing-from-index", sop) in problems(server, archive.studies[STUDY_A])
    report = run_scrub(server)
    assert {f["uuid"] for f in findings(report, "orphan-file")} >= uuids
    assert {f["uuid"] for f in findings(report, "orphan-seal")} >= uuids
    assert any(sop in f["detail"] for f in findings(report, "manifest-mismatch"))


@pytest.mark.attack
def test_foreign_instance_added_to_index_is_named(fresh_archive: Archive) -> None:
    archive = fresh_archive
    server, sop = archive.server, STUDY_A + ".1.99"
    data = make_instance(patient_id="PAT-A", study_uid=STUDY_A, series_uid=STUDY_A + ".1", sop_uid=sop)
    uuid = str(uuidlib.uuid4())
    path = file_of(server, uuid)
    path.parent.mkdir(parents=True, exist_ok=True)
    server.stop()
    path.write_bytes(data)
    edit_index(server, *foreign_instance_rows(archive, uuid, sop, data))
    assert {("not-in-manifest", sop), ("unsealed", sop)} <= problems(server, archive.studies[STUDY_A])
    report = run_scrub(server)
    assert uuid in {f["uuid"] for f in findings(report, "unsealed")}


@pytest.mark.attack
def test_instances_swapped_between_studies_are_named(fresh_archive: Archive) -> None:
    archive = fresh_archive
    server = archive.server
    a, b = STUDY_A + ".1.1", STUDY_B + ".1.0"
    ia, ib = archive.instances[a], archive.instances[b]
    parent = "(SELECT parentId FROM Resources WHERE publicId = ?)"
    edit_index(
        server,
        ("UPDATE Resources SET publicId = 'swap-tmp' WHERE publicId = ?", (ia,)),
        (f"UPDATE Resources SET parentId = (SELECT p FROM (SELECT {parent} AS p)) WHERE publicId = 'swap-tmp'",
         (ib,)),
        ("UPDATE Resources SET parentId = (SELECT parentId FROM Resources r2 WHERE r2.publicId = ?) "
         "WHERE publicId = ?", (archive.instances[STUDY_A + ".1.2"], ib)),
        ("UPDATE Resources SET publicId = ? WHERE publicId = 'swap-tmp'", (ia,)),
    )
    in_a = problems(server, archive.studies[STUDY_A])
    assert ("swapped", b) in in_a and ("not-in-manifest", b) in in_a and ("missing-from-index", a) in in_a
    in_b = problems(server, archive.studies[STUDY_B])
    assert ("swapped", a) in in_b and ("missing-from-index", b) in in_b
    report = run_scrub(server)
    mismatched = {f["study_id"] for f in findings(report, "manifest-mismatch")}
    assert {archive.studies[STUDY_A], archive.studies[STUDY_B]} <= mismatched


@pytest.mark.attack
def test_flipped_byte_is_found_tampered(fresh_archive: Archive) -> None:
    archive = fresh_archive
    server, sop = archive.server, STUDY_A + ".1.2"
    uuid = archive.uuid(sop)
    flip_last_bytes(file_of(server, uuid))
    report = run_scrub(server)
    assert uuid in {f["uuid"] for f in findings(report, "tampered")}


@pytest.mark.attack
def test_deleted_file_is_found_missing(fresh_archive: Archive) -> None:
    archive = fresh_archive
    server = archive.server
    uuid = archive.uuid(STUDY_B + ".1.2")
    file_of(server, uuid).unlink()
    report = run_scrub(server)
    assert uuid in {f["uuid"] for f in findings(report, "missing-file")}


@pytest.mark.attack
def test_stray_file_is_found_orphan(fresh_archive: Archive) -> None:
    server = fresh_archive.server
    uuid = str(uuidlib.uuid4())
    path = file_of(server, uuid)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not from orthanc")
    report = run_scrub(server)
    assert uuid in {f["uuid"] for f in findings(report, "orphan-file")}


@pytest.mark.attack
def test_scrub_names_every_kind_of_damage_at_once(fresh_archive: Archive) -> None:
    attack_every_way(fresh_archive)
    report = run_scrub(fresh_archive.server)
    assert {kind: report["counts"][kind] > 0 for kind in ALL_KINDS} == dict.fromkeys(ALL_KINDS, True)


def test_scrub_resumes_after_restart_without_rereading(archive: Archive) -> None:
    server = archive.server
    started = server.post("/hardening/scrub", json={"PauseMilliseconds": 250}).json()
    run_id = started["run_id"]
    wait_for(lambda: (server.get("/hardening/scrub").json().get("progress") or {}).get("done", 0) >= 4,
             what="scrub progress")
    server.stop()
    db = sqlite3.connect(Path(server.data_dir) / "scrub.db")
    done_before = db.execute("SELECT COUNT(*) FROM done WHERE run_id = ?", (run_id,)).fetchone()[0]
    total = db.execute("SELECT total FROM runs WHERE id = ?", (run_id,)).fetchone()[0]
    db.close()
    assert 0 < done_before < total
    server.start()

    def finished() -> dict[str, Any] | None:
        body = server.get("/hardening/scrub").json()
        return body if body["run_id"] == run_id and body["state"] == "finished" else None

    body = wait_for(finished, timeout=60, what="the resumed scrub")
    assert body["files_read_since_start"] == total - done_before
    assert body["report"]["progress"]["done"] == total


@pytest.mark.attack
def test_offline_cli_scrub_names_every_kind(fresh_archive: Archive, tmp_path: Path) -> None:
    attack_every_way(fresh_archive)
    server = fresh_archive.server
    command = [sys.executable, "-m", "orthanc_hardening", "scrub", str(server.config_path)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "plugin")}
    server.stop()
    try:
        done = subprocess.run([*command, "--report", str(tmp_path / "r.json")], capture_output=True, text=True,
                              env=env, timeout=120)
    finally:
        server.start()
    assert done.returncode == 1, done.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert {kind: report["counts"][kind] > 0 for kind in ALL_KINDS} == dict.fromkeys(ALL_KINDS, True)


@pytest.mark.attack
def test_seal_row_with_a_broken_signature_under_an_intact_manifest_is_found_tampered(fresh_archive: Archive) -> None:
    # The file and the study's manifest are untouched and agree; only the seal row's signature is
    # broken (its digest and identity still match the manifest leaf). The read path refuses such a
    # seal, so the scrub must name it: the manifest is never taken as proof of a seal row.
    archive = fresh_archive
    server, sop = archive.server, STUDY_A + ".1.1"
    uuid = archive.uuid(sop)
    db = sqlite3.connect(str(server.data_dir / "seals.db"), isolation_level=None, timeout=30)
    try:
        (record,) = db.execute("SELECT record FROM seals WHERE uuid = ? AND content_type = 1", (uuid,)).fetchone()
        seal = json.loads(record)
        signature = bytearray(base64.b64decode(seal["signature"]))
        signature[5] ^= 0x01
        seal["signature"] = base64.b64encode(bytes(signature)).decode("ascii")
        db.execute("UPDATE seals SET record = ? WHERE uuid = ? AND content_type = 1",
                   (json.dumps(seal, sort_keys=True, separators=(",", ":")).encode("ascii"), uuid))
    finally:
        db.close()
    report = run_scrub(server)
    tampered = findings(report, "tampered")
    assert [(f["uuid"], f["sop_instance_uid"]) for f in tampered] == [(uuid, sop)]
    assert "signature" in tampered[0]["detail"]
    assert findings(report, "manifest-mismatch") == []  # the manifest itself is genuine and still agrees
    assert problems(server, archive.studies[STUDY_A]) == set()
    alerts = server.get("/hardening/audit?event=110113&limit=100", user="auditor").json()["events"]
    assert any("scrub" in e["detail"] and "tampered 1" in e["detail"] for e in alerts)
    assert server.get(f"/instances/{archive.instances[sop]}/file").status_code in (409, 415, 500)
    others = [i for s, i in archive.instances.items() if s != sop]
    assert all(server.get(f"/instances/{i}/file").status_code == 200 for i in others)
