"""Reads bound to what was asked for, against a real Orthanc whose index was edited behind its back.

The attacker edits one thing in Orthanc's SQLite index, as someone with access to the disk
would (Orthanc holds the index locked while it runs: stop, edit with sqlite3, start):

* **pointer to another patient's file**: instance A's ``AttachedFiles`` rows are made copies of
  instance B's (same uuid, sizes and MD5s), so A's id and UIDs lead to B's genuine, sealed file;
* **swapped pointers**: A's rows and B's rows are exchanged;
* **re-parenting**: an instance is moved under another patient's series (``Resources.parentId``).

With Orthanc's index in PostgreSQL the index can also change while Orthanc runs (another node,
or by hand): a pointer moved right after the HTTP gate, or a C-MOVE's check, bound a read of that file is
refused on the next read of it, also where the gate grants its request's read (Orthanc 1.13), or
the C-MOVE its send job's reads (every version), the index facts it read (``shell/binding.py``).

Each is refused on every read path with the exact refusal (the HTTP gate's 403; a failed read:
C-GET 0xC000, a failed store job), a Security Alert naming the wrong instance is in the audit
trail, and the untouched instances are still served byte-identical.
"""

from __future__ import annotations

import io
import json
import sqlite3
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest

from tests.support.dicom import make_instance, new_uid
from tests.support.dimse import c_get, c_get_query, c_move, move_in_steps
from tests.support.nodes import start_cluster
from tests.support.scp import StorageSCP
from tests.support.server import DICOMWEB_PLUGIN, PYTHON_PLUGIN, OrthancServer, Pki

pytestmark = [pytest.mark.integration]


@dataclass(frozen=True)
class Stored:
    id: str
    data: bytes
    patient: str
    study_uid: str
    series_uid: str
    sop_uid: str

    def study_id(self, server: OrthancServer) -> str:
        return str(server.get(f"/instances/{self.id}/study").json()["ID"])

    def series_id(self, server: OrthancServer) -> str:
        return str(server.get(f"/instances/{self.id}").json()["ParentSeries"])


def store(server: OrthancServer, patient: str) -> Stored:
    study, series, sop = new_uid(), new_uid(), new_uid()
    data = make_instance(patient_id=patient, patient_name=f"{patient}^Test", study_uid=study, series_uid=series,
                         sop_uid=sop)
    return Stored(server.upload(data)["ID"], data, patient, study, series, sop)


def edit_index(server: OrthancServer, edit) -> None:
    """Stop Orthanc, let ``edit`` change its index database, start it again."""
    server.stop()
    db = sqlite3.connect(server.index_db)
    for name in ("SignalFileDeleted", "SignalResourceDeleted", "SignalRemainingAncestor"):
        db.create_function(name, -1, lambda *args: None)
    try:
        edit(db)
        db.commit()
    finally:
        db.close()
    server.start()


def internal_id(db: sqlite3.Connection, public_id: str) -> int:
    return int(db.execute("SELECT internalId FROM Resources WHERE publicId = ?", (public_id,)).fetchone()[0])


def attachment_rows(db: sqlite3.Connection, internal: int) -> dict[int, dict]:
    cursor = db.execute("SELECT * FROM AttachedFiles WHERE id = ?", (internal,))
    names = [c[0] for c in cursor.description]
    return {int(row[names.index("fileType")]): dict(zip(names, row, strict=True)) for row in cursor.fetchall()}


def point_at(db: sqlite3.Connection, instance: str, rows: dict[int, dict]) -> None:
    """Make ``instance``'s attachment rows copies of ``rows`` (every column but the owner)."""
    target = internal_id(db, instance)
    for file_type, row in rows.items():
        columns = [c for c in row if c not in ("id", "fileType")]
        db.execute(f"UPDATE AttachedFiles SET {', '.join(f'{c} = ?' for c in columns)} WHERE id = ? AND fileType = ?",
                   (*[row[c] for c in columns], target, file_type))


@dataclass(frozen=True)
class Tampered:
    server: OrthancServer
    dup_a: Stored  # points at dup_b's file (dup_b still does too)
    dup_b: Stored
    swap_a: Stored  # swap_a and swap_b exchanged their files
    swap_b: Stored
    moved: Stored  # moved under host's series
    host: Stored


@pytest.fixture(scope="module")
def tampered(start_orthanc_module) -> Iterator[Tampered]:
    server = start_orthanc_module(config={"Plugins": [PYTHON_PLUGIN, DICOMWEB_PLUGIN],
                                          "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}})
    dup_a, dup_b = store(server, "BIND-DUP-A"), store(server, "BIND-DUP-B")
    swap_a, swap_b = store(server, "BIND-SWAP-A"), store(server, "BIND-SWAP-B")
    moved, host = store(server, "BIND-MOVED"), store(server, "BIND-HOST")
    # Clean data is served as stored, on every path the attacks below use.
    assert server.get(f"/instances/{dup_a.id}/file").content == dup_a.data
    assert server.get(f"/instances/{moved.id}/file").content == moved.data
    # The swapped pair was read (and, on Orthanc 1.13, its reads granted) before the edit.
    assert server.get(f"/instances/{swap_a.id}/file").content == swap_a.data
    assert server.get(f"/instances/{swap_b.id}/file").content == swap_b.data
    host_series = host.series_id(server)

    def edit(db: sqlite3.Connection) -> None:
        point_at(db, dup_a.id, attachment_rows(db, internal_id(db, dup_b.id)))
        rows_a = attachment_rows(db, internal_id(db, swap_a.id))
        rows_b = attachment_rows(db, internal_id(db, swap_b.id))
        point_at(db, swap_a.id, rows_b)
        point_at(db, swap_b.id, rows_a)
        db.execute("UPDATE Resources SET parentId = ? WHERE internalId = ?",
                   (internal_id(db, host_series), internal_id(db, moved.id)))

    edit_index(server, edit)
    yield Tampered(server, dup_a, dup_b, swap_a, swap_b, moved, host)


def alerts(server: OrthancServer, needle: str) -> list[dict]:
    response = server.get("/hardening/audit?limit=2000", user="auditor")
    assert response.status_code == 200
    body = response.json()
    events = body.get("events", body) if isinstance(body, dict) else body
    return [e for e in events if "110113" in str(e.get("event", "")) and needle in str(e.get("detail", ""))]


def assert_gate_refused(server: OrthancServer, response, forbidden: bytes) -> None:
    # The HTTP gate's refusal is Orthanc's empty 403 (a 500 from a bug does not pass for it).
    assert response.status_code == 403, (response.status_code, response.text[:200])
    assert response.content == b""
    assert forbidden not in response.content


@pytest.mark.attack
def test_pointer_to_another_patients_file_is_refused_on_rest_wado_uri_and_wado_rs(tampered) -> None:
    server, a, b = tampered.server, tampered.dup_a, tampered.dup_b
    before = len(alerts(server, "WrongInstanceError"))
    for path in (f"/instances/{a.id}/file", f"/instances/{a.id}/attachments/dicom/data",
                 f"/instances/{a.id}/preview", f"/instances/{a.id}/tags",
                 f"/wado?requestType=WADO&studyUID={a.study_uid}&seriesUID={a.series_uid}&objectUID={a.sop_uid}"
                 "&contentType=application/dicom",
                 f"/dicom-web/studies/{a.study_uid}/series/{a.series_uid}/instances/{a.sop_uid}",
                 f"/dicom-web/studies/{a.study_uid}/series/{a.series_uid}",
                 f"/dicom-web/studies/{a.study_uid}/metadata"):
        assert_gate_refused(server, server.get(path), b.data)
    found = alerts(server, "WrongInstanceError")
    assert len(found) >= before + 8
    assert any(a.id in e["detail"] or a.sop_uid in e["detail"] for e in found)
    assert all("names instance" in e["detail"] or "names SOP" in e["detail"] for e in found[:8])
    # Nothing trusted changed: B is served as stored, A's index entry is still A's.
    assert server.get(f"/instances/{b.id}/file").content == b.data
    assert server.get(f"/instances/{a.id}").json()["MainDicomTags"]["SOPInstanceUID"] == a.sop_uid


@pytest.mark.attack
def test_pointer_to_another_patients_file_cannot_be_laundered_by_modify_or_anonymize(tampered) -> None:
    server, a, b = tampered.server, tampered.dup_a, tampered.dup_b
    instances = len(server.get("/instances").json())
    assert_gate_refused(server, server.post(f"/instances/{a.id}/modify",
                                            json={"Replace": {"PatientName": "Laundered"}, "Force": True}), b.data)
    assert_gate_refused(server, server.post(f"/studies/{a.study_id(server)}/anonymize", json={}), b.data)
    assert len(server.get("/instances").json()) == instances
    assert alerts(server, f"POST /instances/{a.id}/modify")


@pytest.mark.attack
def test_swapped_pointers_are_refused_on_c_get_and_send_to_modality(tampered) -> None:
    server, a, b = tampered.server, tampered.swap_a, tampered.swap_b
    assert_gate_refused(server, server.get(f"/instances/{a.id}/file"), b.data)
    # C-GET has no hook: the storage read binds the file to what the index says it is.
    result = c_get(server, a.study_uid)
    assert result.status == 0xC000
    assert b.sop_uid not in result.received and a.sop_uid not in result.received
    with StorageSCP(port=server.modality_port, pki=server.pki) as scp:
        job = server.post("/modalities/TESTSCU/store",
                          data=json.dumps({"Resources": [a.study_id(server)], "Asynchronous": True})).json()
        assert server.wait_job(job["ID"])["State"] == "Failure"
        assert b.sop_uid not in scp.received and a.sop_uid not in scp.received
    found = alerts(server, "WrongInstanceError")
    assert any("Orthanc's index" in e["detail"] and e.get("patient_id") in (a.patient, b.patient) for e in found)


@pytest.mark.attack
def test_reparented_instance_is_refused_in_series_reads_and_c_get(tampered) -> None:
    server, moved, host = tampered.server, tampered.moved, tampered.host
    host_series = host.series_id(server)
    # The index now puts the moved instance in the host patient's series: its own lookup is refused
    # (409), and no read serves it there, nor by itself.
    assert server.get(f"/instances/{moved.id}").status_code == 409
    assert_gate_refused(server, server.get(f"/instances/{moved.id}/file"), moved.data)
    assert_gate_refused(server, server.get(f"/series/{host_series}/instances-tags"), moved.data)
    assert_gate_refused(server, server.get(f"/dicom-web/studies/{host.study_uid}/series/{host.series_uid}"),
                        moved.data)
    result = c_get(server, host.study_uid)
    assert result.status == 0xC000 and moved.sop_uid not in result.received
    assert alerts(server, "series")
    # The host's own instance is untouched and served as stored.
    assert server.get(f"/instances/{host.id}/file").content == host.data


def add_self_as_peer(server: OrthancServer) -> str:
    """Register the server as its own Orthanc peer (HTTPS, verified): a send job that reads and sends."""
    response = server.put("/peers/itself", json={"Url": server.url + "/", "Username": "admin",
                                                  "Password": server.credentials["admin"]})
    assert response.status_code == 200, response.text[:200]
    return "itself"


@pytest.mark.attack
def test_pointer_duplicated_onto_still_referenced_file_is_refused_on_c_get_sends_and_tools_archives(tampered) -> None:
    # A's AttachedFiles rows are copies of B's, and B still names the same file: the index
    # binding alone (B is indexed with that file) would pass, so every path that names A only
    # in a body or has no hook must still refuse it.
    server, a, b = tampered.server, tampered.dup_a, tampered.dup_b
    before = len(alerts(server, "names this file for"))
    result = c_get(server, a.study_uid)
    assert result.status == 0xC000, hex(result.status)
    assert b.sop_uid not in result.received and a.sop_uid not in result.received
    with StorageSCP(port=server.modality_port, pki=server.pki) as scp:
        job = server.post("/modalities/TESTSCU/store",
                          data=json.dumps({"Resources": [a.id], "Asynchronous": True})).json()
        assert server.wait_job(job["ID"])["State"] == "Failure"
        assert b.sop_uid not in scp.received
    peer = add_self_as_peer(server)
    job = server.post(f"/peers/{peer}/store", data=json.dumps({"Resources": [a.id], "Asynchronous": True})).json()
    assert server.wait_job(job["ID"])["State"] == "Failure"
    for route in ("/tools/create-archive", "/tools/create-media"):
        response = server.post(route, json={"Resources": [a.study_id(server)]})
        assert response.status_code == 409, (route, response.status_code, response.text[:200])
        assert b.data not in response.content
    found = alerts(server, "names this file for")
    assert len(found) > before
    assert any(a.id in e["detail"] and b.id in e["detail"] for e in found)
    # Nothing trusted changed: B is still served as stored by its own id, A still indexed as A.
    assert server.get(f"/instances/{b.id}/file").content == b.data
    assert server.get(f"/instances/{a.id}").json()["MainDicomTags"]["SOPInstanceUID"] == a.sop_uid


@pytest.mark.attack
def test_reparented_instance_is_withheld_from_listings_qido_series_archive_and_series_c_get(tampered) -> None:
    server, moved, host = tampered.server, tampered.moved, tampered.host
    host_series, host_study = host.series_id(server), host.study_id(server)
    for path in (f"/series/{host_series}/instances", f"/studies/{host_study}/instances"):
        response = server.get(path)
        assert response.status_code == 200, (path, response.status_code)
        assert [i["ID"] for i in response.json()] == [host.id]
        assert response.headers["X-Hardening-Withheld"] == "1"
    response = server.post("/tools/find", json={"Level": "Instance", "Query": {"SeriesInstanceUID": host.series_uid}})
    assert response.status_code == 200 and response.json() == [host.id]
    assert response.headers["X-Hardening-Withheld"] == "1"
    qido = server.get(f"/dicom-web/studies/{host.study_uid}/series/{host.series_uid}/instances")
    assert_gate_refused(server, qido, moved.sop_uid.encode())
    archive = server.get(f"/series/{host_series}/archive")
    assert archive.status_code == 409, (archive.status_code, archive.text[:200])
    assert moved.data not in archive.content
    result = c_get_query(server, series_query(host.study_uid, host.series_uid), model="study")
    assert result.status == 0xC000 and moved.sop_uid not in result.received
    found = alerts(server, f"instance {moved.id}")
    assert any("sealed under series" in e["detail"] for e in found)
    # The host's own instance is untouched and listed; the moved one is still indexed.
    assert server.get(f"/instances/{host.id}/file").content == host.data
    assert server.get(f"/instances/{moved.id}").status_code == 409


@pytest.mark.attack
def test_deleting_the_copied_pointer_keeps_the_original_file(tampered) -> None:
    # The repair an administrator makes (delete A) must not delete B's file, which A's copied
    # rows name: Orthanc asks the storage area to remove it, the plugin keeps it.
    server, a, b = tampered.server, tampered.dup_a, tampered.dup_b
    assert server.delete(f"/instances/{a.id}").status_code == 200
    assert server.get(f"/instances/{a.id}").status_code == 404
    assert server.get(f"/instances/{b.id}/file").content == b.data
    assert "kept attachment" in server.log_text()


def series_query(study_uid: str, series_uid: str):
    from pydicom.dataset import Dataset
    query = Dataset()
    query.QueryRetrieveLevel = "SERIES"
    query.StudyInstanceUID = study_uid
    query.SeriesInstanceUID = series_uid
    return query


@pytest.mark.attack
def test_pointer_swapped_in_a_live_index_between_two_requests_is_refused(pki: Pki, tmp_path) -> None:
    # Orthanc's index in PostgreSQL, edited while Orthanc runs: A's and B's attachment rows are
    # exchanged right after each was served. Each grant was its request's own and was taken by
    # its read, so the next reads of the files, by C-GET (no hook: the index binding) and by
    # /file (the HTTP gate), are refused.
    with start_cluster(tmp_path, pki, count=1) as cluster:
        server = cluster.nodes[0]
        a, b = store(server, "BIND-LIVE-A"), store(server, "BIND-LIVE-B")
        assert server.get(f"/instances/{a.id}/file").content == a.data
        assert server.get(f"/instances/{b.id}/file").content == b.data
        with psycopg.connect(cluster.database_url, autocommit=True) as db:
            swap_attachments(db, a.id, b.id)
        result = c_get(server, b.study_uid)  # reads A's file for B
        assert result.status == 0xC000, hex(result.status)
        assert a.sop_uid not in result.received and b.sop_uid not in result.received
        assert_gate_refused(server, server.get(f"/instances/{b.id}/file"), a.data)
        assert_gate_refused(server, server.get(f"/instances/{a.id}/file"), b.data)
        found = alerts(server, "WrongInstanceError")
        assert any("Orthanc's index" in e["detail"] for e in found)


@pytest.mark.attack
def test_pointer_swapped_in_a_live_index_after_a_c_move_is_refused(pki: Pki, tmp_path) -> None:
    # The C-MOVE's check read A's and B's index rows and granted them to its send job's reads,
    # which took them: once the rows are exchanged in PostgreSQL, C-GET and a second C-MOVE of
    # either study are refused, and nothing is sent.
    with start_cluster(tmp_path, pki, count=1) as cluster:
        server = cluster.nodes[0]
        a, b = store(server, "BIND-MOVE-A"), store(server, "BIND-MOVE-B")
        with StorageSCP(port=server.modality_port, pki=server.pki) as scp:
            for stored in (a, b):
                assert c_move(server, stored.study_uid).status == 0x0000
            assert scp.received.get(a.sop_uid) and scp.received.get(b.sop_uid)
            with psycopg.connect(cluster.database_url, autocommit=True) as db:
                swap_attachments(db, a.id, b.id)
            scp.received.clear()
            moved = c_move(server, a.study_uid)
            # The check's refusal: a failure, or on Python plugin 4.x its one sub-operation failed (a warning).
            assert (moved.status, moved.failed) == ((0xC000, 0) if move_in_steps(server) else (0xB000, 1)), moved
            result = c_get(server, b.study_uid)
            assert result.status == 0xC000, hex(result.status)
            assert not result.received and not scp.received
        found = alerts(server, "WrongInstanceError")
        assert any("Orthanc's index" in e["detail"] for e in found)
        assert alerts(server, "C-MOVE to TESTSCU refused: instance ")


def archived_files(answer) -> list[bytes]:
    """The DICOM files of a ZIP archive Orthanc answered."""
    with zipfile.ZipFile(io.BytesIO(answer.content)) as archive:
        return [archive.read(name) for name in archive.namelist() if not name.endswith("/")]


@pytest.mark.attack
def test_pointer_swapped_in_a_live_index_after_an_archive_is_refused(pki: Pki, tmp_path) -> None:
    # The archive's check read A's and B's index rows and granted them to the reads of Orthanc's
    # build, which took them: once the rows are exchanged in PostgreSQL, the next archive of A's
    # study and a C-GET of B's are refused, and the archive holds nothing.
    with start_cluster(tmp_path, pki, count=1) as cluster:
        server = cluster.nodes[0]
        a, b = store(server, "BIND-ZIP-A"), store(server, "BIND-ZIP-B")
        studies = {s.id: server.get(f"/instances/{s.id}/study").json()["ID"] for s in (a, b)}
        for stored in (a, b):
            answer = server.get(f"/studies/{studies[stored.id]}/archive")
            assert answer.status_code == 200 and archived_files(answer) == [stored.data]
        with psycopg.connect(cluster.database_url, autocommit=True) as db:
            swap_attachments(db, a.id, b.id)
        refused = server.get(f"/studies/{studies[a.id]}/archive")
        assert refused.status_code == 409, (refused.status_code, refused.text[:200])
        assert a.id in refused.text and b.data not in refused.content
        result = c_get(server, b.study_uid)
        assert result.status == 0xC000, hex(result.status)
        assert not result.received
        assert alerts(server, f"failed verification: {a.id}")  # the archive's refusal, naming A
        assert alerts(server, "sealed sop_instance_uid differs from what Orthanc's index holds")
        assert any("Orthanc's index" in e["detail"] for e in alerts(server, "WrongInstanceError"))


def swap_attachments(db: psycopg.Connection, first: str, second: str) -> None:
    """Exchange the attachment rows of two instances in Orthanc's PostgreSQL index (all but the owner)."""
    def rows(public_id: str) -> tuple[int, dict[int, dict]]:
        internal = db.execute("SELECT internalid FROM resources WHERE publicid = %s", (public_id,)).fetchone()[0]
        cursor = db.execute("SELECT * FROM attachedfiles WHERE id = %s", (internal,))
        names = [c.name for c in cursor.description]
        found = {int(row[names.index("filetype")]): dict(zip(names, row, strict=True)) for row in cursor.fetchall()}
        return int(internal), found

    (id_1, rows_1), (id_2, rows_2) = rows(first), rows(second)
    with db.transaction():
        for target, source in ((id_1, rows_2), (id_2, rows_1)):
            for file_type, row in source.items():
                columns = [c for c in row if c not in ("id", "filetype")]
                db.execute(f"UPDATE attachedfiles SET {', '.join(f'{c} = %s' for c in columns)} "
                           "WHERE id = %s AND filetype = %s", (*[row[c] for c in columns], target, file_type))
