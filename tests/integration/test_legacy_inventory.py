"""Legacy decided by the signed inventory and the index, never by the bytes served.

The attack (issue 15, "legacy masquerade"): on a hardened Orthanc, an attacker replaces an
instance's file with forged bytes, deletes its seal row and backdates its ``ReceptionDate``
before sealing began, so that under the default ``UnsealedPolicy: serve-and-flag`` the forged
bytes would pass for data stored before the plugin. The signed legacy inventory, taken when
sealing began on this (fresh) installation, is empty: nothing is legacy, the forged bytes are
refused on every path, ``/modify`` cannot launder them and ``seal-existing`` refuses to seal them.
"""

from __future__ import annotations

import hashlib
import sqlite3

import pytest

from tests.support.dicom import make_instance, new_uid
from tests.support.server import OrthancServer

pytestmark = [pytest.mark.integration]
RECEPTION_DATE = 2  # Orthanc's MetadataType_Instance_ReceptionDate


def audit_events(server: OrthancServer) -> list[dict]:
    response = server.get("/hardening/audit?limit=2000", user="auditor")
    assert response.status_code == 200
    body = response.json()
    return body.get("events", body) if isinstance(body, dict) else body


@pytest.mark.attack
def test_deleted_seal_with_backdated_reception_date_is_not_legacy(start_orthanc) -> None:
    server = start_orthanc()
    # A fresh installation takes an empty inventory when it starts: nothing will ever be legacy.
    assert any("legacy inventory taken (before-sealing): 0 " in str(e.get("detail", "")) for e in audit_events(server))
    study, series = new_uid(), new_uid()
    genuine = make_instance(patient_id="LEGACY-MASK", study_uid=study, series_uid=series, sop_uid=new_uid(), seed=1)
    instance = server.upload(genuine)["ID"]
    forged = make_instance(patient_id="LEGACY-MASK", study_uid=study, series_uid=series,
                           sop_uid=server.get(f"/instances/{instance}").json()["MainDicomTags"]["SOPInstanceUID"],
                           seed=2)
    assert forged != genuine
    uuid = server.get(f"/instances/{instance}/attachments/dicom/info").json()["Uuid"]
    before = len(server.get("/instances").json())
    server.stop()

    (server.storage_dir / uuid[:2] / uuid[2:4] / uuid).write_bytes(forged)
    seals = sqlite3.connect(server.data_dir / "seals.db")
    seals.execute("DELETE FROM seals WHERE uuid = ?", (uuid,))
    seals.commit()
    seals.close()
    index = sqlite3.connect(server.index_db)
    internal = index.execute("SELECT internalId FROM Resources WHERE publicId = ?", (instance,)).fetchone()[0]
    index.execute("UPDATE Metadata SET value = ? WHERE id = ? AND type = ?", ("19990101T000000", internal,
                                                                             RECEPTION_DATE))
    # The attacker keeps Orthanc's own size and MD5 columns consistent with the forged file.
    columns = [row[1] for row in index.execute("PRAGMA table_info(AttachedFiles)")]
    digest = hashlib.md5(forged, usedforsecurity=False).hexdigest()
    for column in columns:
        value = digest if column.lower().endswith("md5") else len(forged) if column.lower().endswith("size") else None
        if value is not None:
            index.execute(f"UPDATE AttachedFiles SET {column} = ? WHERE id = ? AND fileType = 1", (value, internal))
    index.commit()
    index.close()
    server.start()

    # Orthanc fails a read that the storage area refuses with its own 500; the Security Alert
    # below is what tells it from a bug.
    response = server.get(f"/instances/{instance}/file")
    assert response.status_code == 500 and forged not in response.content
    assert server.get(f"/instances/{instance}/preview").status_code in (415, 500)
    modified = server.post(f"/instances/{instance}/modify", json={"Replace": {"PatientName": "Laundered"},
                                                                  "Force": True})
    assert modified.status_code == 500
    assert len(server.get("/instances").json()) == before
    answer = server.post("/hardening/seal-existing", json={"Since": 0, "Limit": 100}).json()
    assert answer["sealed"] == 0 and answer["refused_instances"] == [instance]
    alerts = [e for e in audit_events(server) if "110113" in str(e.get("event", ""))]
    assert any("not in the signed legacy inventory" in str(e.get("detail", "")) for e in alerts)
    # A fresh installation runs with UnsealedPolicy "refuse" unless configured: the unsealed
    # instance is withheld from query answers too (a single lookup answers 409).
    assert "UnsealedPolicy not configured: refuse (0 legacy" in server.log_text()
    assert server.get(f"/instances/{instance}").status_code == 409
    posture = {c["id"]: c for c in server.get("/hardening/posture").json()["checks"]}
    assert posture["unsealed-policy"]["status"] == "pass"
    # Nothing trusted changed: the instance is still unsealed (never sealed from forged bytes).
    report = server.get(f"/hardening/instances/{instance}/seal").json()
    assert report["verified"] is False
    assert all(a["seal"] is None for a in report["attachments"] if a["content_type"] == 1)
