"""DICOM PS3.15 A.5 audit messages (IHE ATNA) built from stored audit events.

``audit_message(stored, source)`` turns one row of the audit trail into the XML
``AuditMessage`` of PS3.15 A.5.1, shaped per event kind as PS3.15 A.5.3 describes:
``EventIdentification`` (EventID with codeSystemName ``DCM``, EventActionCode, EventDateTime,
EventOutcomeIndicator, EventTypeCode where A.5.3 requires one), the ``ActiveParticipant``\\ s
(the user or calling AE title with ``UserIsRequestor``, the Orthanc application, with
RoleIDCode Application / Source / Destination as the event kind asks), one
``AuditSourceIdentification`` and the ``ParticipantObjectIdentification``\\ s (patient: type 1,
role 1, IDTypeCode 2; study: type 2, role 3, IDTypeCode 110180 with its
ParticipantObjectDescription/SOPClass; the query of a Query event in base64; the audit log
itself for Audit Log Used).

Pure: no I/O, no clock. The caller frames the bytes for syslog (``audit/syslog.py``).
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from xml.etree import ElementTree as ET

from orthanc_hardening.audit.chain import StoredEvent
from orthanc_hardening.audit.event import AuditEvent, EventCode, Outcome
from orthanc_hardening.timefmt import format_time

# PS3.16 CID 402 (Audit Active Participant Role ID).
ROLE_APPLICATION = ("110150", "Application")
ROLE_APPLICATION_LAUNCHER = ("110151", "Application Launcher")
ROLE_DESTINATION = ("110152", "Destination Role ID")
ROLE_SOURCE = ("110153", "Source Role ID")
# PS3.16 CID 403 (Audit Event Type Code) values used by A.5.3.
TYPE_APPLICATION_START = ("110120", "Application Start")
TYPE_APPLICATION_STOP = ("110121", "Application Stop")
TYPE_LOGIN = ("110122", "Login")
TYPE_LOGOUT = ("110123", "Logout")
TYPE_NODE_AUTHENTICATION = ("110126", "Node Authentication")
TYPE_USE_OF_RESTRICTED_FUNCTION = ("110132", "Use of Restricted Function")
TYPE_OBJECT_SECURITY_ATTRIBUTES_CHANGED = ("110135", "Object Security Attributes Changed")

# Characters XML 1.0 cannot carry (control characters other than tab, LF, CR; surrogates; FFFE/FFFF).
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_MAX_TEXT = 2000


@dataclass(frozen=True, slots=True)
class AuditSource:
    """Who reports the events (PS3.15 A.5.1 AuditSourceIdentification).

    Attributes:
        source_id: ``AuditSourceID``: the reporting system (e.g. ``host/AET``).
        enterprise_site_id: ``AuditEnterpriseSiteID`` (the hospital), or empty.
        application: the application's UserID in ActiveParticipant (the Orthanc AE title).
        host: the network access point of the application (host name or IP), or empty.
    """

    source_id: str
    enterprise_site_id: str = ""
    application: str = "ORTHANC"
    host: str = ""


def _text(value: str, limit: int = _MAX_TEXT) -> str:
    # Values come from requests (a user name, a query): strip what XML 1.0 cannot encode.
    return _NOT_XML.sub("\ufffd", value)[:limit]


def _token(value: str) -> str:
    # xsd:token: no leading/trailing/double whitespace, no tab or newline.
    return " ".join(_text(value, 256).split())


def _coded(parent: ET.Element, tag: str, code: tuple[str, str], system: str = "DCM") -> ET.Element:
    # PS3.15 A.5.1 CodedValueType: csd-code, codeSystemName, originalText (the code meaning).
    return ET.SubElement(parent, tag, {"csd-code": code[0], "codeSystemName": system, "originalText": code[1]})


def _event_type(event: AuditEvent) -> tuple[str, str] | None:
    """The EventTypeCode that PS3.15 A.5.3 requires for this event, if any."""
    detail = event.detail.lower()
    if event.event is EventCode.APPLICATION_ACTIVITY:
        # A.5.3.1: Application Start or Stop.
        return TYPE_APPLICATION_STOP if "stop" in detail else TYPE_APPLICATION_START
    if event.event is EventCode.USER_AUTHENTICATION:
        # A.5.3.12: Login or Logout.
        return TYPE_LOGOUT if "logout" in detail else TYPE_LOGIN
    if event.event is EventCode.SECURITY_ALERT:
        # A.5.3.11: the kind of alert. Integrity failures (seal, manifest, audit chain) change the
        # trust in an object; TLS failures are node authentication; refusals are restricted use.
        if any(word in detail for word in ("seal", "manifest", "integrity", "chain", "tamper")):
            return TYPE_OBJECT_SECURITY_ATTRIBUTES_CHANGED
        if any(word in detail for word in ("tls", "certificate", "plaintext")):
            return TYPE_NODE_AUTHENTICATION
        return TYPE_USE_OF_RESTRICTED_FUNCTION
    return None


def _requestor_id(event: AuditEvent) -> str:
    if event.user:
        return event.user
    if event.calling_aet:
        return event.calling_aet
    return "unknown"


def _participant(parent: ET.Element, user_id: str, requestor: bool, role: tuple[str, str] | None,
                 access_point: str = "", alternative: str = "") -> None:
    attributes = {"UserID": _text(user_id, 256) or "unknown", "UserIsRequestor": "true" if requestor else "false"}
    if alternative:
        attributes["AlternativeUserID"] = _text(alternative, 256)
    if access_point:
        attributes["NetworkAccessPointID"] = _token(access_point)
        # PS3.15 A.5.1: 1 machine name, 2 IP address.
        attributes["NetworkAccessPointTypeCode"] = "2" if _looks_like_ip(access_point) else "1"
    element = ET.SubElement(parent, "ActiveParticipant", attributes)
    if role is not None:
        _coded(element, "RoleIDCode", role)


def _looks_like_ip(value: str) -> bool:
    return bool(re.fullmatch(r"[0-9.]+|[0-9a-fA-F:]+", value)) and any(c.isdigit() for c in value)


def _participants(message: ET.Element, event: AuditEvent, source: AuditSource) -> None:
    """ActiveParticipants per PS3.15 A.5.3 for each event kind."""
    who = _requestor_id(event)
    alternative = f"AETITLES={event.calling_aet}" if event.calling_aet and event.user else ""
    app_aet = event.called_aet or source.application
    app_alternative = f"AETITLES={app_aet}"
    kind = event.event
    if kind is EventCode.APPLICATION_ACTIVITY:
        # A.5.3.1: the application (not requestor) and, when known, who started or stopped it.
        _participant(message, source.application, False, ROLE_APPLICATION, source.host, app_alternative)
        if event.user and event.user != "orthanc-hardening":
            _participant(message, event.user, True, ROLE_APPLICATION_LAUNCHER, event.source_ip)
        return
    if kind in (EventCode.BEGIN_TRANSFERRING, EventCode.INSTANCES_TRANSFERRED, EventCode.EXPORT,
                EventCode.IMPORT, EventCode.QUERY):
        # A.5.3.3/.5/.6/.7/.10: a source and a destination. Data written into Orthanc
        # (Create: upload, C-STORE, Import) flows from the requester to Orthanc; a read or a
        # query flows from Orthanc to the requester, who is the querying source of a Query.
        inbound = event.action.value == "C" or kind is EventCode.IMPORT
        if kind is EventCode.QUERY or inbound:
            _participant(message, who, True, ROLE_SOURCE, event.source_ip, alternative)
            _participant(message, source.application, False, ROLE_DESTINATION, source.host, app_alternative)
        else:
            _participant(message, source.application, False, ROLE_SOURCE, source.host, app_alternative)
            _participant(message, who, True, ROLE_DESTINATION, event.source_ip, alternative)
        return
    # A.5.3.2 Audit Log Used, A.5.3.4 Study Deleted, A.5.3.8 Instances Accessed, A.5.3.11
    # Security Alert, A.5.3.12 User Authentication: the requesting user, and the application.
    _participant(message, who, True, None, event.source_ip, alternative)
    _participant(message, source.application, False, ROLE_APPLICATION, source.host, app_alternative)


def _object(message: ET.Element, object_id: str, type_code: str, role: str,
            id_type: tuple[str, str], system: str, name: str = "", query: bytes | None = None,
            details: tuple[tuple[str, str], ...] = (), instances: int | None = None,
            life_cycle: str = "") -> None:
    attributes = {"ParticipantObjectID": _token(object_id) or "unknown", "ParticipantObjectTypeCode": type_code,
                  "ParticipantObjectTypeCodeRole": role}
    if life_cycle:
        attributes["ParticipantObjectDataLifeCycle"] = life_cycle
    element = ET.SubElement(message, "ParticipantObjectIdentification", attributes)
    _coded(element, "ParticipantObjectIDTypeCode", id_type, system)
    # PS3.15 A.5.1 (this schema): a ParticipantObjectName or a ParticipantObjectQuery.
    if query is not None:
        ET.SubElement(element, "ParticipantObjectQuery").text = base64.b64encode(query).decode("ascii")
    else:
        ET.SubElement(element, "ParticipantObjectName").text = _token(name or object_id) or "unknown"
    for key, value in details:
        ET.SubElement(element, "ParticipantObjectDetail",
                      {"type": key, "value": base64.b64encode(_text(value).encode("utf-8")).decode("ascii")})
    if instances is not None:
        description = ET.SubElement(element, "ParticipantObjectDescription")
        # A.5.3: SOPClass with NumberOfInstances (the SOP class UID is not in the trail row).
        ET.SubElement(description, "SOPClass", {"NumberOfInstances": str(max(instances, 0))})


_LIFE_CYCLE = {"C": "2", "R": "6", "U": "3", "D": "14"}


def _objects(message: ET.Element, stored: StoredEvent) -> None:
    event = stored.event
    kind = event.event
    # Every message carries the trail row's sequence number, hash and route, so a SIEM can
    # match it to the signed chain.
    trail = (("AuditTrailSeq", str(stored.seq)), ("AuditTrailHash", stored.hash),
             ("Transport", event.transport.value), ("Route", event.route))
    if kind is EventCode.QUERY:
        # A.5.3.10: the query as ParticipantObjectQuery (base64), type 2, role 3 (Report),
        # IDTypeCode 110181 SOP Class UID.
        _object(message, event.route or "query", "2", "3", ("110181", "SOP Class UID"), "DCM",
                query=_text(event.detail or event.route).encode("utf-8"),
                details=(*trail, ("TransferSyntax", "1.2.840.10008.1.2")))
    elif kind is EventCode.AUDIT_LOG_USED:
        # A.5.3.2: the audit log, type 2, role 13 (Security Resource), IDTypeCode 12 (URI).
        _object(message, event.route or "/hardening/audit", "2", "13", ("12", "URI"), "RFC-3881",
                name="Security Audit Log", details=(*trail, ("Detail", event.detail)))
    elif kind is EventCode.SECURITY_ALERT or kind is EventCode.USER_AUTHENTICATION:
        # A.5.3.11: the alerting point, a URI; the detail says what happened.
        _object(message, event.route or "unknown", "2", "13", ("12", "URI"), "RFC-3881",
                name="Alert Subject", details=(*trail, ("Alert Description", event.detail)))
    elif kind is EventCode.APPLICATION_ACTIVITY:
        pass
    else:
        life_cycle = _LIFE_CYCLE.get(event.action.value, "")
        series = (("SeriesInstanceUID", event.series_uid),) if event.series_uid else ()
        if event.study_uid:
            _object(message, event.study_uid, "2", "3", ("110180", "Study Instance UID"), "DCM",
                    details=(*trail, *series, ("Detail", event.detail)), instances=event.instance_count,
                    life_cycle=life_cycle)
        elif event.detail or event.route:
            # A request whose resources are not known (e.g. a body the HTTP filter cannot see).
            _object(message, event.route or "unknown", "2", "4", ("12", "URI"), "RFC-3881",
                    details=(*trail, ("Detail", event.detail)))
    if event.patient_id and kind not in (EventCode.AUDIT_LOG_USED, EventCode.APPLICATION_ACTIVITY):
        # Patient: type 1 (Person), role 1 (Patient), IDTypeCode 2 (Patient Number, RFC-3881).
        _object(message, event.patient_id, "1", "1", ("2", "Patient Number"), "RFC-3881")


def audit_message(stored: StoredEvent, source: AuditSource) -> bytes:
    """Return the PS3.15 A.5 ``AuditMessage`` XML (UTF-8, with declaration) for one trail row.

    Args:
        stored: a row of the audit trail.
        source: the reporting system.

    Returns:
        The XML document as UTF-8 bytes on one line.
    """
    event = stored.event
    message = ET.Element("AuditMessage")
    identification = ET.SubElement(message, "EventIdentification", {
        "EventActionCode": event.action.value,
        "EventDateTime": format_time(event.time),
        "EventOutcomeIndicator": str(event.outcome.value),
    })
    _coded(identification, "EventID", (event.event.code, event.event.display_name))
    event_type = _event_type(event)
    if event_type is not None:
        _coded(identification, "EventTypeCode", event_type)
    if event.outcome is not Outcome.SUCCESS and event.detail:
        # Kept on one line, like the rest of the message.
        description = _text(event.detail).replace("\r", " ").replace("\n", " ")
        ET.SubElement(identification, "EventOutcomeDescription").text = description
    _participants(message, event, source)
    audit_source = {"AuditSourceID": _token(source.source_id) or "orthanc-hardening"}
    if source.enterprise_site_id:
        audit_source["AuditEnterpriseSiteID"] = _token(source.enterprise_site_id)
    site = ET.SubElement(message, "AuditSourceIdentification", audit_source)
    # PS3.15 A.5.1.2.1: 4 = application server process.
    ET.SubElement(site, "AuditSourceTypeCode", {"csd-code": "4"})
    _objects(message, stored)
    # One line (no newline after the declaration): syslog collectors store a message per line.
    return b'<?xml version="1.0" encoding="UTF-8"?>' + ET.tostring(message, encoding="unicode").encode("utf-8")


__all__ = ["AuditSource", "audit_message"]
