"""The null plugin: an Orthanc Python plugin in the hardening plugin's positions, doing no security work.

``bench/run.py --floor`` runs a third Orthanc ("floor") with this file as its ``PythonScript``,
same configuration as the hardened one otherwise, to measure what any Python plugin costs in
those positions: the Python plugin's own per-call overhead (Python's lock, each file copied into
a Python ``bytes`` on create and out of one on read) and a storage area written in Python that
writes like Orthanc's own file-system storage. No sealing, no audit, no verification, no
dependency outside the standard library.

It registers, with trivial bodies, the hook kinds the hardening plugin registers for ingest and
retrieve, the same way (``plugin/orthanc_hardening/shell/storage.py``, ``callbacks.py``,
``ingest_limits.py``):

* the storage area: ``RegisterStorageArea3`` (range reads, Python plugin 7.1) where the module has
  it, else ``RegisterStorageArea``. Files go to ``StorageDirectory/xx/yy/uuid`` as Orthanc's
  ``FilesystemStorage`` puts them, written then ``fdatasync``'ed (as Orthanc's ``WriteFile``)
  when ``SyncStorageArea`` is true (its default); a range read reads only that range; remove
  deletes the file and the ``xx/yy`` directories it leaves empty;
* an HTTP filter answering ``True``, a C-STORE filter answering 0, a received-instance callback
  answering ``KEEP_AS_IS`` (it receives each REST/STOW/WebDAV file's bytes, as the hardening one
  does), and a change callback that does nothing.

Not registered: the hardening plugin's REST routes (query verification, archives), its C-FIND and
C-MOVE handlers; the rows that use those compare Orthanc's own handling there.

``bench/floor_split.py`` splits the floor with an optional ``"NullPlugin"`` configuration section:
``"StorageArea": false`` (hooks only), ``"Hooks": false`` (storage area only), ``"SyncDerived":
false`` (the "DICOM until pixel data" attachment, content type 3, which Orthanc asks a storage
area without range reads for besides the file, written but not flushed, as the hardening plugin
does), ``"Flush": "fsync"`` (``fsync`` instead of Orthanc's ``fdatasync``). Without the section
everything is on, flushed with ``fdatasync``.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

import orthanc

ROOT = ""  # StorageDirectory, absolute
SYNC = True  # SyncStorageArea
SYNC_DERIVED = True  # NullPlugin.SyncDerived
FLUSH = os.fdatasync  # as Orthanc's SystemToolbox::WriteFile; NullPlugin.Flush "fsync": os.fsync
DICOM_UNTIL_PIXEL_DATA = 3


def _path(uuid: str) -> str:
    return os.path.join(ROOT, uuid[0:2], uuid[2:4], uuid)


def create(uuid: str, content_type: int, data: bytes) -> None:
    path = _path(uuid)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if SYNC and (SYNC_DERIVED or content_type != DICOM_UNTIL_PIXEL_DATA):
            FLUSH(fd)
    finally:
        os.close(fd)


def read(uuid: str, content_type: int) -> bytes:
    with open(_path(uuid), "rb", buffering=0) as handle:
        return handle.readall()


def remove(uuid: str, content_type: int) -> None:
    path = _path(uuid)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    for directory in (os.path.dirname(path), os.path.dirname(os.path.dirname(path))):
        try:
            os.rmdir(directory)
        except OSError:
            break


# RegisterStorageArea3 (Python plugin 7.1): the same, with custom data (none) and range reads.

def create_v3(uuid: str, content_type: int, compression_type: int, content: bytes,
              dicom_instance: Any) -> tuple[int, bytes | None]:
    create(uuid, content_type, content)
    return 0, None


def read_range(uuid: str, content_type: int, range_start: int, size: int,
               custom_data: bytes) -> tuple[int, bytes]:
    fd = os.open(_path(uuid), os.O_RDONLY)
    try:
        data = os.pread(fd, size, range_start)
    finally:
        os.close(fd)
    if len(data) != size:
        raise OSError(f"attachment {uuid}: {len(data)} of {size} bytes at {range_start}")
    return 0, data


def remove_v3(uuid: str, content_type: int, custom_data: bytes) -> int:
    remove(uuid, content_type)
    return 0


def http_filter(uri: str, **request: Any) -> bool:
    return True


def cstore_filter(instance: Any) -> int:
    return 0


def received(dicom: bytes, origin: int) -> tuple[Any, bytes | None]:
    return orthanc.ReceivedInstanceAction.KEEP_AS_IS, None


def on_change(change_type: int, level: int, resource_id: str) -> None:
    pass


def install() -> None:
    global ROOT, SYNC, SYNC_DERIVED, FLUSH
    config = json.loads(orthanc.GetConfiguration())
    options = config.get("NullPlugin", {})
    ROOT = os.path.abspath(str(config.get("StorageDirectory", "OrthancStorage")))
    SYNC = bool(config.get("SyncStorageArea", True))
    SYNC_DERIVED = bool(options.get("SyncDerived", True))
    FLUSH = os.fsync if options.get("Flush") == "fsync" else os.fdatasync
    ranges = callable(getattr(orthanc, "RegisterStorageArea3", None))
    if options.get("StorageArea", True):
        os.makedirs(ROOT, exist_ok=True)
        if ranges:
            orthanc.RegisterStorageArea3(create_v3, read_range, remove_v3)
        else:
            orthanc.RegisterStorageArea(create, read, remove)
    if options.get("Hooks", True):
        orthanc.RegisterIncomingHttpRequestFilter(http_filter)
        orthanc.RegisterIncomingCStoreInstanceFilter(cstore_filter)
        orthanc.RegisterReceivedInstanceCallback(received)
        orthanc.RegisterOnChangeCallback(on_change)
    orthanc.LogWarning(f"null plugin: storage area {options.get('StorageArea', True)} in {ROOT} "
                       f"(sync {SYNC} by {FLUSH.__name__}, derived header sync {SYNC_DERIVED}, range reads {ranges}), "
                       f"hooks {options.get('Hooks', True)}")


install()
