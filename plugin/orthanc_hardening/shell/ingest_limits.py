"""Parser bombs refused before they reach Orthanc's core, on every ingest path.

* C-STORE: a gate of the C-STORE filter (``runtime.cstore_gates``) checks the received file
  (``dicom_limits.check_dicom_limits``); a refusal is DIMSE 0xC000 (cannot understand) and a
  Security Alert. Without it, Orthanc 1.10.1 stores the file and crashes at its first
  ``GET /instances/{id}/tags``.
* Every other path (REST ``POST /instances`` and the files of a zip upload, DICOMweb STOW-RS,
  WebDAV, Lua, other plugins): the received-instance callback. Orthanc calls it with the raw
  bytes of each file *before* its core parses them (``ServerContext::Store``, from 1.10.0 on),
  which is where a 50-level nesting segfaults 1.10.1. A refused file is replaced by bytes that
  are not DICOM (``REFUSED``), so Orthanc's own parser refuses it the way it refuses any
  unreadable file (REST 400 ``Bad file format``, STOW-RS a failed instance, WebDAV an error),
  stores nothing, and the Security Alert names the problem. A refusal never relies on an
  exception: in the received-instance callback an exception would let the file through.

The check runs on a thread of its own with a large stack (``on_large_stack``): pydicom parses
nested sequences recursively, and on a civetweb worker's small stack a 20,000-level bomb
overflowed the C stack inside Python (a segfault of Orthanc, before Python's recursion limit).
Waiting for that thread releases Python's lock.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from orthanc_hardening.audit.event import Transport
from orthanc_hardening.dicom_limits import check_dicom_limits, may_nest_deeper
from orthanc_hardening.identity import Requester
from orthanc_hardening.shell.ahead import Ahead
from orthanc_hardening.shell.guard import alert
from orthanc_hardening.shell.runtime import Runtime

logger = logging.getLogger(__name__)

# What Orthanc parses instead of a refused file: not DICOM, so its own "Bad file format".
REFUSED = b"refused by the hardening plugin"
_DICOM_ORIGIN = 2  # orthanc.InstanceOrigin.DICOM_PROTOCOL: C-STORE, checked by its filter
CHECK_STACK_BYTES = 64 << 20
_stack_lock = threading.Lock()
_ORIGINS = {1: "unknown", 2: "DICOM", 3: "REST", 4: "plugin", 5: "Lua", 6: "WebDAV"}


def on_large_stack(check: Callable[[], None]) -> BaseException | None:
    """Run ``check`` on a new thread with a ``CHECK_STACK_BYTES`` stack; return what it raised."""
    outcome: list[BaseException | None] = [RuntimeError("the check did not run")]

    def run() -> None:
        try:
            check()
            outcome[0] = None
        except BaseException as exc:  # handed back to the caller
            outcome[0] = exc

    with _stack_lock:
        previous = threading.stack_size(CHECK_STACK_BYTES)
        try:
            worker = threading.Thread(target=run, name="dicom-limits", daemon=True)
            worker.start()
        finally:
            threading.stack_size(previous)
    worker.join()
    return outcome[0]


def check_received(data: bytes) -> None:
    """``check_dicom_limits`` on a large stack when the file may nest deep (most files: no parsing).

    Raises:
        HostileInputError: the file nests too deep.
    """
    if not may_nest_deeper(data):
        return
    failure = on_large_stack(lambda: check_dicom_limits(data))
    if failure is not None:
        raise failure


def received_verdict(data: bytes) -> str | None:
    """Why a received file must be refused (``None``: hand it to Orthanc). Never raises.

    Any failure of the check itself refuses the file (fail closed).
    """
    try:
        check_received(data)
    except Exception as exc:  # every failure refuses (an exception would let it in)
        return str(exc) or type(exc).__name__
    return None


def install(runtime: Runtime, ahead: Ahead | None = None) -> None:
    """Register the C-STORE gate and the received-instance check.

    ``ahead``: a file that passes is offered to it, so that its hash and identity are prepared
    while Orthanc parses it (``shell/ahead.py``).
    """

    def cstore_limits(instance: Any) -> None:
        check_received(bytes(instance.GetInstanceData()))

    runtime.cstore_gates.insert(0, cstore_limits)

    orthanc: Any = runtime.orthanc
    actions = orthanc.ReceivedInstanceAction

    def received(dicom: bytes, origin: int) -> tuple[Any, bytes | None]:
        if int(origin) == _DICOM_ORIGIN:
            # C-STORE: checked by its filter (``cstore_limits``); not offered (``shell/ahead.py``).
            return actions.KEEP_AS_IS, None
        data = bytes(dicom)
        reason = received_verdict(data)
        if reason is None:
            if ahead is not None:
                ahead.offer(data)
            return actions.KEEP_AS_IS, None
        try:
            current = runtime.current_request()
            who = current.requester if current is not None else Requester(transport=Transport.INTERNAL)
            route = current.uri if current is not None else "ingest"
            alert(runtime, who, f"{_ORIGINS.get(int(origin), 'unknown')} upload {route}", reason)
        except Exception:  # the refusal stands whatever the audit does
            logger.exception("refused upload could not be reported: %s", reason)
        logger.warning("upload refused before Orthanc parses it: %s", reason)
        return actions.MODIFY, REFUSED

    orthanc.RegisterReceivedInstanceCallback(received)
