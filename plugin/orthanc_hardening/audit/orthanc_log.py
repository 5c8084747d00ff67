"""Audit events in the form of Orthanc's own audit logs (``EmitAuditLog``, Orthanc 1.12.9+).

Orthanc broadcasts an audit log to every plugin that registered an audit-log handler (the
PostgreSQL plugin's "audit logs" since its 2025 releases; any site-specific consumer). One
committed audit event becomes one such log: who (``user_id``), on which resource (the most
specific Orthanc resource the event names: series, study or patient, by Orthanc's own id), what
(``action``: the DICOM event code and name and the C/R/U/D/E action) and, as ``log_data``, the
whole row as compact JSON, with its ``seq`` and ``hash`` so a consumer can find it in the
tamper-evident trail. Pure: the shell calls Orthanc.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from orthanc_hardening.audit.chain import StoredEvent
from orthanc_hardening.integrity.query import orthanc_id

SOURCE_PLUGIN = "orthanc-hardening"


@dataclass(frozen=True, slots=True)
class OrthancAuditLog:
    """The arguments of one ``EmitAuditLog`` call (``level`` names ``orthanc.ResourceType``)."""

    user_id: str
    level: str  # "SERIES" | "STUDY" | "PATIENT" | "NONE"
    resource_id: str
    action: str
    log_data: bytes


def orthanc_audit_log(row: StoredEvent) -> OrthancAuditLog:
    """The Orthanc audit log of one committed audit event."""
    event = row.event
    user = event.user or event.calling_aet or event.source_ip or "unknown"
    level, resource_id = "NONE", ""
    if event.patient_id and event.study_uid and event.series_uid:
        level, resource_id = "SERIES", orthanc_id(event.patient_id, event.study_uid, event.series_uid)
    elif event.patient_id and event.study_uid:
        level, resource_id = "STUDY", orthanc_id(event.patient_id, event.study_uid)
    elif event.patient_id:
        level, resource_id = "PATIENT", orthanc_id(event.patient_id)
    action = f"{event.event.code} {event.event.display_name} ({event.action.value})"
    data = json.dumps(row.as_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    return OrthancAuditLog(user, level, resource_id, action, data)
