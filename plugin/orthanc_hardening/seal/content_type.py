"""Which content type an attachment is sealed and verified under, whatever Orthanc passes the storage area.

Orthanc names an attachment's type in its index (1 DICOM, 2 DICOM-as-JSON, 3 DICOM until pixel
data, a ``UserContentType`` number from 1024 for attachments added by ``PUT
/{level}/{id}/attachments/{name}``). The Python plugin 4.0 hands the storage area
``0`` (unknown) for every user-defined type instead, so a seal keyed by what the storage area
was given would be looked up under another type by every index-driven check (archives, seal
report, scrub) and raise a false alarm. The plugin seals under the type the index will name:
from ``UserContentType`` and the route that adds the attachment.

Pure: the caller passes the configuration and the request.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

UNKNOWN = 0
FIRST_USER_TYPE = 1024
_ADD_ATTACHMENT = re.compile(r"^/(?:patients|studies|series|instances)/[^/]+/attachments/([^/]+)/?$")


def user_content_types(orthanc_config: Mapping[str, Any]) -> dict[str, int]:
    """Orthanc's ``UserContentType``: ``{"name": number}`` or ``{"name": [number, "mime type"]}``."""
    declared = orthanc_config.get("UserContentType", {})
    types: dict[str, int] = {}
    if not isinstance(declared, Mapping):
        return types
    for name, value in declared.items():
        number = value[0] if isinstance(value, list) and value else value
        if type(number) is int and number >= FIRST_USER_TYPE:
            types[str(name)] = number
    return types


def sealed_content_type(given: int, method: str, uri: str, user_types: Mapping[str, int]) -> int:
    """The content type to seal an attachment under.

    Args:
        given: what Orthanc passed the storage area's ``create``.
        method: the HTTP method of the request being served on this thread (``""`` if none).
        uri: its path.
        user_types: ``user_content_types`` of Orthanc's configuration.

    Returns:
        ``given``, unless it is ``0`` and the request adds an attachment whose name
        ``UserContentType`` declares (or that is a number from 1024): then that type.
    """
    if given != UNKNOWN or method.upper() != "PUT":
        return given
    match = _ADD_ATTACHMENT.match(uri)
    if match is None:
        return given
    name = match.group(1)
    if name in user_types:
        return user_types[name]
    if name.isdigit() and int(name) >= FIRST_USER_TYPE:
        return int(name)
    return given
