"""What a C-MOVE asks for, as Orthanc's own C-MOVE reads it (``OrthancMoveRequestHandler``).

The level's identifier only: PatientID, AccessionNumber when given (else StudyInstanceUID),
SeriesInstanceUID, SOPInstanceUID; a backslash-separated list is a list of exact values. Other
keys are ignored (a PATIENT-level request with an AccessionNumber matches by PatientID only).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from orthanc_hardening.errors import BadRequestError

_LEVELS = {"PATIENT": "Patient", "STUDY": "Study", "SERIES": "Series", "INSTANCE": "Instance", "IMAGE": "Instance"}
_IDENTIFIER = {"Patient": "PatientID", "Series": "SeriesInstanceUID", "Instance": "SOPInstanceUID"}


def move_identifiers(request: Mapping[str, Any]) -> tuple[str, str, list[str]]:
    """The level, the identifier's keyword and its values a C-MOVE request names.

    ``request`` holds the Python plugin's keyword arguments (``Level`` and the identifiers; an
    absent identifier is ``None`` or empty).

    Raises:
        BadRequestError: an unknown level, or no identifier for the level (Orthanc refuses both).
    """
    level = _LEVELS.get(str(request.get("Level", "") or "").strip().upper())
    if level is None:
        raise BadRequestError("QueryRetrieveLevel", f"unknown C-MOVE level {request.get('Level')!r}")
    if level == "Study":
        keyword = "AccessionNumber" if str(request.get("AccessionNumber", "") or "") else "StudyInstanceUID"
    else:
        keyword = _IDENTIFIER[level]
    value = str(request.get(keyword, "") or "")
    if not value:
        raise BadRequestError(keyword, "No DICOM identifier provided in the C-MOVE request for this query "
                                       "retrieve level")
    return level, keyword, [token for token in value.split("\\") if token]
