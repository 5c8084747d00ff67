"""Which audit event an HTTP request gives: Orthanc REST, DICOMweb and tool routes (A.5 codes).

``classify(method, uri, query)`` returns an ``Access`` naming the event code, action, the level
and identifier of the resource the request is about (an Orthanc id, or DICOM UIDs for
DICOMweb), whether the event is written once per series, and a ``detail`` text; or ``None`` for a
request that touches no DICOM data (system, jobs, plugin pages…). Uploads (REST ``POST
/instances``, STOW-RS) are recorded by the storage write hook, which knows the series, so they
classify as ``upload`` with no event here. The shell resolves the resource to patient, study and
series (index lookups) and records the events. Pure: no I/O here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from orthanc_hardening.audit.event import Action, EventCode

LEVELS = ("patients", "studies", "series", "instances")
_ID = r"([0-9a-fA-F]{8}(?:-[0-9a-fA-F]{8}){4})"
_RESOURCE = re.compile(rf"^/(patients|studies|series|instances)/{_ID}(?:/(.*))?$")
_LISTING = re.compile(r"^/(patients|studies|series|instances)/?$")
# Sub-resources of an instance that return its DICOM content (PS3.15 A.5: Instances Accessed, R).
_INSTANCE_DATA = frozenset({
    "file", "tags", "simplified-tags", "header", "preview", "rendered", "image-uint8", "image-uint16",
    "image-int16", "matlab", "numpy", "pdf", "frames", "content", "attachments", "raw", "module",
    "patient-module", "study-module", "series-module", "instances-tags",
})
# Sub-resources of a series/study/patient that return instance content.
_GROUP_DATA = frozenset({"shared-tags", "instances-tags", "numpy", "module", "patient-module", "study-module",
                         "series-module"})
_ARCHIVE = frozenset({"archive", "media"})
_CHANGE = frozenset({"metadata", "labels", "attachments", "protected"})
_MODIFY = frozenset({"modify", "anonymize"})
_SEND = re.compile(r"^/(modalities|peers)/([^/]+)/(store|store-straight)$")
_REMOTE_QUERY = re.compile(r"^/modalities/([^/]+)/(query|find|find-patient|find-study|find-series|find-instance|"
                           r"find-worklist)$")
_REMOTE_RETRIEVE = re.compile(r"^/modalities/([^/]+)/(move|get)$")
_DICOMWEB_SERVER = re.compile(r"^/dicom-web/servers/([^/]+)/(stow|retrieve|get|wado|qido|delete)$")
_TOOLS_QUERY = frozenset({"/tools/find", "/tools/lookup", "/tools/bulk-content"})
_TOOLS_ARCHIVE = frozenset({"/tools/create-archive", "/tools/create-media", "/tools/create-media-extended"})
_TOOLS_CHANGE = {"/tools/bulk-delete": (EventCode.STUDY_DELETED, Action.DELETE),
                 "/tools/bulk-modify": (EventCode.INSTANCES_ACCESSED, Action.READ),
                 "/tools/bulk-anonymize": (EventCode.INSTANCES_ACCESSED, Action.READ)}
_JOB_ARCHIVE = re.compile(r"^/jobs/([^/]+)/archive$")
_UID = r"([0-9][0-9.]{0,63})"
_WADO = re.compile(rf"^/dicom-web/studies/{_UID}(?:/series/{_UID}(?:/instances/{_UID})?)?(/.*)?$")
BODY_HIDDEN = "resources are in the request body, which Orthanc does not show to the HTTP filter"


@dataclass(frozen=True, slots=True)
class Access:
    """What a request does to DICOM data, before the resource is resolved."""

    kind: str  # access | query | delete | change | modify | send | upload | archive
    event: EventCode
    action: Action
    level: str = ""  # patients | studies | series | instances | "" (none / unknown)
    resource: str = ""  # Orthanc id
    uids: tuple[str, str, str] = ("", "", "")  # study, series, SOP instance UIDs (DICOMweb)
    per_series: bool = True
    detail: str = ""

    @property
    def has_resource(self) -> bool:
        return bool(self.resource or self.uids[0])


def _query_text(query: Mapping[str, str]) -> str:
    text = "&".join(f"{k}={v}" for k, v in sorted(query.items()))
    return text[:1000]


def classify(method: str, uri: str, query: Mapping[str, str]) -> Access | None:
    """Return what an HTTP request does to DICOM data, or ``None`` when it touches none.

    Args:
        method: ``GET``/``POST``/``PUT``/``DELETE``.
        uri: the path without query string.
        query: the query string parameters (GET only).
    """
    method = method.upper()
    if uri.startswith("/dicom-web/"):
        return _dicomweb(method, uri, query)
    match = _RESOURCE.match(uri)
    if match:
        return _resource(method, match.group(1), match.group(2).lower(), match.group(3) or "", query)
    match = _LISTING.match(uri)
    if match:
        if method == "GET":
            return Access("query", EventCode.QUERY, Action.EXECUTE, per_series=False,
                          detail=f"list {match.group(1)}" + (f" ?{_query_text(query)}" if query else ""))
        if method == "POST" and match.group(1) == "instances":
            return Access("upload", EventCode.IMPORT, Action.CREATE)
        return None
    if method == "POST" and uri in _TOOLS_QUERY:
        return Access("query", EventCode.QUERY, Action.EXECUTE, per_series=False,
                      detail=f"{uri}: query in the request body (not visible to the HTTP filter)")
    if method == "POST" and uri in _TOOLS_ARCHIVE:
        return Access("archive", EventCode.INSTANCES_TRANSFERRED, Action.READ, per_series=False,
                      detail=f"{uri}: {BODY_HIDDEN}")
    if method == "POST" and uri in _TOOLS_CHANGE:
        event, action = _TOOLS_CHANGE[uri]
        return Access("change", event, action, per_series=False, detail=f"{uri}: {BODY_HIDDEN}")
    if method == "GET" and (match := _JOB_ARCHIVE.match(uri)):
        return Access("archive", EventCode.INSTANCES_TRANSFERRED, Action.READ, per_series=False,
                      detail=f"archive of job {match.group(1)} (resources named when the job was created)")
    if method == "POST" and (match := _SEND.match(uri)):
        kind = "modality" if match.group(1) == "modalities" else "peer"
        return Access("send", EventCode.BEGIN_TRANSFERRING, Action.EXECUTE, per_series=False,
                      detail=f"send to {kind} {match.group(2)}: {BODY_HIDDEN}")
    if method == "POST" and (match := _REMOTE_QUERY.match(uri)):
        return Access("query", EventCode.QUERY, Action.EXECUTE, per_series=False,
                      detail=f"C-FIND to modality {match.group(1)} ({match.group(2)})")
    if method == "POST" and (match := _REMOTE_RETRIEVE.match(uri)):
        return Access("change", EventCode.IMPORT, Action.CREATE, per_series=False,
                      detail=f"C-{match.group(2).upper()} from modality {match.group(1)} (recorded on arrival)")
    return None


def _resource(method: str, level: str, resource: str, sub: str, query: Mapping[str, str]) -> Access | None:
    head = sub.split("/", 1)[0].lower() if sub else ""
    if not sub:
        if method == "GET":
            return Access("query", EventCode.QUERY, Action.EXECUTE, level, resource, per_series=False,
                          detail=f"{level[:-1] if level != 'series' else 'series'} details")
        if method == "DELETE":
            # PS3.15 A.5.3.4 Study Deleted; a series or instance delete names its series.
            return Access("delete", EventCode.STUDY_DELETED, Action.DELETE, level, resource,
                          detail=f"delete {level} {resource}")
        return None
    if head in _MODIFY and method == "POST":
        return Access("modify", EventCode.INSTANCES_ACCESSED, Action.READ, level, resource,
                      detail=f"{head}: source read (the new instances are recorded as they are created)")
    if head in _ARCHIVE and level != "instances" and method in ("GET", "POST"):
        return Access("archive", EventCode.INSTANCES_TRANSFERRED, Action.READ, level, resource,
                      detail=f"{level} {head}")
    if head in _CHANGE and method in ("PUT", "POST", "DELETE"):
        return Access("change", EventCode.INSTANCES_ACCESSED, Action.UPDATE, level, resource,
                      detail=f"{method} {head}/{sub.partition('/')[2]}".rstrip("/"))
    if head == "reconstruct" and method == "POST":
        return Access("change", EventCode.INSTANCES_ACCESSED, Action.UPDATE, level, resource, detail="reconstruct")
    if method != "GET":
        return None
    if level == "instances" and head in _INSTANCE_DATA:
        return Access("access", EventCode.INSTANCES_ACCESSED, Action.READ, level, resource, detail=f"instance {head}")
    if level != "instances" and head in _GROUP_DATA:
        return Access("access", EventCode.INSTANCES_ACCESSED, Action.READ, level, resource, detail=f"{level} {head}")
    return Access("query", EventCode.QUERY, Action.EXECUTE, level, resource, per_series=False,
                  detail=f"{level} {sub}" + (f" ?{_query_text(query)}" if query else ""))


def _dicomweb(method: str, uri: str, query: Mapping[str, str]) -> Access | None:
    if uri.startswith("/dicom-web/servers"):
        return classify_server(method, uri)
    if method == "POST" and re.match(rf"^/dicom-web/studies(/{_UID})?/?$", uri):
        return Access("upload", EventCode.IMPORT, Action.CREATE)
    if method != "GET":
        return None
    qido = re.match(rf"^/dicom-web/(?:studies/{_UID}/)?(?:series/{_UID}/)?(studies|series|instances)/?$", uri)
    if qido:
        return Access("query", EventCode.QUERY, Action.EXECUTE, uids=(qido.group(1) or "", qido.group(2) or "", ""),
                      per_series=False, detail=f"QIDO-RS {uri} ?{_query_text(query)}")
    match = _WADO.match(uri)
    if match:
        study, series, instance, rest = match.groups()
        what = (rest or "").strip("/").split("/", 1)[0] or "instances"
        return Access("access", EventCode.INSTANCES_ACCESSED, Action.READ, uids=(study, series or "", instance or ""),
                      detail=f"WADO-RS {what}")
    return None


def classify_server(method: str, uri: str) -> Access | None:
    """Classify ``/dicom-web/servers/...`` (outgoing DICOMweb)."""
    if method != "POST":
        return None
    match = _DICOMWEB_SERVER.match(uri)
    if not match:
        return None
    return _server_access(match.group(1), match.group(2))


def _server_access(name: str, verb: str) -> Access:
    if verb == "stow":
        return Access("send", EventCode.BEGIN_TRANSFERRING, Action.EXECUTE, per_series=False,
                      detail=f"STOW-RS to DICOMweb server {name}: {BODY_HIDDEN}")
    if verb == "qido":
        return Access("query", EventCode.QUERY, Action.EXECUTE, per_series=False,
                      detail=f"QIDO-RS to DICOMweb server {name}")
    return Access("change", EventCode.IMPORT, Action.CREATE, per_series=False,
                  detail=f"{verb} from DICOMweb server {name}")
