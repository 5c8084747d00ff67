"""The plugin's running state: configuration, stores and the hook chains the shell dispatches to.

Built once by ``shell.install``. Feature installers (``tls_gate``, ``storage``, ``audit_hooks``…)
append their gatekeepers to the chains here; ``shell/hooks.py`` registers exactly one Orthanc
callback of each kind and runs the chain. The ``orthanc`` module is injected, never imported.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from orthanc_hardening.audit.sink import AuditSink, MemoryAuditSink
from orthanc_hardening.config import HardeningConfig
from orthanc_hardening.identity import HttpRequest, Requester
from orthanc_hardening.shell.metrics import Metrics

# A gatekeeper over an HTTP request: returns None to let it through, raises
# AccessDeniedError (or any HardeningError) to refuse it.
HttpGate = Callable[[HttpRequest], None]
# A gatekeeper over an incoming C-STORE instance: returns 0 to accept or a DIMSE status.
CStoreGate = Callable[[Any], int]
# An observer of Orthanc changes: (change_type, resource_type, resource_id).
ChangeObserver = Callable[[int, int, str], None]


def utc_now() -> datetime:
    """The real clock, timezone-aware UTC."""
    return datetime.now(timezone.utc)


@dataclass
class Runtime:
    """Everything the shell's callbacks need, passed explicitly."""

    orthanc: Any
    config: HardeningConfig
    orthanc_config: Mapping[str, Any]
    metrics: Metrics
    audit: AuditSink = field(default_factory=MemoryAuditSink)
    clock: Callable[[], datetime] = utc_now
    # Ids of the critical posture checks that failed: non-empty means locked down (enforce).
    lockdown: tuple[str, ...] = ()
    http_gates: list[HttpGate] = field(default_factory=list)
    cstore_gates: list[CStoreGate] = field(default_factory=list)
    change_observers: list[ChangeObserver] = field(default_factory=list)
    stop_actions: list[Callable[[], None]] = field(default_factory=list)
    services: dict[str, Any] = field(default_factory=dict)
    # The HTTP request being served on each native thread, set by the HTTP filter so that a
    # storage read on the same thread knows who asked (threading.local does not survive
    # between Orthanc callbacks; see ORTHANC-NOTES.md).
    _requests: dict[int, HttpRequest] = field(default_factory=dict)
    _requests_lock: threading.Lock = field(default_factory=threading.Lock)

    def remember_request(self, request: HttpRequest) -> None:
        """Record ``request`` as the one this thread is serving (overwrites stale entries)."""
        with self._requests_lock:
            self._requests[threading.get_ident()] = request

    def current_request(self) -> HttpRequest | None:
        """Return the HTTP request this thread serves, if the HTTP filter saw one."""
        with self._requests_lock:
            return self._requests.get(threading.get_ident())

    def current_requester(self, default: Requester) -> Requester:
        """Return who is behind the work on this thread, or ``default`` when unknown."""
        request = self.current_request()
        return request.requester if request is not None else default
