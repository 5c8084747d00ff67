"""Attachment files in Orthanc's own layout (``StorageDirectory/xx/yy/uuid``, ``seal/layout.py``).

``write_file`` writes where Orthanc would, fsync'ed when Orthanc's ``SyncStorageArea`` is on;
``read_file`` reads a whole file once; ``remove_file`` deletes it and the directories it leaves
empty. The caller decides when (after the seal row is committed, before serving, …).
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def write_file(final: str | Path, data: bytes, sync: bool) -> None:
    """Write an attachment, fsync'ed when ``sync``.

    The seal row is committed before: a crash while writing leaves a partial file with a seal
    row that Orthanc never indexed, which start-up reconciliation removes.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    try:
        fd = os.open(final, flags, 0o600)
    except FileNotFoundError:
        # The xx/yy directory does not exist yet (the first of its 1/65536 share of the files).
        os.makedirs(os.path.dirname(final), exist_ok=True)
        fd = os.open(final, flags, 0o600)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def read_file(path: str | Path) -> bytes:
    """The whole file, read once into one ``bytes`` (sized by ``fstat``, no extra copy)."""
    with open(path, "rb", buffering=0) as handle:
        return handle.readall()


def unlink(path: str | Path) -> None:
    """Delete ``path`` if it exists."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def remove_file(path: Path) -> None:
    """Delete an attachment file and the ``xx/yy`` directories it leaves empty."""
    unlink(path)
    for directory in (path.parent, path.parent.parent):
        try:
            directory.rmdir()
        except OSError:
            break


def list_storage(root: Path) -> list[str]:
    """The attachment uuids present in Orthanc's storage layout (``xx/yy/uuid``)."""
    found: list[str] = []
    if not root.is_dir():
        return found
    for first in os.scandir(root):
        if not first.is_dir() or len(first.name) != 2:
            continue
        for second in os.scandir(first.path):
            if not second.is_dir() or len(second.name) != 2:
                continue
            for entry in os.scandir(second.path):
                if entry.is_file() and _UUID.match(entry.name) and entry.name.startswith(first.name + second.name):
                    found.append(entry.name)
    return found
