"""DICOM PS3.15 A.5 audit messages: every event kind validates against the A.5.1 schema."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from pathlib import Path

import pytest
from lxml import etree

from orthanc_hardening.audit.atna import AuditSource, audit_message
from orthanc_hardening.audit.chain import StoredEvent
from orthanc_hardening.audit.event import Action, AuditEvent, EventCode, Outcome, Transport

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "data" / "dicom-audit-message.rng"
SCHEMA = etree.RelaxNG(etree.parse(str(SCHEMA_PATH)))
NOW = datetime(2026, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)
SOURCE = AuditSource(source_id="pacs1/ORTHANC", application="ORTHANC", host="pacs1")
SERIES = {"patient_id": "P-123", "study_uid": "1.2.3.4", "series_uid": "1.2.3.4.5", "instance_count": 3}


def stored(seq: int = 7, **fields: object) -> StoredEvent:
    base: dict[str, object] = {"time": NOW, "event": EventCode.INSTANCES_ACCESSED, "action": Action.READ,
                               "outcome": Outcome.SUCCESS, "transport": Transport.REST}
    base.update(fields)
    return StoredEvent(seq, AuditEvent(**base), "ab" * 32, "cd" * 32)  # type: ignore[arg-type]


# Every kind of event the plugin records (shell/audit_hooks.py, shell/guard.py).
EMITTED = {
    "start": stored(event=EventCode.APPLICATION_ACTIVITY, action=Action.EXECUTE, transport=Transport.INTERNAL,
                    user="orthanc-hardening", called_aet="ORTHANC", route="plugin",
                    detail="orthanc-hardening started (enforce mode)"),
    "stop": stored(event=EventCode.APPLICATION_ACTIVITY, action=Action.EXECUTE, transport=Transport.INTERNAL,
                   user="orthanc-hardening", route="plugin", detail="orthanc-hardening stopping"),
    "audit-log-used": stored(event=EventCode.AUDIT_LOG_USED, action=Action.READ, user="auditor",
                             roles=("auditor",), source_ip="127.0.0.1", route="GET /hardening/audit",
                             detail="query series=1.2.3.4.5; 4 events"),
    "begin-transferring": stored(event=EventCode.BEGIN_TRANSFERRING, action=Action.EXECUTE,
                                 transport=Transport.DIMSE, calling_aet="VIEWER", called_aet="ORTHANC",
                                 route="C-MOVE", **SERIES),
    "accessed-rest": stored(user="user", source_ip="10.0.0.9", route="/instances/x/file", detail="instance file",
                            **SERIES),
    "accessed-update": stored(action=Action.UPDATE, user="admin", route="/series/x/metadata", **SERIES),
    "transferred-read": stored(event=EventCode.INSTANCES_TRANSFERRED, action=Action.READ, user="user",
                               route="/studies/x/archive", **SERIES),
    "transferred-cstore": stored(event=EventCode.INSTANCES_TRANSFERRED, action=Action.CREATE,
                                 transport=Transport.DIMSE, calling_aet="CT01", called_aet="ORTHANC",
                                 route="C-STORE", **SERIES),
    "cget-unattributed": stored(event=EventCode.INSTANCES_TRANSFERRED, action=Action.READ, transport=Transport.DIMSE,
                                route="C-GET", detail="requester unknown: no C-GET hook", **SERIES),
    "study-deleted": stored(event=EventCode.STUDY_DELETED, action=Action.DELETE, user="admin",
                            route="/studies/x", **SERIES),
    "export": stored(event=EventCode.EXPORT, action=Action.READ, user="admin", route="/modalities/PACS2/store",
                     **SERIES),
    "import": stored(event=EventCode.IMPORT, action=Action.CREATE, user="user", source_ip="10.0.0.2",
                     route="/instances", **SERIES),
    "query-rest": stored(event=EventCode.QUERY, action=Action.EXECUTE, user="user", route="/tools/find",
                         detail='{"Level":"Study","Query":{"PatientID":"P*"}}'),
    "query-cfind": stored(event=EventCode.QUERY, action=Action.EXECUTE, transport=Transport.DIMSE,
                          calling_aet="VIEWER", called_aet="ORTHANC", route="C-FIND",
                          detail="QueryRetrieveLevel=STUDY PatientID=P-123", patient_id="P-123"),
    "security-alert-seal": stored(event=EventCode.SECURITY_ALERT, action=Action.EXECUTE,
                                  outcome=Outcome.SERIOUS_FAILURE, user="user", route="/instances/x/file",
                                  detail="SealMismatchError: sha256 differs", **SERIES),
    "security-alert-refused": stored(event=EventCode.SECURITY_ALERT, action=Action.EXECUTE,
                                     outcome=Outcome.MINOR_FAILURE, user="user", route="audit",
                                     detail="user 'user' is not in Hardening.Auditors"),
    "user-authentication-failed": stored(event=EventCode.USER_AUTHENTICATION, action=Action.EXECUTE,
                                         outcome=Outcome.MINOR_FAILURE, user="mallory", source_ip="10.6.6.6",
                                         route="/app/explorer.html", detail="login failed"),
    "no-identity": stored(event=EventCode.INSTANCES_ACCESSED, route="/tools/create-archive",
                          detail="resources are in the request body"),
}


def parse(stored_event: StoredEvent) -> etree._Element:
    return etree.fromstring(audit_message(stored_event, SOURCE))


@pytest.mark.parametrize("name", sorted(EMITTED))
def test_every_emitted_event_validates_against_the_dicom_schema(name: str) -> None:
    document = parse(EMITTED[name])
    assert SCHEMA.validate(document), SCHEMA.error_log


@pytest.mark.parametrize("code", list(EventCode))
def test_every_event_code_validates_with_and_without_resources(code: EventCode) -> None:
    for fields in ({}, SERIES):
        document = parse(stored(event=code, **fields))
        assert SCHEMA.validate(document), (code, SCHEMA.error_log)


def test_event_identification_carries_code_action_time_and_outcome() -> None:
    document = parse(EMITTED["accessed-rest"])
    identification = document.find("EventIdentification")
    assert identification.attrib == {"EventActionCode": "R", "EventDateTime": "2026-03-04T05:06:07.123456Z",
                                     "EventOutcomeIndicator": "0"}
    event_id = identification.find("EventID")
    assert (event_id.get("csd-code"), event_id.get("codeSystemName"), event_id.get("originalText")) == (
        "110103", "DCM", "DICOM Instances Accessed")


def test_patient_and_study_objects_follow_a53() -> None:
    document = parse(EMITTED["accessed-rest"])
    objects = {o.get("ParticipantObjectID"): o for o in document.findall("ParticipantObjectIdentification")}
    patient, study = objects["P-123"], objects["1.2.3.4"]
    assert (patient.get("ParticipantObjectTypeCode"), patient.get("ParticipantObjectTypeCodeRole")) == ("1", "1")
    assert patient.find("ParticipantObjectIDTypeCode").get("csd-code") == "2"
    assert (study.get("ParticipantObjectTypeCode"), study.get("ParticipantObjectTypeCodeRole")) == ("2", "3")
    assert study.find("ParticipantObjectIDTypeCode").get("csd-code") == "110180"
    assert study.find("ParticipantObjectDescription/SOPClass").get("NumberOfInstances") == "3"
    details = {d.get("type"): base64.b64decode(d.get("value")).decode()
               for d in study.findall("ParticipantObjectDetail")}
    assert details["SeriesInstanceUID"] == "1.2.3.4.5"
    assert details["AuditTrailSeq"] == "7"


def test_requesting_user_and_source_ip_are_the_requestor() -> None:
    document = parse(EMITTED["accessed-rest"])
    requestors = [p for p in document.findall("ActiveParticipant") if p.get("UserIsRequestor") == "true"]
    assert [(p.get("UserID"), p.get("NetworkAccessPointID"), p.get("NetworkAccessPointTypeCode"))
            for p in requestors] == [("user", "10.0.0.9", "2")]


def test_query_carries_the_query_in_base64() -> None:
    document = parse(EMITTED["query-rest"])
    query = document.find("ParticipantObjectIdentification/ParticipantObjectQuery")
    assert base64.b64decode(query.text).decode() == '{"Level":"Study","Query":{"PatientID":"P*"}}'
    roles = {p.find("RoleIDCode").get("csd-code"): p.get("UserIsRequestor")
             for p in document.findall("ActiveParticipant")}
    assert roles == {"110153": "true", "110152": "false"}


def test_dimse_store_names_the_calling_aet_as_source() -> None:
    document = parse(EMITTED["transferred-cstore"])
    roles = {p.find("RoleIDCode").get("csd-code"): p.get("UserID") for p in document.findall("ActiveParticipant")}
    assert roles == {"110153": "CT01", "110152": "ORTHANC"}


def test_read_transfer_goes_from_orthanc_to_the_user() -> None:
    document = parse(EMITTED["transferred-read"])
    roles = {p.find("RoleIDCode").get("csd-code"): p.get("UserID") for p in document.findall("ActiveParticipant")}
    assert roles == {"110153": "ORTHANC", "110152": "user"}


@pytest.mark.parametrize(("name", "type_code"), [
    ("start", "110120"), ("stop", "110121"), ("user-authentication-failed", "110122"),
    ("security-alert-seal", "110135"), ("security-alert-refused", "110132"),
])
def test_event_type_code_where_a53_requires_one(name: str, type_code: str) -> None:
    document = parse(EMITTED[name])
    assert [e.get("csd-code") for e in document.findall("EventIdentification/EventTypeCode")] == [type_code]


def test_failure_has_an_outcome_description() -> None:
    document = parse(EMITTED["security-alert-seal"])
    assert document.find("EventIdentification").get("EventOutcomeIndicator") == "8"
    assert "SealMismatchError" in document.find("EventIdentification/EventOutcomeDescription").text


@pytest.mark.attack
def test_hostile_user_name_and_detail_cannot_inject_xml() -> None:
    hostile = '"/><ActiveParticipant UserID="root" UserIsRequestor="true"/>\x00\x1b'
    event = stored(event=EventCode.QUERY, action=Action.EXECUTE, user=hostile, route="/tools/find",
                   detail=hostile, **SERIES)
    document = parse(event)
    assert SCHEMA.validate(document), SCHEMA.error_log
    assert len(document.findall("ActiveParticipant")) == 2
    requestor = next(p for p in document.findall("ActiveParticipant") if p.get("UserIsRequestor") == "true")
    assert requestor.get("UserID").startswith('"/><ActiveParticipant')


def test_source_identification() -> None:
    document = parse(EMITTED["import"])
    source = document.find("AuditSourceIdentification")
    assert source.get("AuditSourceID") == "pacs1/ORTHANC"
    assert source.find("AuditSourceTypeCode").get("csd-code") == "4"


def test_message_is_one_line_utf8_with_declaration() -> None:
    data = audit_message(stored(user="J\u00f6rg", detail="a\nb", outcome=Outcome.MAJOR_FAILURE, **SERIES), SOURCE)
    assert data.startswith(b'<?xml version="1.0" encoding="UTF-8"?><AuditMessage>')
    assert b"\n" not in data
    assert "J\u00f6rg".encode() in data
