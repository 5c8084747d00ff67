"""How two answers are compared: normalise only what must differ between two servers.

Orthanc's ids are equal across servers holding the same data (hashes of UIDs), so they are
compared; what differs by nature is normalised away: times of reception and update, stability
(a timer), job ids, multipart boundaries, ZIP timestamps, the plugin's own verification headers.
"""

from __future__ import annotations

import email.parser
import email.policy
import io
import json
import re
import zipfile
from dataclasses import dataclass, field
from typing import Any

import pydicom
import requests

# JSON keys whose values depend on when, not what (reception time, stability timer, jobs).
# Attachment uuids are random, so each server names the same file differently.
VOLATILE_KEYS = frozenset({"LastUpdate", "ReceptionDate", "IsStable", "CreationTime", "CompletionTime",
                           "EffectiveRuntime", "Timestamp", "ElapsedTime", "EstimatedTimeOfArrival",
                           "ReceptionDateTime", "FileUuid", "Uuid"})
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# Headers a client may see; the rest (Date, Server, connection handling) are transport.
COMPARED_HEADERS = ("content-type", "content-disposition")


# DICOMweb answers name the server's own address (RetrieveURL, BulkDataURI).
BASE_URL = re.compile(r"https?://[^/\s\"]+")


def normalise_json(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: normalise_json(item) for key, item in value.items() if key not in VOLATILE_KEYS}
    if isinstance(value, list):
        return [normalise_json(item) for item in value]
    if isinstance(value, str):
        return BASE_URL.sub("<server>", value)
    return value


def _multipart_parts(content_type: str, body: bytes) -> list[tuple[str, bytes]]:
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    return [(part.get_content_type(), part.get_payload(decode=True) or b"") for part in message.iter_parts()]


def _zip_members(body: bytes) -> list[tuple[str, Any]]:
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        return [(name, _dicomdir(archive.read(name)) if name.upper().endswith("DICOMDIR") else archive.read(name))
                for name in sorted(archive.namelist())]


def _dicomdir(data: bytes) -> Any:
    """A DICOMDIR's records without the UIDs Orthanc makes afresh for each media (file-set,
    media storage SOP instance): what a reader relies on is the directory records."""
    dicomdir = pydicom.dcmread(io.BytesIO(data))
    return [{str(element.tag): _record_value(element) for element in record}
            for record in dicomdir.DirectoryRecordSequence]


# Byte offsets between DICOMDIR records shift with the length of the fresh UIDs in its header;
# what they say is whether a record has a next sibling or children.
_RECORD_OFFSETS = frozenset({0x00041400, 0x00041420})


def _record_value(element: Any) -> str:
    if element.tag in _RECORD_OFFSETS:
        return "linked" if element.value else "none"
    return str(element.value)


@dataclass(frozen=True)
class Answer:
    """What a client can rely on in an HTTP answer, normalised."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: Any
    # Every header's name, compared on its own (``extra_headers``).
    names: frozenset[str] = field(default=frozenset(), compare=False)

    @classmethod
    def of(cls, response: requests.Response) -> Answer:
        content_type = response.headers.get("Content-Type", "")
        headers = tuple((name, _normalise_header(name, response.headers.get(name, ""))) for name in COMPARED_HEADERS)
        body: Any
        if response.status_code >= 400 and response.content.lstrip().startswith(b"{"):
            body = _error_body(response.content)
        elif "json" in content_type:
            try:
                body = normalise_json(response.json())
            except ValueError:
                body = response.content
            if response.url.endswith("/metadata") and isinstance(body, list):
                body = sorted(body, key=_instance_key)
        elif content_type.startswith("multipart/"):
            body = _multipart_parts(content_type, response.content)
        elif content_type.startswith("application/zip"):
            body = _zip_members(response.content)
        else:
            body = response.content
        return cls(response.status_code, headers, body, frozenset(name.lower() for name in response.headers))


def _instance_key(item: Any) -> tuple[str, str]:
    """WADO-RS metadata in instance order: orthanc-dicomweb reads instances on worker threads
    and lists them as they finish, so even plain Orthanc gives no order to rely on."""
    def value(tag: str) -> str:
        found = item.get(tag, {}).get("Value", [""]) if isinstance(item, dict) else [""]
        return str(found[0]) if found else ""

    return value("0020000E"), value("00080018")


def _error_body(content: bytes) -> Any:
    """Orthanc's error object without ``Details``: the Python plugin API passes a forwarded
    call's error code to the plugin, not Orthanc's detail text (a deliberate difference)."""
    try:
        body = json.loads(content)
    except ValueError:
        return content
    if isinstance(body, dict):
        body.pop("Details", None)
    return body


def _normalise_header(name: str, value: str) -> str:
    if name == "content-type" and "boundary=" in value:
        return ";".join(part for part in value.split(";") if "boundary=" not in part).strip()
    if name == "content-disposition":
        return UUID.sub("<attachment uuid>", value)
    return value


# Headers that name the transport or the body's size, not what the answer says.
TRANSPORT_HEADERS = frozenset({"date", "connection", "keep-alive", "content-length", "transfer-encoding"})


def header_differences(plain: Answer, other: Answer) -> set[str]:
    """Header names one answer has and the other has not (transport headers aside)."""
    return set((plain.names ^ other.names) - TRANSPORT_HEADERS)


def describe(answer: Answer, limit: int = 600) -> str:
    text = answer.body if isinstance(answer.body, str) else json.dumps(answer.body, default=repr, sort_keys=True)
    return f"{answer.status} {dict(answer.headers)} {text[:limit]}"
