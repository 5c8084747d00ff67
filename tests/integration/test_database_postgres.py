"""A hardened Orthanc whose plugin stores all live in PostgreSQL (``Hardening.Database``).

One Orthanc and one Debian PostgreSQL for the module: ingest seals into the shared database
(schema ``hardening_seals``), reads verify against it and serve byte-identical, the audit trail
(schema ``hardening_audit``) records and verifies, the study manifest is signed there; an
attacker with write access to the database who edits a seal row gets the instance refused on
every path, a Security Alert, and nothing else changes; with PostgreSQL stopped, reads and ingests
are refused and nothing acknowledged is lost; once it is back, service resumes by itself.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from orthanc_hardening.seal.keys import Signer, public_pem
from orthanc_hardening.seal.record import Seal
from tests.support.dicom import make_series
from tests.support.postgres import PostgresServer
from tests.support.server import OrthancServer

pytestmark = [pytest.mark.integration]


@pytest.fixture(scope="module")
def server(start_orthanc_module, postgres: PostgresServer) -> OrthancServer:
    url = postgres.url()
    return start_orthanc_module(hardening={"Database": url, "Audit": {"Database": url}})


def pg(postgres: PostgresServer) -> psycopg.Connection:
    return psycopg.connect(postgres.url(), autocommit=True)


def ingest(server: OrthancServer, count: int, patient_id: str) -> tuple[str, list[str], dict[str, bytes]]:
    files = make_series(count, patient_id=patient_id)
    ids = [server.upload(data)["ID"] for data in files]
    study = server.get(f"/instances/{ids[0]}/study").json()["ID"]
    return study, ids, dict(zip(ids, files, strict=True))


def uuid_of(server: OrthancServer, instance_id: str) -> str:
    return str(server.get(f"/instances/{instance_id}/attachments/dicom/info").json()["Uuid"])


def test_seals_and_audit_live_in_postgres_and_reads_verify(server: OrthancServer, postgres: PostgresServer) -> None:
    _study, ids, files = ingest(server, 2, "PGSEAL")
    with pg(postgres) as conn:
        stored = {row[0] for row in conn.execute("SELECT uuid FROM hardening_seals.seals WHERE state = 'stored'")}
        assert {uuid_of(server, i) for i in ids} <= stored
        # The legacy inventory is taken once for the archive, in the shared database.
        assert conn.execute("SELECT value FROM hardening_legacy.meta WHERE name = 'taken'").fetchone() is not None
    assert not (server.data_dir / "seals.db").exists() and not (server.data_dir / "legacy.db").exists()
    for instance_id in ids:
        response = server.get(f"/instances/{instance_id}/file")
        assert response.status_code == 200 and response.content == files[instance_id]
        assert server.get(f"/hardening/instances/{instance_id}/seal", user="user").json()["verified"] is True
    verification = server.get("/hardening/audit/verify", user="auditor").json()
    assert verification["ok"] is True, verification
    with pg(postgres) as conn:
        assert conn.execute("SELECT count(*) FROM hardening_audit.events").fetchone()[0] >= 2


@pytest.mark.attack
def test_seal_row_edited_in_postgres_is_refused_and_alerted(server: OrthancServer, postgres: PostgresServer) -> None:
    study, ids, files = ingest(server, 2, "PGTAMPER")
    bad, good = ids
    uuid = uuid_of(server, bad)
    with pg(postgres) as conn:
        record = conn.execute("SELECT record FROM hardening_seals.seals WHERE uuid = %s AND content_type = 1",
                              (uuid,)).fetchone()[0]
        old = Seal.from_bytes(bytes(record))
        # The attacker claims other bytes: the seal's signature no longer matches its fields.
        forged = Seal(**{**old.to_dict(), "sha256": hashlib.sha256(b"other bytes").hexdigest()})
        conn.execute("UPDATE hardening_seals.seals SET record = %s WHERE uuid = %s AND content_type = 1",
                     (forged.to_bytes(), uuid))
        others_before = conn.execute("SELECT uuid, record FROM hardening_seals.seals WHERE uuid <> %s ORDER BY uuid",
                                     (uuid,)).fetchall()
        failures_before = conn.execute("SELECT count(*) FROM hardening_seals.failures").fetchone()[0]
    response = server.get(f"/studies/{study}/archive")
    assert response.status_code == 409 and bad in response.json()["detail"]
    assert server.get(f"/instances/{bad}/file").content != files[bad]
    report = server.get(f"/hardening/instances/{bad}/seal", user="user").json()
    assert report["verified"] is False
    response = server.get(f"/instances/{good}/file")
    assert response.status_code == 200 and response.content == files[good]
    events = server.get("/hardening/audit", user="auditor", params={"event": "110113", "limit": 200}).json()["events"]
    assert any(bad in json.dumps(event) or uuid in json.dumps(event) for event in events), events
    with pg(postgres) as conn:
        assert conn.execute("SELECT count(*) FROM hardening_seals.failures").fetchone()[0] > failures_before
        assert conn.execute("SELECT uuid, record FROM hardening_seals.seals WHERE uuid <> %s ORDER BY uuid",
                            (uuid,)).fetchall() == others_before



@pytest.mark.attack
def test_forged_pixels_sealed_in_postgres_with_a_planted_key_are_refused(server: OrthancServer,
                                                                        postgres: PostgresServer) -> None:
    # The registry stays a signed file shared by the nodes: an intruder who can write the
    # database and DataDirectory plants a public key file and re-signs a seal row with it.
    files = make_series(2, patient_id="PGPLANT")
    ids = [server.upload(data)["ID"] for data in files]
    study = server.get(f"/instances/{ids[0]}/study").json()["ID"]
    uuid = uuid_of(server, ids[0])
    path = server.storage_dir / uuid[0:2] / uuid[2:4] / uuid
    intruder = Signer.of(ed25519.Ed25519PrivateKey.generate())
    server.stop()
    try:
        (server.data_dir / "keys" / f"{intruder.key_id}.pub.pem").write_bytes(public_pem(intruder.public_key))
        data = bytearray(path.read_bytes())
        data[-200:] = bytes(200)
        forged_bytes = bytes(data)
        path.write_bytes(forged_bytes)
        with pg(postgres) as conn:
            record = conn.execute("SELECT record FROM hardening_seals.seals WHERE uuid = %s AND content_type = 1",
                                  (uuid,)).fetchone()[0]
            fields = {**Seal.from_bytes(bytes(record)).to_dict(), "sha256": hashlib.sha256(forged_bytes).hexdigest(),
                      "size": len(forged_bytes), "key_id": intruder.key_id, "signature": ""}
            signature = base64.b64encode(intruder.sign(Seal(**fields).signed_bytes())).decode()
            conn.execute("UPDATE hardening_seals.seals SET record = %s WHERE uuid = %s AND content_type = 1",
                         (Seal(**{**fields, "signature": signature}).to_bytes(), uuid))
        # Orthanc 1.13 checks the MD5 itself: the intruder fixes it in Orthanc's index too.
        index = sqlite3.connect(str(server.index_db), isolation_level=None, timeout=30)
        try:
            for column in (r[1] for r in index.execute("PRAGMA table_info(AttachedFiles)") if "md5" in r[1].lower()):
                index.execute(f"UPDATE AttachedFiles SET {column} = ? WHERE uuid = ?",
                              (hashlib.md5(forged_bytes).hexdigest(), uuid))
        finally:
            index.close()
    finally:
        server.start()
    response = server.get(f"/studies/{study}/archive")
    assert response.status_code == 409 and ids[0] in response.json()["detail"]
    assert forged_bytes[-200:] not in server.get(f"/instances/{ids[0]}/file").content
    report = server.get(f"/hardening/instances/{ids[0]}/seal", user="user").json()
    assert report["verified"] is False
    assert any("UnknownKeyError" in a["problem"] for a in report["attachments"] if a["content_type"] == 1)
    alerts = server.get("/hardening/audit", user="auditor", params={"event": "110113"}).json()["events"]
    assert any(ids[0] in json.dumps(event) or "UnknownKeyError" in event["detail"] for event in alerts)
    assert intruder.key_id not in {k["key_id"] for k in server.get("/hardening/keys").json()["keys"]}
    response = server.get(f"/instances/{ids[1]}/file")
    assert response.status_code == 200 and response.content == files[1]

def test_postgres_down_refuses_what_needs_the_store_and_service_resumes(server: OrthancServer,
                                                                        postgres: PostgresServer) -> None:
    _study, ids, files = ingest(server, 1, "PGDOWN")
    before = server.get("/instances").json()
    postgres.stop()
    try:
        read = server.get(f"/instances/{ids[0]}/file")
        late = make_series(1, patient_id="PGDOWN2")[0]
        upload = server.post("/instances", data=late)
        # The read is refused by the HTTP filter (its audit event cannot be committed); the ingest
        # by the sealed storage area (its seal cannot be committed), which Orthanc answers with
        # its plugin error; the log names the store that is down.
        assert read.status_code == 403 and read.content == b""
        assert upload.status_code == 500
        assert upload.json()["OrthancError"] == "Error encountered within the plugin engine"
        assert any("storage-create refused: database postgresql://" in line and "hardening_seals" in line
                   for line in server.log_text().splitlines())
    finally:
        postgres.start()
    # Back: nothing acknowledged was lost, the refused upload left nothing, the service resumes.
    assert server.get("/instances").json() == before
    response = server.get(f"/instances/{ids[0]}/file")
    assert response.status_code == 200 and response.content == files[ids[0]]
    assert server.upload(late)["ID"]
    verification = server.get("/hardening/audit/verify", user="auditor")
    assert verification.status_code == 200 and verification.json()["ok"] is True, verification.text
