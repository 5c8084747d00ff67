"""The ``orthanc`` module as the shell uses it, on every supported Python plugin (4.0 to 7.1).

Two things the shell must get right on every target live here, once:

* **Capabilities.** What the running Python plugin offers is detected once, from the names the
  module exports, never from version strings: the two-argument ``RestOutput.SendHttpStatus``
  (Python plugin 4.2 fixed its signature, in the same release that added
  ``RegisterMoveCallback2``), the storage area with range reads and custom data
  (``RegisterStorageArea3``, 7.1), the DICOM connection in the C-FIND and C-MOVE callbacks
  (``RegisterFindCallback2``, ``RegisterMoveCallback3``, 7.0), ``EmitAuditLog`` and
  ``ExtendOrthancExplorer2``.
* **Pinned callbacks.** The Python plugin frees the callables it was given while Orthanc
  finalises it, without holding Python's lock (measured on Orthanc 1.12.7 / plugin 5.0 and
  1.13.0 / 7.1: a registered closure or lambda whose only reference is the plugin's makes every
  stop a segmentation fault; a module-level function does not, because the module still
  holds it). ``PinnedOrthanc`` keeps a reference to every callable registered through it for
  the life of the process, so the plugin's release never deallocates one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Every callable ever registered with Orthanc, kept until the interpreter itself ends (see
# the module docstring). Module-level on purpose: it must outlive any adapter object.
_PINNED: list[Any] = []


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What the running Python plugin offers (detected from the module's names)."""

    two_argument_status: bool = False
    storage_area_ranges: bool = False
    find_connection: bool = False
    move_connection: bool = False
    emit_audit_log: bool = False
    explorer2: bool = False
    thread_names: bool = False

    @classmethod
    def detect(cls, module: Any) -> Capabilities:
        """Detect the capabilities of an ``orthanc`` module (or of a test fake)."""

        def has(name: str) -> bool:
            return callable(getattr(module, name, None))

        return cls(
            two_argument_status=has("RegisterMoveCallback2"),
            storage_area_ranges=has("RegisterStorageArea3"),
            find_connection=has("RegisterFindCallback2"),
            move_connection=has("RegisterMoveCallback3"),
            emit_audit_log=has("EmitAuditLog"),
            explorer2=has("ExtendOrthancExplorer2"),
            thread_names=has("SetCurrentThreadName"),
        )


class PinnedOrthanc:
    """The ``orthanc`` module, with every ``Register*`` call pinning the callables it is given.

    Every other attribute is the module's own.
    """

    def __init__(self, module: Any) -> None:
        self.module = module
        self.capabilities = Capabilities.detect(module)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self.module, name)
        if not name.startswith("Register") or not callable(value):
            return value

        def register(*args: Any, **kwargs: Any) -> Any:
            _PINNED.extend(arg for arg in (*args, *kwargs.values()) if callable(arg))
            return value(*args, **kwargs)

        return register


def unwrap(orthanc: Any) -> Any:
    """The plain module behind a ``PinnedOrthanc`` (or ``orthanc`` itself)."""
    return orthanc.module if isinstance(orthanc, PinnedOrthanc) else orthanc
