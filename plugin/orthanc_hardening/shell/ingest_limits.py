"""Parser bombs refused before they reach Orthanc's core, on the REST and DIMSE ingest paths.

* C-STORE: a gate of the C-STORE filter (``runtime.cstore_gates``) checks the received file
  (``dicom_limits.check_dicom_limits``); a refusal is DIMSE 0xC000 (cannot understand) and a
  Security Alert. Without it, Orthanc 1.10.1 stores the file and crashes at its first
  ``GET /instances/{id}/tags``.
* ``POST /instances``: Orthanc parses an upload before any plugin hook sees it (and 1.10.1
  segfaults on the nested file), so the plugin stands in for the route: it checks the body,
  then hands it to Orthanc's own upload (``orthanc.RestApiPost``, no job involved) and answers
  what Orthanc answered. A ZIP upload is handed over unchecked.

STOW-RS (the DICOMweb plugin calls Orthanc's upload directly) and WebDAV uploads do not pass
through a plugin route: they are not covered (README).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from orthanc_hardening.dicom_limits import check_dicom_limits
from orthanc_hardening.shell.guard import JSON_CONTENT_TYPE
from orthanc_hardening.shell.orthanc_api import core_call
from orthanc_hardening.shell.rest import Reply, RestCall, register
from orthanc_hardening.shell.runtime import Runtime

UPLOAD_ROUTE = "/instances"
_ZIP_MAGIC = b"PK\x03\x04"


def install(runtime: Runtime) -> None:
    """Register the C-STORE gate and the stand-in for ``POST /instances``."""

    def cstore_limits(instance: Any) -> None:
        check_dicom_limits(bytes(instance.GetInstanceData()))

    runtime.cstore_gates.insert(0, cstore_limits)

    def upload(call: RestCall) -> Reply:
        if not call.body.startswith(_ZIP_MAGIC):
            check_dicom_limits(call.body)
        answer = core_call(runtime.orthanc.RestApiPost, UPLOAD_ROUTE, call.body)
        return Reply(raw=answer if answer is not None else b"{}", content_type=JSON_CONTENT_TYPE)

    def listing(call: RestCall) -> Reply:
        # The route also serves Orthanc's GET /instances: forwarded as it came (index only).
        query = f"?{urlencode(dict(call.query))}" if call.query else ""
        answer = core_call(runtime.orthanc.RestApiGet, UPLOAD_ROUTE + query)
        return Reply(raw=answer, content_type=JSON_CONTENT_TYPE)

    register(runtime, UPLOAD_ROUTE, {"POST": upload, "GET": listing}, name="upload", like_orthanc=True)
