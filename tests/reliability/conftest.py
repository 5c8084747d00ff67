"""Reliability suite: reuses the integration fixtures (``start_orthanc``, ``start_orthanc_module``, ``pki``)
and adds small helpers to read the audit database and the seal report of a running server."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import pki, start_orthanc, start_orthanc_module  # noqa: F401 - fixtures
from tests.support.server import OrthancServer


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/reliability/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


def audit_database(server: OrthancServer) -> Path:
    """The audit SQLite file the server's configuration names."""
    url = str(server.config["Hardening"].get("Audit", {}).get("Database", ""))
    return Path(url.removeprefix("sqlite://")) if url.startswith("sqlite://") else server.data_dir / "audit.db"


def audit_rows(server: OrthancServer, sql: str = "", params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """``(event, user, series_uid, outcome, transport)`` of the audit events on disk (optionally filtered)."""
    conn = sqlite3.connect(audit_database(server), timeout=30)
    try:
        query = 'SELECT event, "user", series_uid, outcome, transport FROM events'
        return conn.execute(f"{query} {sql}", params).fetchall()
    finally:
        conn.close()


def seal_report(server: OrthancServer, instance_id: str) -> dict[str, Any]:
    """The plugin's seal report for one instance (asserting the route answers 200)."""
    response = server.get(f"/hardening/instances/{instance_id}/seal", timeout=60)
    assert response.status_code == 200, f"seal of {instance_id}: {response.status_code} {response.text}"
    report: dict[str, Any] = response.json()
    return report


def lookup_instance(server: OrthancServer, sop_uid: str) -> str | None:
    """Orthanc's id of the instance with this SOP Instance UID, or None."""
    response = server.post("/tools/lookup", data=sop_uid, timeout=60)
    assert response.status_code == 200, response.text
    for match in response.json():
        if match["Type"] == "Instance":
            return str(match["ID"])
    return None


def audit_verifies(server: OrthancServer) -> dict[str, Any]:
    """``GET /hardening/audit/verify`` as the auditor, asserting it answers 200 with ok true."""
    report = server.get("/hardening/audit/verify", user="auditor", timeout=120)
    assert report.status_code == 200, report.text
    body: dict[str, Any] = report.json()
    assert body.get("ok") is True, body
    return body
