"""Orthanc's on-disk storage layout, kept as is so that an existing archive keeps working.

Orthanc's ``FilesystemStorage`` stores attachment ``uuid`` at
``StorageDirectory/uuid[0:2]/uuid[2:4]/uuid`` (no extension, raw bytes when
``StorageCompression`` is off). Attachment uuids are Orthanc-made UUIDs; anything else is
refused so that a uuid can never name a path outside the storage directory. No I/O here.
"""

from __future__ import annotations

import re
from pathlib import Path

_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def attachment_path(root: Path, uuid: str) -> Path:
    """The file of attachment ``uuid`` under the storage directory ``root``.

    Raises:
        ValueError: ``uuid`` is not a lower-case UUID (a caller bug or a hostile value).
    """
    if not _UUID.match(uuid):
        raise ValueError(f"not an attachment uuid: {uuid[:60]!r}")
    return Path(root) / uuid[0:2] / uuid[2:4] / uuid


def attachment_file(root: str, uuid: str) -> str:
    """``attachment_path`` as a string, for the storage area's hot paths (no ``pathlib`` objects).

    Args:
        root: the storage directory, absolute, as ``str(Path)`` gives it.

    Raises:
        ValueError: ``uuid`` is not a lower-case UUID (a caller bug or a hostile value).
    """
    if not _UUID.match(uuid):
        raise ValueError(f"not an attachment uuid: {uuid[:60]!r}")
    return f"{root.rstrip('/')}/{uuid[0:2]}/{uuid[2:4]}/{uuid}"
