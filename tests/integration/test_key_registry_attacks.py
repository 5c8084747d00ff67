"""A planted key is never trusted: an intruder with write access to the data directory adds a key
of their own to the key registry, writes forged pixels into a stored file and a matching seal
signed with that key.

One server for the module (with DICOMweb, so that WADO-RS goes through the sealed storage). The
attack is made on a stopped server, as an intruder who can write files but not the signing key
would do before a restart.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from orthanc_hardening.seal import registry
from orthanc_hardening.seal.keys import Signer, public_pem
from orthanc_hardening.seal.record import Seal
from orthanc_hardening.stores import key_files
from tests.support.dicom import make_series
from tests.support.dimse import c_get
from tests.support.server import DICOMWEB_PLUGIN, PYTHON_PLUGIN, OrthancServer

pytestmark = [pytest.mark.integration]

REFUSED = (409, 415, 500)


@pytest.fixture(scope="module")
def server(start_orthanc_module) -> OrthancServer:
    return start_orthanc_module(config={"Plugins": [PYTHON_PLUGIN, DICOMWEB_PLUGIN]})


def stored_file(server: OrthancServer, instance_id: str) -> tuple[str, Path]:
    uuid = str(server.get(f"/instances/{instance_id}/attachments/dicom/info").json()["Uuid"])
    return uuid, server.storage_dir / uuid[0:2] / uuid[2:4] / uuid


def forge_pixels_and_seal(server: OrthancServer, uuid: str, path: Path, intruder: Signer) -> bytes:
    """Overwrite the last pixel bytes, re-sign the seal with the intruder's key, fix Orthanc's MD5."""
    data = bytearray(path.read_bytes())
    data[-200:] = bytes(200)  # the "tumour": pixels the scanner never produced
    forged_bytes = bytes(data)
    path.write_bytes(forged_bytes)
    db = sqlite3.connect(str(server.data_dir / "seals.db"), isolation_level=None, timeout=30)
    try:
        record = db.execute("SELECT record FROM seals WHERE uuid = ? AND content_type = 1", (uuid,)).fetchone()[0]
        fields = {**Seal.from_bytes(record).to_dict(), "sha256": hashlib.sha256(forged_bytes).hexdigest(),
                  "size": len(forged_bytes), "key_id": intruder.key_id, "signature": ""}
        signature = intruder.sign(Seal(**fields).signed_bytes())
        forged = Seal(**{**fields, "signature": base64.b64encode(signature).decode()})
        db.execute("UPDATE seals SET record = ? WHERE uuid = ? AND content_type = 1", (forged.to_bytes(), uuid))
    finally:
        db.close()
    # Orthanc 1.13 checks the attachment's MD5 itself: the intruder fixes it in the index too,
    # so that only the plugin stands between the forged pixels and a reader.
    index = sqlite3.connect(str(server.index_db), isolation_level=None, timeout=30)
    try:
        columns = [row[1] for row in index.execute("PRAGMA table_info(AttachedFiles)")]
        digest = hashlib.md5(forged_bytes).hexdigest()
        for column in (c for c in columns if "md5" in c.lower()):
            index.execute(f"UPDATE AttachedFiles SET {column} = ? WHERE uuid = ?", (digest, uuid))
    finally:
        index.close()
    return forged_bytes


def plant_in_registry(server: OrthancServer, intruder: Signer) -> None:
    """Append a rotation to the intruder's key (signed by the intruder only) and its .pub.pem file."""
    directory = server.data_dir / "keys"
    raw = json.loads((directory / "registry.json").read_text())
    last = registry.RegistryEntry.from_dict(raw["entries"][-1])
    entry = registry.RegistryEntry(registry.VERSION, len(raw["entries"]), "rotate", intruder.key_id, "ed25519",
                                   public_pem(intruder.public_key).decode(), last.key_id,
                                   "2026-01-01T00:00:00.000000Z", last.entry_hash())
    signed = base64.b64encode(intruder.sign(entry.signed_bytes())).decode()
    raw["entries"].append({**entry.as_dict(), "signatures": {intruder.key_id: signed}})
    (directory / "registry.json").write_text(json.dumps(raw))
    (directory / f"{intruder.key_id}.pub.pem").write_bytes(public_pem(intruder.public_key))


@pytest.mark.attack
def test_planted_key_in_registry_stops_the_start_with_the_reason(server):
    ids = [server.upload(data)["ID"] for data in make_series(1, patient_id="PLANT-1")]
    uuid, path = stored_file(server, ids[0])
    registry_path = server.data_dir / "keys" / "registry.json"
    trusted_registry = registry_path.read_bytes()
    intruder = Signer.of(ed25519.Ed25519PrivateKey.generate())
    current = server.get("/hardening/keys").json()["current"]
    server.stop()
    try:
        forge_pixels_and_seal(server, uuid, path, intruder)
        plant_in_registry(server, intruder)
        server.start(wait=False)
        assert server.wait_exit(timeout=60) != 0
        log = server.log_text()
        assert "orthanc-hardening refuses to start: key registry:" in log
        # Signed by the intruder's key, but not by the key it claims to replace.
        assert f"lacks the signature of key {current}" in log
    finally:
        registry_path.write_bytes(trusted_registry)
        server.start()
    # Trusted state unchanged: the registry still names the real key alone.
    keys = server.get("/hardening/keys").json()
    assert intruder.key_id not in {k["key_id"] for k in keys["keys"]}
    state = key_files.registry_state(Path(server.config["Hardening"]["SigningKey"]), server.data_dir / "keys")
    assert intruder.key_id not in state.keys


@pytest.mark.attack
def test_forged_pixels_sealed_with_planted_key_file_are_refused_on_every_path(server):
    files = make_series(2, patient_id="PLANT-2")
    ids = [server.upload(data)["ID"] for data in files]
    study = server.get(f"/instances/{ids[0]}/study").json()["ID"]
    tags = server.get(f"/instances/{ids[0]}").json()["MainDicomTags"]
    study_uid = server.get(f"/studies/{study}").json()["MainDicomTags"]["StudyInstanceUID"]
    series_uid = server.get(f"/instances/{ids[0]}/series").json()["MainDicomTags"]["SeriesInstanceUID"]
    uuid, path = stored_file(server, ids[0])
    intruder = Signer.of(ed25519.Ed25519PrivateKey.generate())
    server.stop()
    # The planted public key file of the unsigned registry format, beside the signed registry.
    (server.data_dir / "keys" / f"{intruder.key_id}.pub.pem").write_bytes(public_pem(intruder.public_key))
    forged = forge_pixels_and_seal(server, uuid, path, intruder)
    server.start()

    for uri in (f"/instances/{ids[0]}/file", f"/instances/{ids[0]}/attachments/dicom/data"):
        response = server.get(uri)
        assert response.status_code in REFUSED, (uri, response.status_code)
        assert forged[-200:] not in response.content
    assert server.get(f"/studies/{study}/archive").status_code == 409
    wado = server.get(f"/dicom-web/studies/{study_uid}/series/{series_uid}/instances/{tags['SOPInstanceUID']}",
                      headers={"Accept": 'multipart/related; type="application/dicom"'})
    assert wado.status_code >= 400 and forged[-200:] not in wado.content
    received = c_get(server, study_uid).received
    assert tags["SOPInstanceUID"] not in received
    # /modify would launder the forged pixels into a new, freshly sealed instance.
    laundered = server.post(f"/instances/{ids[0]}/modify", data=json.dumps({"Replace": {"StudyDescription": "x"},
                                                                              "Force": True}))
    assert laundered.status_code in REFUSED
    report = server.get(f"/hardening/instances/{ids[0]}/seal", user="user").json()
    assert report["verified"] is False
    assert any("UnknownKeyError" in a["problem"] for a in report["attachments"] if a["content_type"] == 1)
    alerts = server.get("/hardening/audit", user="auditor", params={"event": "110113"}).json()["events"]
    assert any(ids[0] in json.dumps(event) or "UnknownKeyError" in event["detail"] for event in alerts)
    # The untouched instance of the same study is served byte-identical.
    response = server.get(f"/instances/{ids[1]}/file")
    assert response.status_code == 200 and response.content == files[1]
