"""Reads bound to what was asked for: a verified seal must also name the instance requested.

A seal proves *which bytes* Orthanc stored for *which instance*. Orthanc's index says which
attachment (uuid) belongs to which instance; someone who can edit one index row can point
instance A at the genuine, correctly sealed file of instance B. The bytes then verify, and
every path would serve patient B's file as A's. So a read checks more than the bytes: the seal
of the attachment served must name the instance (and its series, study and patient) that the
request or the index names. As pyca/cryptography's ``verify`` and python-tuf's trusted
metadata set do, ``verify_bound`` takes everything it checks and raises.

Two sources of what is expected:

* the **request** (``requested_read``): REST by Orthanc id (``/instances/{id}/file``…), DICOMweb
  WADO-RS and WADO-URI by UIDs, and resources named in the URI of a series or study read,
  modify or anonymize. The shell lists the attachments the index names for each requested
  instance and checks their seals before Orthanc serves anything;
* the **index** (``index_binding``), for every read, whoever asked (a job thread, a loader
  thread, a C-GET): the sealed instance must be in the index, under its sealed parents, and
  the index must name this very attachment for it.

Orthanc's ids are SHA-1 hashes of the identifiers (``integrity.query.orthanc_id``), so one id
comparison binds patient id, study, series and SOP instance UIDs at once.

No I/O here: the shell reads the index and the seal store.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass

from orthanc_hardening.errors import SealMismatchError
from orthanc_hardening.integrity.query import orthanc_ids_of_seal
from orthanc_hardening.seal.record import Seal


class WrongInstanceError(SealMismatchError):
    """A verified seal names another instance (or parent) than the one the read is for."""


@dataclass(frozen=True, slots=True)
class ExpectedRead:
    """What a read must be, as the request or the index names it; empty fields are not compared.

    Attributes:
        instance_id: Orthanc's id of the instance (binds all four identifiers).
        series_id: Orthanc's id of the series it must be in.
        study_id: Orthanc's id of its study.
        patient_id_hash: Orthanc's id of its patient.
        sop_instance_uid: the SOP Instance UID the request named (DICOMweb, WADO-URI).
        series_uid: the Series Instance UID the request named.
        study_uid: the Study Instance UID the request named.
        uuid: the attachment the index names for the instance at this content type.
        source: who names these (``"the request GET /instances/…"``, ``"Orthanc's index"``),
            for the message.
    """

    instance_id: str = ""
    series_id: str = ""
    study_id: str = ""
    patient_id_hash: str = ""
    sop_instance_uid: str = ""
    series_uid: str = ""
    study_uid: str = ""
    uuid: str = ""
    source: str = "the request"


def _differs(want: str, got: str) -> bool:
    return bool(want) and not hmac.compare_digest(want.encode("utf-8"), got.encode("utf-8"))


def verify_bound(seal: Seal, expected: ExpectedRead) -> None:
    """Check that a (verified) seal is the seal of the instance ``expected`` names.

    Args:
        seal: the seal of the attachment about to be served; its signature was verified.
        expected: what the request or the index names.

    Raises:
        WrongInstanceError: the seal names another instance, series, study, patient or
            attachment, or it carries no identity although an instance was expected.
        ValueError: ``expected`` names nothing (a caller bug: nothing would be checked).
    """
    if not any((expected.instance_id, expected.series_id, expected.study_id, expected.patient_id_hash,
                expected.sop_instance_uid, expected.series_uid, expected.study_uid, expected.uuid)):
        raise ValueError("verify_bound needs at least one expected field")
    if not seal.sop_instance_uid:
        raise WrongInstanceError(
            f"attachment {seal.uuid} (type {seal.content_type}) is sealed without an instance identity, "
            f"but {expected.source} reads an instance")
    ids = orthanc_ids_of_seal(seal)
    checks = (
        ("attachment", expected.uuid, seal.uuid),
        ("instance", expected.instance_id, ids["Instance"]),
        ("SOP Instance UID", expected.sop_instance_uid, seal.sop_instance_uid),
        ("series", expected.series_id, ids["Series"]),
        ("Series Instance UID", expected.series_uid, seal.series_uid),
        ("study", expected.study_id, ids["Study"]),
        ("Study Instance UID", expected.study_uid, seal.study_uid),
        ("patient", expected.patient_id_hash, ids["Patient"]),
    )
    for what, want, got in checks:
        if _differs(want, got):
            raise WrongInstanceError(
                f"attachment {seal.uuid} (type {seal.content_type}) is sealed for {what} {got}, "
                f"but {expected.source} names {what} {want}: the index points this read at another "
                f"instance's file")


def index_binding(seal: Seal, indexed: Mapping[str, str] | None, indexed_uuid: str | None) -> ExpectedRead:
    """What Orthanc's index must say of the instance a seal names, for a read of its attachment.

    Args:
        seal: the verified seal of the attachment read.
        indexed: the index's answer for the sealed instance's Orthanc id (``ID``,
            ``ParentSeries``, ``ParentStudy``, ``ParentPatient``; a missing parent is not
            compared), or ``None`` when the index has no such instance.
        indexed_uuid: the uuid the index names for that instance at the seal's content type,
            or ``None`` when it names none.

    Returns:
        The expectation to pass to ``verify_bound`` together with ``seal``.

    Raises:
        WrongInstanceError: the index does not hold the sealed instance, or names no
            attachment of this type for it.
    """
    ids = orthanc_ids_of_seal(seal)
    if indexed is None:
        raise WrongInstanceError(
            f"attachment {seal.uuid} (type {seal.content_type}) is sealed for instance {ids['Instance']}, "
            f"which Orthanc's index does not hold: another instance points at this file")
    if indexed_uuid is None:
        raise WrongInstanceError(
            f"attachment {seal.uuid} (type {seal.content_type}) is sealed for instance {ids['Instance']}, "
            f"which has no attachment of this type in Orthanc's index")
    return ExpectedRead(
        instance_id=str(indexed.get("ID", "")) or ids["Instance"],
        series_id=str(indexed.get("ParentSeries", "")),
        study_id=str(indexed.get("ParentStudy", "")),
        patient_id_hash=str(indexed.get("ParentPatient", "")),
        uuid=indexed_uuid,
        source="Orthanc's index",
    )


def verify_not_shared(seal: Seal, owners: tuple[str, ...]) -> None:
    """Check that Orthanc's index names the attachment ``seal`` covers for one resource only.

    An index row copied from another instance's (the same uuid) makes a read of either
    instance read the same file; where the reader is not known (C-GET, send and archive jobs,
    loader threads) a read of it cannot be told apart from a read for the wrong instance.

    Args:
        seal: the verified seal of the attachment read.
        owners: the Orthanc ids of every resource the index names this attachment for.

    Raises:
        WrongInstanceError: the index names the attachment for more than one resource.
    """
    if len(owners) < 2:
        return
    sealed = orthanc_ids_of_seal(seal)["Instance"] if seal.sop_instance_uid else "(no identity)"
    others = [owner for owner in owners if owner != sealed]
    raise WrongInstanceError(
        f"attachment {seal.uuid} (type {seal.content_type}) is sealed for instance {sealed}, but Orthanc's index "
        f"names this file for {', '.join(others)} too: a pointer was copied onto another instance's file")


# -- which instances a request reads ----------------------------------------------------------

_ID = r"[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{8}){4}"
_UID = r"[0-9][0-9.]{0,63}"
_INSTANCE_READ = re.compile(rf"^/instances/({_ID})/([^/]+)(/.*)?$")
# Attachment routes that return stored bytes (the others answer from the index).
_ATTACHMENT_DATA = re.compile(r"^/[^/]+/(data|compressed-data)$")
_GROUP_READ = re.compile(rf"^/(patients|studies|series)/({_ID})/([^/]+)(?:/.*)?$")
_WADO_RS = re.compile(rf"^/dicom-web/studies/({_UID})(?:/series/({_UID})(?:/instances/({_UID}))?)?(/[^/]+)?(?:/.*)?$")
# Sub-resources of an instance whose answer comes from its stored bytes (Orthanc 1.10 to 1.13).
_INSTANCE_CONTENT = frozenset({
    "file", "tags", "simplified-tags", "header", "preview", "rendered", "image-uint8", "image-uint16",
    "image-int16", "matlab", "numpy", "pdf", "frames", "content", "attachments", "raw", "module",
    "patient-module", "study-module", "series-module", "export", "modify", "anonymize",
})
# Sub-resources of a patient, study or series whose answer reads the stored bytes of its instances.
_GROUP_CONTENT = frozenset({"shared-tags", "instances-tags", "numpy", "modify", "anonymize"})
# DICOMweb answers that carry no instance content (QIDO-RS lists, handled by the query verifier).
_WADO_QUERY = frozenset({"/studies", "/series", "/instances"})
# Orthanc's names of its own DICOM attachment types (FileContentType 1, 2, 3), and the type of each
# name as ``/instances/{id}/attachments/{name}/data`` takes them.
DICOM_ATTACHMENTS = {1: "dicom", 2: "dicom-as-json", 3: "dicom-until-pixel-data"}
_DICOM_ATTACHMENT_TYPES = {name: content_type for content_type, name in DICOM_ATTACHMENTS.items()}


@dataclass(frozen=True, slots=True)
class RequestedRead:
    """The resource whose stored bytes a request reads, as the request names it.

    ``level`` is ``instances``, ``series``, ``studies`` or ``patients``; ``resource`` an
    Orthanc id (REST), or empty with ``uids`` (study, series, SOP instance UID; DICOMweb,
    WADO-URI) to be looked up. ``reads`` names the attachment types Orthanc reads for the
    request itself where its route says so exactly (``/file`` and
    ``/attachments/{dicom type}/data``: that one file, whole); empty when the route does not tell
    (a rendering may read the DICOM file or a header copy, or come from Orthanc's caches).
    """

    level: str
    resource: str = ""
    uids: tuple[str, str, str] = ("", "", "")
    route: str = ""
    reads: tuple[int, ...] = ()


def requested_read(method: str, uri: str, query: Mapping[str, str]) -> RequestedRead | None:
    """The resource a request reads the stored bytes of, or ``None`` for any other request.

    Covers REST instance content (``GET /instances/{id}/file``, ``/tags``, ``/preview``, …),
    instance and group ``modify``/``anonymize``/``export`` (``POST``), group content
    (``/series/{id}/instances-tags``…), WADO-RS (study, series, instance, frames, rendered,
    metadata) and WADO-URI (``/wado?requestType=WADO&objectUID=…``). Archives are verified
    by their own override (``shell/archives.py``); bodies (sends, ``/tools/*``) are not visible
    to the HTTP filter.

    Args:
        method: ``GET``/``POST``/``PUT``/``DELETE``.
        uri: the path without query string, as the HTTP filter got it.
        query: the query string parameters.
    """
    method = method.upper()
    route = f"{method} {uri}"
    match = _INSTANCE_READ.match(uri)
    if match and match.group(2).lower() in _INSTANCE_CONTENT:
        sub = match.group(2).lower()
        if sub == "attachments" and not _ATTACHMENT_DATA.match(match.group(3) or ""):
            return None
        if (method == "POST") == (sub in ("modify", "anonymize", "export")) and method in ("GET", "POST"):
            return RequestedRead("instances", match.group(1).lower(), route=route,
                                 reads=_reads_of_instance_route(sub, match.group(3) or ""))
        return None
    match = _GROUP_READ.match(uri)
    if match and match.group(3).lower() in _GROUP_CONTENT:
        sub = match.group(3).lower()
        if (method == "POST") == (sub in ("modify", "anonymize")) and method in ("GET", "POST"):
            return RequestedRead(match.group(1), match.group(2).lower(), route=route)
        return None
    if method != "GET":
        return None
    if uri == "/wado" or uri.startswith("/wado/"):
        values = {key.lower(): value for key, value in query.items()}
        sop = values.get("objectuid", "")
        if values.get("requesttype", "").upper() == "WADO" and sop:
            return RequestedRead("instances", uids=(values.get("studyuid", ""), values.get("seriesuid", ""), sop),
                                 route=route)
        return None
    match = _WADO_RS.match(uri)
    if match:
        study, series, sop, tail = match.groups()
        if tail in _WADO_QUERY:
            return None
        level = "instances" if sop else "series" if series else "studies"
        return RequestedRead(level, uids=(study, series or "", sop or ""), route=route)
    return None


def _reads_of_instance_route(sub: str, rest: str) -> tuple[int, ...]:
    """The attachment types an instance route reads exactly (``RequestedRead.reads``)."""
    if sub == "file" and not rest:
        return (1,)
    if sub == "attachments":
        name = rest.strip("/").split("/")[0].lower()
        if name in _DICOM_ATTACHMENT_TYPES and rest.lower().endswith("/data"):
            return (_DICOM_ATTACHMENT_TYPES[name],)
    return ()


__all__ = ["DICOM_ATTACHMENTS", "ExpectedRead", "RequestedRead", "WrongInstanceError", "index_binding",
           "requested_read", "verify_bound", "verify_not_shared"]
