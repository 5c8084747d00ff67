"""The plugin's running state: the Orthanc module, configuration, audit sink, clock, lockdown,
and the chains that ``shell/callbacks.py`` runs from the one callback of each kind.

Built once by ``shell.install``. Features append their gatekeepers and observers to the chains;
they receive the objects they depend on as typed arguments, never from here (``shell/plugin.py``).
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from orthanc_hardening.access.policy import AccessPolicy, policy_of
from orthanc_hardening.audit.sink import AuditSink
from orthanc_hardening.config import HardeningConfig
from orthanc_hardening.identity import HttpRequest, Requester
from orthanc_hardening.shell.inflight import InFlightRequests
from orthanc_hardening.shell.metrics import Metrics
from orthanc_hardening.shell.orthanc_api import Capabilities, OrthancApi, capabilities_of

logger = logging.getLogger(__name__)

# A gatekeeper over an HTTP request: returns None to let it through, raises to refuse it.
HttpGate = Callable[[HttpRequest], None]
# An observer of HTTP requests (metrics refreshers): its errors never refuse a request.
HttpObserver = Callable[[HttpRequest], None]
# A gatekeeper over an incoming C-STORE instance: returns None to accept it, raises to refuse.
CStoreGate = Callable[[Any], None]
# An observer of Orthanc changes: (change_type, resource_type, resource_id).
ChangeObserver = Callable[[int, int, str], None]


def _version_at_least(version: str, minimum: tuple[int, int]) -> bool:
    """Whether a plugin version such as ``5.0`` (``mainline``: the newest) is at least ``minimum``."""
    parts = version.split(".")
    if not all(part.isdigit() for part in parts[:2]) or len(parts) < 2:
        return version == "mainline"
    return (int(parts[0]), int(parts[1])) >= minimum


def utc_now() -> datetime:
    """The real clock, timezone-aware UTC."""
    return datetime.now(timezone.utc)


@dataclass
class Runtime:
    """What every shell callback needs, passed explicitly."""

    orthanc: OrthancApi
    config: HardeningConfig
    orthanc_config: Mapping[str, Any]
    metrics: Metrics
    audit: AuditSink
    clock: Callable[[], datetime] = utc_now
    # Ids of the critical posture checks that failed: non-empty means locked down (enforce).
    lockdown: tuple[str, ...] = ()
    http_gates: list[HttpGate] = field(default_factory=list)
    http_observers: list[HttpObserver] = field(default_factory=list)
    cstore_gates: list[CStoreGate] = field(default_factory=list)
    change_observers: list[ChangeObserver] = field(default_factory=list)
    stop_actions: list[Callable[[], None]] = field(default_factory=list)
    # The HTTP requests in flight, set by the HTTP filter, so that a storage read knows who
    # asked, on the request's thread or on Orthanc 1.13's loader threads (shell/inflight.py).
    in_flight: InFlightRequests = field(default_factory=InFlightRequests)
    # Who holds which permission (``access/policy.py``), from the configuration.
    access: AccessPolicy = field(init=False)
    # Patterns of the plugin routes registered through ``shell/rest.register``: their callbacks
    # check permissions themselves and answer a refusal with 403 JSON (``shell/permissions.py``).
    checked_routes: list[re.Pattern[str]] = field(default_factory=list)
    # Held by a plugin thread's calls into Orthanc's index (the manifest thread) and by the
    # stand-ins whose Orthanc call deletes or stores (their storage callbacks run inside Orthanc's
    # index transaction): on Python plugin 4.0 a plugin thread waiting in an orthanc.* call keeps
    # Python's lock, which such a callback needs — seen as a DELETE that never answered.
    index_writes: threading.RLock = field(default_factory=threading.RLock)
    _stop_lock: threading.Lock = field(default_factory=threading.Lock)
    _stopped: bool = False
    _threads_released: bool | None = None

    def __post_init__(self) -> None:
        self.access = policy_of(self.config)

    @property
    def capabilities(self) -> Capabilities:
        """What the running Python plugin offers (``shell/orthanc_api.py``)."""
        return capabilities_of(self.orthanc)

    def threads_released(self) -> bool:
        """Whether the Python plugin lets Orthanc's threads run Python while the plugin waits for
        an Orthanc call (``Python.AllowThreads``, Python plugin 4.3 and later).

        Only then may a callback wait for a call whose work runs the plugin's storage area on
        another Orthanc thread (a synchronous archive job); otherwise that thread waits for
        Python's lock, held by the waiting callback, forever.
        """
        if self._threads_released is None:
            python = self.orthanc_config.get("Python", {})
            wanted = isinstance(python, Mapping) and python.get("AllowThreads") is True
            version = "0"
            if wanted:
                try:
                    version = str(json.loads(self.orthanc.RestApiGet("/plugins/python")).get("Version", "0"))
                except Exception:
                    logger.warning("the Python plugin's version cannot be read; assuming it keeps Python's lock")
            self._threads_released = wanted and _version_at_least(version, (4, 3))
        return self._threads_released

    def stop(self) -> None:
        """Run the stop actions once, newest first (a feature stops before what it builds on).

        Called on Orthanc's ``ORTHANC_STOPPED`` change and, should Orthanc finalise the plugin
        without one (a failed start), when the interpreter exits: every plugin thread is
        stopped and joined before the Python plugin finalises the interpreter.
        """
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
        for action in reversed(self.stop_actions):
            try:
                action()
            except Exception:
                logger.exception("stop action %s failed", getattr(action, "__name__", action))

    def remember_request(self, request: HttpRequest) -> None:
        """Record ``request`` as the one this thread is serving (ends its previous one)."""
        self.in_flight.begin(threading.get_ident(), request)

    def current_request(self) -> HttpRequest | None:
        """Return the HTTP request this thread serves, if the HTTP filter saw one."""
        return self.in_flight.on_thread(threading.get_ident())

    def request_for_read(self, series_uid: str) -> tuple[int, HttpRequest] | None:
        """``(HTTP thread, request)`` a storage read of an instance of ``series_uid`` serves."""
        return self.in_flight.for_read(threading.get_ident(), series_uid)

    def current_requester(self, default: Requester, series_uid: str = "") -> Requester:
        """Return who is behind the work on this thread (or this read), or ``default`` when unknown."""
        found = self.request_for_read(series_uid)
        return found[1].requester if found is not None else default
