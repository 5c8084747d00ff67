"""Start-up reconciliation after a crash (``kill -9``): half-written state is cleaned, nothing acknowledged is lost."""

from __future__ import annotations

import json
import sqlite3
import time
import uuid as uuidlib

import pytest

from tests.support.dicom import make_instance
from tests.support.server import OrthancServer

pytestmark = [pytest.mark.integration]


def state_of(server: OrthancServer, attachment: str) -> str | None:
    with sqlite3.connect(str(server.data_dir / "seals.db")) as db:
        row = db.execute("SELECT state FROM seals WHERE uuid = ? AND content_type = 1", (attachment,)).fetchone()
    return None if row is None else str(row[0])


def test_crash_leftovers_are_reconciled_and_acknowledged_data_survives(start_orthanc):
    server = start_orthanc()
    data = make_instance(patient_id="CRASH")
    instance_id = server.upload(data)["ID"]
    kept = server.get(f"/instances/{instance_id}/attachments/dicom/info").json()["Uuid"]
    server.kill()

    db = sqlite3.connect(str(server.data_dir / "seals.db"), isolation_level=None)
    query = "SELECT record FROM seals WHERE uuid = ? AND content_type = 1"
    record = json.loads(db.execute(query, (kept,)).fetchone()[0])
    # A seal row committed, then the crash before its file was renamed into place.
    no_file = str(uuidlib.uuid4())
    # A file and its seal written, then the crash before Orthanc indexed the instance.
    unindexed = str(uuidlib.uuid4())
    for attachment in (no_file, unindexed):
        row = {**record, "uuid": attachment}
        db.execute("INSERT INTO seals (uuid, content_type, record, sop_instance_uid, study_uid, key_id) "
                   "VALUES (?, 1, ?, ?, ?, ?)", (attachment, json.dumps(row, sort_keys=True, separators=(",", ":")),
                                                 row["sop_instance_uid"], row["study_uid"], row["key_id"]))
    db.close()
    path = server.storage_dir / unindexed[:2] / unindexed[2:4] / unindexed
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    # A file half-written when the crash came (its seal row was committed first).
    partial_uuid = str(uuidlib.uuid4())
    db = sqlite3.connect(str(server.data_dir / "seals.db"), isolation_level=None)
    row = {**record, "uuid": partial_uuid}
    db.execute("INSERT INTO seals (uuid, content_type, record, sop_instance_uid, study_uid, key_id) "
               "VALUES (?, 1, ?, ?, ?, ?)", (partial_uuid, json.dumps(row, sort_keys=True, separators=(",", ":")),
                                             row["sop_instance_uid"], row["study_uid"], row["key_id"]))
    db.close()
    partial = server.storage_dir / partial_uuid[:2] / partial_uuid[2:4] / partial_uuid
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.write_bytes(data[:100])

    server.start()
    assert state_of(server, no_file) == "abandoned"
    deadline = time.monotonic() + 20
    while state_of(server, partial_uuid) != "abandoned" and time.monotonic() < deadline:
        time.sleep(0.1)
    for leftover, file in ((unindexed, path), (partial_uuid, partial)):
        assert state_of(server, leftover) == "abandoned"
        assert not file.exists()
    assert state_of(server, kept) == "stored"
    assert server.get(f"/instances/{instance_id}/file").content == data
