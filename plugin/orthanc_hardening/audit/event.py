"""Audit events: the DICOM PS3.15 A.5 / IHE ATNA vocabulary and the event record.

An ``AuditEvent`` is what a caller wants recorded; the store adds ``seq``, ``prev_hash``
and ``hash`` when it appends it to the chain (see ``audit/chain.py``). No I/O here.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timezone


class EventCode(enum.Enum):
    """DICOM PS3.15 A.5 / DCM (DCMR CID 400) audit event IDs."""

    APPLICATION_ACTIVITY = ("110100", "Application Activity")
    AUDIT_LOG_USED = ("110101", "Audit Log Used")
    BEGIN_TRANSFERRING = ("110102", "Begin Transferring DICOM Instances")
    INSTANCES_ACCESSED = ("110103", "DICOM Instances Accessed")
    INSTANCES_TRANSFERRED = ("110104", "DICOM Instances Transferred")
    STUDY_DELETED = ("110105", "DICOM Study Deleted")
    EXPORT = ("110106", "Export")
    IMPORT = ("110107", "Import")
    QUERY = ("110112", "Query")
    SECURITY_ALERT = ("110113", "Security Alert")
    USER_AUTHENTICATION = ("110114", "User Authentication")

    @property
    def code(self) -> str:
        return self.value[0]

    @property
    def display_name(self) -> str:
        return self.value[1]

    @classmethod
    def from_code(cls, code: str) -> EventCode:
        """Return the member whose A.5 code is ``code``.

        Raises:
            ValueError: ``code`` is not one of ours.
        """
        for member in cls:
            if member.code == code:
                return member
        raise ValueError(f"unknown audit event code {code!r}")


class Action(enum.Enum):
    """PS3.15 A.5 EventActionCode."""

    CREATE = "C"
    READ = "R"
    UPDATE = "U"
    DELETE = "D"
    EXECUTE = "E"


class Outcome(enum.Enum):
    """PS3.15 A.5 EventOutcomeIndicator."""

    SUCCESS = 0
    MINOR_FAILURE = 4
    SERIOUS_FAILURE = 8
    MAJOR_FAILURE = 12


class Transport(enum.Enum):
    """How the request reached Orthanc."""

    REST = "rest"
    DICOMWEB = "dicomweb"
    DIMSE = "dimse"
    WEBDAV = "webdav"
    INTERNAL = "internal"


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One thing that happened, as a caller reports it (DESIGN.md §7, without the chain fields)."""

    time: datetime
    event: EventCode
    action: Action
    outcome: Outcome
    transport: Transport
    user: str = ""
    roles: tuple[str, ...] = ()
    source_ip: str = ""
    calling_aet: str = ""
    called_aet: str = ""
    route: str = ""
    patient_id: str = ""
    study_uid: str = ""
    series_uid: str = ""
    instance_count: int = 0
    detail: str = ""

    def __post_init__(self) -> None:
        if self.time.tzinfo is None or self.time.utcoffset() != timezone.utc.utcoffset(None):
            raise ValueError("AuditEvent.time must be timezone-aware UTC")
