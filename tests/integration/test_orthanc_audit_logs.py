"""Every audit event also reaches Orthanc's own audit-log consumers (``EmitAuditLog``).

Orthanc 1.12.9 added audit logs that plugins emit and other plugins consume (the PostgreSQL
plugin stores them since its 2025 releases). Debian packages Orthanc 1.13.0 with the Python plugin
7.1 on forky, but its PostgreSQL plugin (5.0) predates audit logs, so the consumer here is a
minimal C plugin built from ``tests/support/plugins/audit_log_consumer.c`` with gcc against
Debian's ``orthanc-dev`` headers: a real Orthanc plugin receiving what Orthanc broadcasts.
On Orthanc before 1.12.9 (bookworm, trixie) there is nothing to emit to; the test says so.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.dicom import make_series
from tests.support.server import DICOMWEB_PLUGIN, PYTHON_PLUGIN, OrthancServer, orthanc_version

CONSUMER_SOURCE = Path(__file__).resolve().parents[1] / "support" / "plugins" / "audit_log_consumer.c"
HEADER = Path("/usr/include/orthanc/OrthancCPlugin.h")
SERIES_TYPE = 2  # OrthancPluginResourceType_Series


def _build_consumer(directory: Path) -> Path:
    library = directory / "libAuditLogConsumer.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-o", str(library), str(CONSUMER_SOURCE),
                    "-lpthread"], check=True, capture_output=True, text=True, timeout=120)
    return library


@pytest.fixture
def consumer(tmp_path: Path) -> tuple[Path, Path]:
    if orthanc_version() < (1, 12, 9):
        pytest.skip(f"Orthanc {'.'.join(map(str, orthanc_version()))} has no audit logs (new in 1.12.9)")
    if "OrthancPluginRegisterAuditLogHandler" not in HEADER.read_text(errors="replace"):
        pytest.fail(f"{HEADER} lacks the audit-log API although Orthanc has it: run `make deps` (orthanc-dev)")
    return _build_consumer(tmp_path), tmp_path / "audit-logs.tsv"


def _logs(path: Path) -> list[dict[str, Any]]:
    rows = []
    for line in path.read_text().splitlines() if path.exists() else []:
        source, user, resource_type, resource_id, action, data = line.split("\t", 5)
        rows.append({"source": source, "user": user, "type": int(resource_type), "resource": resource_id,
                     "action": action, "data": json.loads(data)})
    return rows


def test_every_audit_event_reaches_orthancs_audit_log_consumers(start_orthanc: Any, consumer: tuple[Path, Path]
                                                                ) -> None:
    library, output = consumer
    server: OrthancServer = start_orthanc(config={"Plugins": [PYTHON_PLUGIN, DICOMWEB_PLUGIN, str(library)]},
                                          env={"AUDIT_LOG_CONSUMER_FILE": str(output)})
    data = make_series(1, patient_id="EMIT-1")[0]
    instance = server.upload(data, user="user")
    assert server.get(f"/instances/{instance['ID']}/file", user="user").status_code == 200
    trail = server.get("/hardening/audit", user="auditor", params={"limit": 1000}).json()["events"]
    logs = _logs(output)
    by_seq = {log["data"]["seq"]: log for log in logs}
    assert {event["seq"] for event in trail} <= set(by_seq), "an audit event was not emitted to Orthanc"
    read = next(e for e in trail if e["event"] == "110103" and e["user"] == "user")
    log = by_seq[read["seq"]]
    assert (log["source"], log["user"], log["type"], log["resource"]) == (
        "orthanc-hardening", "user", SERIES_TYPE, instance["ParentSeries"])
    assert log["action"] == "110103 DICOM Instances Accessed (R)"
    assert (log["data"]["hash"], log["data"]["series_uid"]) == (read["hash"], read["series_uid"])
