"""Attachments added after ingest (user-defined content types) are sealed and verified under one type.

``PUT /instances/{id}/attachments/{name}`` with a ``UserContentType`` stores a new attachment
through the storage area: it is sealed on create under the content type Orthanc passes, and every
later read (the attachment itself, archives of the study) looks it up under that same type, so
it verifies with no false alarm; tampering with it is still caught.
"""

from __future__ import annotations

import pytest

from tests.support.dicom import make_series
from tests.support.server import OrthancServer

pytestmark = [pytest.mark.integration]
REPORT_TYPE = 1030


def alerts(server: OrthancServer) -> list[dict]:
    body = server.get("/hardening/audit?limit=2000", user="auditor").json()
    events = body.get("events", body) if isinstance(body, dict) else body
    return [e for e in events if "110113" in str(e.get("event", ""))]


@pytest.fixture(scope="module")
def server(start_orthanc_module) -> OrthancServer:
    return start_orthanc_module(config={"UserContentType": {"report": [REPORT_TYPE, "application/pdf"]}})


def test_user_attachment_is_sealed_under_its_type_and_archives_without_alarm(server) -> None:
    ids = [server.upload(data)["ID"] for data in make_series(2, patient_id="USER-ATT")]
    study = server.get(f"/instances/{ids[0]}/study").json()["ID"]
    before = len(alerts(server))
    body = b"%PDF-1.4 radiology report\n" * 20
    assert server.put(f"/instances/{ids[0]}/attachments/report", data=body).status_code == 200
    assert server.get(f"/instances/{ids[0]}/attachments/report/data").content == body
    report = server.get(f"/hardening/instances/{ids[0]}/seal").json()
    kinds = {a["name"]: a for a in report["attachments"]}
    assert kinds["report"]["content_type"] == REPORT_TYPE and kinds["report"]["status"] == "verified"
    assert kinds["report"]["seal"]["content_type"] == REPORT_TYPE
    assert report["verified"] is True
    assert server.get(f"/studies/{study}/archive").status_code == 200
    assert server.get(f"/studies/{study}/media").status_code == 200
    assert len(alerts(server)) == before


@pytest.mark.attack
def test_tampered_user_attachment_is_refused_and_alerted(server) -> None:
    ids = [server.upload(data)["ID"] for data in make_series(1, patient_id="USER-ATT-2")]
    study = server.get(f"/instances/{ids[0]}/study").json()["ID"]
    body = b"%PDF-1.4 genuine report\n" * 20
    assert server.put(f"/instances/{ids[0]}/attachments/report", data=body).status_code == 200
    uuid = server.get(f"/instances/{ids[0]}/attachments/report/info").json()["Uuid"]
    path = server.storage_dir / uuid[:2] / uuid[2:4] / uuid
    path.write_bytes(body.replace(b"genuine", b"forged!"))
    before = len(alerts(server))
    archive = server.get(f"/studies/{study}/archive")
    assert archive.status_code == 409 and ids[0] in archive.json()["detail"]
    assert len(alerts(server)) > before
