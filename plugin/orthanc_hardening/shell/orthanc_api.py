"""The ``orthanc`` module as the shell uses it, on every supported Python plugin (4.0 to 7.1).

* ``OrthancApi``: the functions of the module the shell calls (every name exists in Python
  plugin 4.0; ``tests/integration/test_fake_api.py`` checks them, and the unit tests' fake,
  against a real Orthanc). Names only newer plugins have are reached through ``Capabilities``.
* ``Capabilities``: what the running Python plugin offers, detected once from the names the
  module exports, never from version strings: the two-argument ``RestOutput.SendHttpStatus``
  (Python plugin 4.2 fixed its signature, in the same release that added
  ``RegisterMoveCallback2``), the storage area with range reads and custom data
  (``RegisterStorageArea3``, 7.1), the DICOM connection in the C-FIND and C-MOVE callbacks
  (``RegisterFindCallback2``, ``RegisterMoveCallback3``, 7.0), ``EmitAuditLog`` and
  ``SetCurrentThreadName``.
* ``PinnedOrthanc``: the Python plugin frees the callables it was given while Orthanc
  finalises it, without holding Python's lock (measured on Orthanc 1.12.7 / plugin 5.0 and
  1.13.0 / 7.1: a registered closure whose only reference is the plugin's makes every stop a
  segmentation fault; a module-level function does not, because the module still holds it).
  ``PinnedOrthanc`` keeps a reference to every callable registered through it for the life of
  the process, so the plugin's release never deallocates one.
* ``core_call`` and ``OrthancCoreError``: calls into Orthanc's own REST API (``RestApi*``) whose
  error, Orthanc's ``ErrorCode``, becomes the HTTP status Orthanc itself would answer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

T = TypeVar("T")

# Every callable ever registered with Orthanc, kept until the interpreter itself ends (see
# the module docstring). Module-level on purpose: it must outlive any adapter object.
_PINNED: list[Any] = []


class OrthancApi(Protocol):
    """The functions of the ``orthanc`` module the shell calls (all in Python plugin 4.0)."""

    ChangeType: Any
    ResourceType: Any
    MetricsType: Any

    def GetConfiguration(self) -> str: ...
    def LogInfo(self, message: str) -> None: ...
    def LogWarning(self, message: str) -> None: ...
    def LogError(self, message: str) -> None: ...
    def RegisterRestCallback(self, pattern: str, callback: Callable[..., None]) -> None: ...
    def RegisterIncomingHttpRequestFilter(self, callback: Callable[..., bool]) -> None: ...
    def RegisterIncomingCStoreInstanceFilter(self, callback: Callable[[Any], int]) -> None: ...
    def RegisterOnChangeCallback(self, callback: Callable[[int, int, str], None]) -> None: ...
    def RegisterStorageArea(self, create: Callable[..., Any], read: Callable[..., Any],
                            remove: Callable[..., Any]) -> None: ...
    def RegisterFindCallback(self, callback: Callable[..., None]) -> None: ...
    def RegisterMoveCallback(self, callback: Callable[..., None]) -> None: ...
    def RestApiGet(self, uri: str) -> Any: ...
    def RestApiPost(self, uri: str, body: Any) -> Any: ...
    def RestApiPut(self, uri: str, body: Any) -> Any: ...
    def RestApiDelete(self, uri: str) -> Any: ...
    def SetMetricsValue(self, name: str, value: float, kind: Any) -> None: ...
    def ExtendOrthancExplorer(self, javascript: str) -> None: ...
    def SetRootUri(self, uri: str) -> None: ...
    def SetDescription(self, description: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What the running Python plugin offers (detected from the module's names)."""

    two_argument_status: bool = False
    storage_area_ranges: bool = False
    find_connection: bool = False
    move_connection: bool = False
    move_steps: bool = False
    emit_audit_log: bool = False
    thread_names: bool = False
    resource_finder: bool = False
    loader_threads: bool = False
    # Orthanc 1.12.2 and later share the plugin context (a reference count); before, it is a lock
    # held while a plugin reads an instance, which a nested call from the storage area deadlocks.
    shared_plugin_context: bool = False
    # The DICOMweb plugin paired with Orthanc 1.12 and later (Debian trixie and forky, the Docker
    # images) hands each STOW-RS part to Orthanc unparsed, through the received-instance callback;
    # the one paired with 1.10 (Debian bookworm) parses it with DCMTK first (measured).
    stow_reaches_received_callback: bool = False

    @classmethod
    def detect(cls, module: Any) -> Capabilities:
        """Detect the capabilities of an ``orthanc`` module (or of a test fake)."""

        def has(name: str) -> bool:
            return callable(getattr(module, name, None))

        def orthanc_at_least(major: int, minor: int, revision: int) -> bool:
            check = getattr(module, "CheckVersionAdvanced", None)
            return bool(check(major, minor, revision)) if callable(check) else False

        return cls(
            two_argument_status=has("RegisterMoveCallback2"),
            storage_area_ranges=has("RegisterStorageArea3"),
            find_connection=has("RegisterFindCallback2"),
            move_connection=has("RegisterMoveCallback3"),
            move_steps=has("RegisterMoveCallback2"),
            emit_audit_log=has("EmitAuditLog"),
            thread_names=has("SetCurrentThreadName"),
            # Orthanc 1.12.5 answers C-FIND and /tools/find with its resource finder (requested
            # tags, computed counters); Orthanc 1.13.0 reads files for it on loader threads.
            resource_finder=orthanc_at_least(1, 12, 5),
            loader_threads=orthanc_at_least(1, 13, 0),
            shared_plugin_context=orthanc_at_least(1, 12, 2),
            stow_reaches_received_callback=orthanc_at_least(1, 12, 0),
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


def capabilities_of(orthanc: Any) -> Capabilities:
    """The capabilities of ``orthanc`` (detected once by ``PinnedOrthanc``, else now)."""
    detected = getattr(orthanc, "capabilities", None)
    return detected if isinstance(detected, Capabilities) else Capabilities.detect(orthanc)


# -- Orthanc's own errors ---------------------------------------------------------------------

# Orthanc's ErrorCode (OrthancCPlugin.h ``OrthancPluginErrorCode``) -> the HTTP status Orthanc
# answers with it; any other code is a 500.
ORTHANC_ERROR_STATUS = {
    0: 200, 2: 501, 3: 400, 5: 400, 6: 400, 7: 404, 8: 400, 12: 400, 13: 404, 15: 400, 17: 404,
    19: 507, 21: 404, 23: 400, 24: 400, 28: 400, 29: 401, 33: 400, 34: 406, 36: 503,
    41: 416, 42: 503, 43: 409, 45: 403, 46: 409,
    # POST /tools/create-dicom refusals (CreateDicomNotString ... CreateDicomParentEncoding); 27
    # (UnknownDicomTag) is not listed: Orthanc answers it with 500 (measured on 1.10.1).
    **dict.fromkeys(range(2019, 2027), 400),
}


# Orthanc's description of the error codes the plugin answers itself (OrthancCPlugin.h).
ORTHANC_ERROR_DESCRIPTION = {
    -1: "Internal error", 1: "Error encountered within the plugin engine", 3: "Parameter out of range",
    7: "Accessing an inexistent item", 8: "Bad request", 13: "Inexistent file", 15: "Bad file format",
    17: "Unknown resource", 20: "Corrupted file (e.g. inconsistent MD5 hash)",
}


class OrthancCoreError(Exception):
    """Orthanc's core refused a call the plugin forwarded (``RestApi*``), or would refuse it.

    ``code`` is Orthanc's ``ErrorCode`` (``-1`` when unknown), ``status`` the HTTP status Orthanc
    answers with it, ``description`` Orthanc's text for the code; the message is the detail
    (the description itself for a forwarded call: the Python plugin passes no more).
    """

    def __init__(self, status: int, detail: str, code: int = -1) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code

    @property
    def description(self) -> str:
        return ORTHANC_ERROR_DESCRIPTION.get(self.code, str(self))

    @classmethod
    def of(cls, code: int, detail: str = "") -> OrthancCoreError:
        """The error Orthanc answers with ``code`` (and ``detail``, when it has one)."""
        return cls(ORTHANC_ERROR_STATUS.get(code, 500), detail or ORTHANC_ERROR_DESCRIPTION.get(code, ""), code)


def core_call(function: Callable[..., T], *args: Any) -> T:
    """Call ``orthanc.RestApi*``; Orthanc's refusal becomes ``OrthancCoreError`` with its status.

    Raises:
        OrthancCoreError: Orthanc refused (unknown resource, bad request, …).
    """
    try:
        return function(*args)
    except Exception as exc:
        code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else -1
        detail = str(exc.args[1]) if len(exc.args) > 1 else "Orthanc refused the request"
        raise OrthancCoreError(ORTHANC_ERROR_STATUS.get(code, 500), detail, code) from exc

