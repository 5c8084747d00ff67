"""Drop-in on an Orthanc that already holds data, and monitor mode.

Data stored by a plain Orthanc is reported *unsealed* (not tampered), served or refused by
``UnsealedPolicy``, and sealed by ``seal-existing`` (REST and offline CLI) with
``sealed_after_ingest``. Monitor mode serves tampered bytes but counts and records the failure.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

import pytest

from tests.support.dicom import make_series
from tests.support.server import REPO, OrthancServer, orthanc_version

pytestmark = [pytest.mark.integration]


def statuses(server: OrthancServer, instance_id: str) -> set[str]:
    body = server.get(f"/hardening/instances/{instance_id}/seal").json()
    return {a["status"] for a in body["attachments"]}


def failures_metric(server: OrthancServer) -> float:
    return server.metric("hardening_integrity_failures_total")


def test_legacy_data_is_unsealed_then_sealed_by_seal_existing(start_orthanc):
    plain = start_orthanc(plugin=False)
    files = make_series(3, patient_id="LEGACY")
    ids = [plain.upload(data)["ID"] for data in files]
    plain.stop()
    shared = {"StorageDirectory": str(plain.storage_dir), "IndexDirectory": str(plain.storage_dir)}

    # refuse: legacy data is not served.
    hardened = start_orthanc(config=shared, hardening={"UnsealedPolicy": "refuse"})
    assert hardened.get(f"/instances/{ids[0]}/file").status_code in (409, 500)
    hardened.stop()

    # serve-and-flag (default): served, reported unsealed, not tampered.
    hardened.config["Hardening"].pop("UnsealedPolicy")
    hardened.start()
    assert hardened.get(f"/instances/{ids[0]}/file").content == files[0]
    assert statuses(hardened, ids[0]) == {"unsealed"}
    assert failures_metric(hardened) == 0
    # An installation with instances stored before sealing began keeps serving them, flagged.
    assert "UnsealedPolicy not configured: serve-and-flag (3 legacy" in hardened.log_text()
    assert hardened.get(f"/instances/{ids[0]}").headers["X-Hardening-Flagged"] == "1"
    study = hardened.get(f"/instances/{ids[0]}/study").json()["ID"]
    assert hardened.get(f"/studies/{study}/archive").status_code == 200

    # REST seal-existing seals the first two (paged), the CLI the rest (offline).
    assert hardened.post("/hardening/seal-existing", user="user").status_code == 403
    answer = hardened.post("/hardening/seal-existing", data=json.dumps({"Since": 0, "Limit": 2})).json()
    # A plain Orthanc stores only the DICOM file (it reads headers by range, so it keeps no
    # "until pixel data" attachment): one attachment per instance.
    assert answer["sealed"] == 2 and answer["refused"] == 0 and answer["done"] is False
    sealed_ids = json.loads(hardened.get("/instances?since=0&limit=2").text)
    for instance_id in sealed_ids:
        body = hardened.get(f"/hardening/instances/{instance_id}/seal").json()
        assert body["verified"] is True
        assert all(a["seal"]["sealed_after_ingest"] for a in body["attachments"])
    hardened.stop()
    env = {**os.environ, "HARDENING_KEY_PASSPHRASE": hardened.env["HARDENING_KEY_PASSPHRASE"],
           "PYTHONPATH": str(REPO / "plugin")}
    result = subprocess.run([sys.executable, "-m", "orthanc_hardening", "seal-existing", str(hardened.config_path)],
                            capture_output=True, text=True, env=env, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    offline = json.loads(result.stdout)
    assert offline["sealed"] == 1 and offline["already_sealed"] == 2

    # Now sealed everywhere: without the key the policy becomes refuse at the next start, which
    # serves everything; tampering is caught.
    hardened.start()
    assert "UnsealedPolicy not configured: refuse (0 legacy" in hardened.log_text()
    for instance_id, data in zip(ids, files, strict=True):
        assert hardened.get(f"/instances/{instance_id}/file").content == data
        assert statuses(hardened, instance_id) == {"verified"}
    # The online CLI path pages through the REST route: nothing left to seal.
    from orthanc_hardening.commands.seal import seal_online

    online = seal_online(hardened.url, "admin", hardened.credentials["admin"], str(hardened.pki.ca), page=2)
    assert online["instances"] == 3 and online["sealed"] == 0 and online["already_sealed"] == 3


@pytest.mark.attack
def test_monitor_mode_serves_tampered_bytes_but_counts_and_records(start_orthanc):
    server = start_orthanc(hardening={"Mode": "monitor"})
    data = make_series(1, patient_id="MONITOR")[0]
    instance_id = server.upload(data)["ID"]
    uuid = server.get(f"/instances/{instance_id}/attachments/dicom/info").json()["Uuid"]
    path = server.storage_dir / uuid[:2] / uuid[2:4] / uuid
    tampered = bytearray(data)
    tampered[-5] ^= 0x01
    path.write_bytes(bytes(tampered))
    response = server.get(f"/instances/{instance_id}/file")
    if orthanc_version() >= (1, 13, 0):
        # Orthanc 1.13 checks the attachment's MD5 itself after the plugin's read: monitor mode
        # serves the bytes, and Orthanc refuses them with its own error, as plain Orthanc does.
        assert response.status_code == 500 and "Corrupted file" in response.text
    else:
        assert response.status_code == 200 and response.content == bytes(tampered)
    assert failures_metric(server) >= 1
    with sqlite3.connect(str(server.data_dir / "seals.db")) as db:
        assert db.execute("SELECT COUNT(*) FROM failures WHERE uuid = ?", (uuid,)).fetchone()[0] >= 1
    assert "integrity failure on attachment" in server.log_text()
