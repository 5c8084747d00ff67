"""Parser bombs refused before they reach Orthanc's core, on the DIMSE ingest path.

* C-STORE: a gate of the C-STORE filter (``runtime.cstore_gates``) checks the received file
  (``dicom_limits.check_dicom_limits``); a refusal is DIMSE 0xC000 (cannot understand) and a
  Security Alert. Without it, Orthanc 1.10.1 stores the file and crashes at its first
  ``GET /instances/{id}/tags``.
* ``POST /instances`` is not covered: Orthanc parses an upload before any plugin hook sees it,
  and a plugin route standing in for the upload changes what Orthanc records (the instance's
  ``Origin`` becomes ``Plugins``, its ``RemoteIP`` and ``HttpUsername`` are lost) and its
  error answers, so it is not a drop-in.

STOW-RS (the DICOMweb plugin calls Orthanc's upload directly) and WebDAV uploads do not pass
through a plugin route: they are not covered (README).
"""

from __future__ import annotations

from typing import Any

from orthanc_hardening.dicom_limits import check_dicom_limits
from orthanc_hardening.shell.runtime import Runtime


def install(runtime: Runtime) -> None:
    """Register the C-STORE gate."""

    def cstore_limits(instance: Any) -> None:
        check_dicom_limits(bytes(instance.GetInstanceData()))

    runtime.cstore_gates.insert(0, cstore_limits)

