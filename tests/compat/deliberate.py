"""The deliberate differences between a plain Orthanc and the same Orthanc with the plugin, on
untampered data: the only ones the differential suite accepts (README, "Drop-in").

Each is named here with its reason; the tests import what they accept from this module, so a
new difference cannot slip in unlisted.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Difference:
    where: str
    what: str
    why: str


DIFFERENCES = (
    Difference("REST and DICOMweb answers", "headers X-Hardening-Withheld and X-Hardening-Flagged",
               "the count of items the plugin withheld or flagged (0 on untampered data), for clients "
               "and monitoring"),
    Difference("REST errors of a forwarded call", "no \"Details\" text in Orthanc's error object",
               "the Python plugin API gives a plugin the error code of an Orthanc call, not its detail text; "
               "status, code and message are Orthanc's"),
    Difference("archives and media on Orthanc 1.12 and later", "header X-Content-Type-Options: nosniff",
               "Orthanc adds it to every answer a plugin gives (the plugin verifies an archive before it "
               "answers); Orthanc's own archives are streamed without it"),
    Difference("C-MOVE on Python plugin 4.x (Debian bookworm)",
               "one sub-operation for the whole move; a move Orthanc refuses (nothing matches, no "
               "identifier) ends with a warning (one failed sub-operation) instead of a failure",
               "plugin 4.x only offers RegisterMoveCallback, which asks the plugin for the move only "
               "once Orthanc has announced one sub-operation; plugin 5.0+ (RegisterMoveCallback2/3) "
               "answers as Orthanc does"),

    Difference("instances stored by a job or create-dicom the plugin stands in for (modify, anonymize, "
               "bulk modify and anonymize, POST /tools/create-dicom)",
               "metadata Origin is \"Plugins\" instead of \"RestApi\"; no RemoteIP, no HttpUsername",
               "the plugin hands the body on with orthanc.RestApiPost after checking its depth (a 1 KB body "
               "nested 500 levels deep segfaults Orthanc's JSON reader); Orthanc records a plugin's call as "
               "such, and its REST API refuses to set these system metadata"),
    Difference("POST /modalities/{m}/find-study|find-series|find-instance with Python.AllowThreads (trixie, "
               "forky)", "a body Orthanc refuses with an empty 400 gets 404 \"Unknown resource\"",
               "Orthanc answers these refusals without an error code, and a plugin's forwarded call then "
               "only learns \"Unknown resource\" (every other answer of these routes is Orthanc's)"),
)

# Response headers only the hardened servers send.
HEADERS = ("X-Hardening-Withheld", "X-Hardening-Flagged")
ARCHIVE_HEADERS = ("X-Content-Type-Options",)


def extra_headers(path: str) -> set[str]:
    """The header names (lower case) a hardened answer to ``path`` may have that plain Orthanc's has not."""
    archive = any(part in path for part in ("/archive", "/media", "/create-archive", "/create-media"))
    return {name.lower() for name in (*HEADERS, *(ARCHIVE_HEADERS if archive else ()))}

SUCCESS, WARNING, FAILURE = 0x0000, 0xB000, 0xC000


def single_step_move(plain: tuple[int, int, int, list[str]]) -> tuple[int, int, int, list[str]]:
    """What a C-MOVE answers on Python plugin 4.x, given plain Orthanc's (status, completed,
    failed, instances received): the same instances, in one sub-operation."""
    status, _completed, _failed, received = plain
    if status == SUCCESS:
        return SUCCESS, 1, 0, received
    # Orthanc counts the failed sub-operation both as completed and as failed.
    return WARNING, 1, 1, received


def stored_by_plugin(plain: dict[str, object]) -> dict[str, object]:
    """The origin metadata of an instance a stand-in's call stored, given plain Orthanc's."""
    found = {name: value for name, value in plain.items() if name not in ("RemoteIP", "HttpUsername")}
    if "Origin" in found:
        found["Origin"] = "Plugins"
    return found
