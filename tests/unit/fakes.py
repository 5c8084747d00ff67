"""A fake of the Python plugin's ``orthanc`` module, for driving the shell in unit tests.

It has only names the real module (orthanc-python 4.0) has; ``tests/integration/
test_fake_api.py`` checks that inside a real Orthanc. Extend it with real names only.
"""

from __future__ import annotations

import enum
import json
import threading
from collections.abc import Callable
from typing import Any

from orthanc_hardening.audit.event import AuditEvent


class ChangeType(enum.IntEnum):
    """The values of ``orthanc.ChangeType`` in Orthanc 1.10 (OrthancPluginChangeType)."""

    COMPLETED_SERIES = 0
    DELETED = 1
    NEW_CHILD_INSTANCE = 2
    NEW_INSTANCE = 3
    NEW_PATIENT = 4
    NEW_SERIES = 5
    NEW_STUDY = 6
    STABLE_PATIENT = 7
    STABLE_SERIES = 8
    STABLE_STUDY = 9
    ORTHANC_STARTED = 10
    ORTHANC_STOPPED = 11
    UPDATED_ATTACHMENT = 12
    UPDATED_METADATA = 13
    UPDATED_PEERS = 14
    UPDATED_MODALITIES = 15
    JOB_SUBMITTED = 16
    JOB_SUCCESS = 17
    JOB_FAILURE = 18


class ResourceType(enum.IntEnum):
    """The values of ``orthanc.ResourceType`` (OrthancPluginResourceType)."""

    PATIENT = 0
    STUDY = 1
    SERIES = 2
    INSTANCE = 3
    NONE = 4


class MetricsType(enum.IntEnum):
    """The values of ``orthanc.MetricsType``."""

    DEFAULT = 0
    TIMER = 1


class FakeOutput:
    """Records what a REST callback answered (``orthanc.RestOutput``)."""

    def __init__(self) -> None:
        self.status: int | None = None
        self.body: bytes | str | None = None
        self.content_type: str | None = None
        self.headers: dict[str, str] = {}
        self.allowed: str | None = None

    def AnswerBuffer(self, body: bytes | str, content_type: str) -> None:
        self.status, self.body, self.content_type = 200, body, content_type

    def SendHttpStatus(self, status: int, body: str, size: int) -> None:
        assert isinstance(body, str) and size == len(body.encode("utf-8"))
        self.status, self.body = status, body
        self.content_type = self.headers.get("Content-Type")

    def SendHttpStatusCode(self, status: int) -> None:
        self.status, self.body = status, ""

    def SendMethodNotAllowed(self, allowed: str) -> None:
        self.status, self.allowed = 405, allowed

    def SetHttpHeader(self, name: str, value: str) -> None:
        self.headers[name] = value

    def json(self) -> Any:
        assert self.body is not None
        return json.loads(self.body)


class ReceivedInstanceAction:
    """``orthanc.ReceivedInstanceAction``."""

    KEEP_AS_IS = 1
    MODIFY = 2
    DISCARD = 3


class FakeOrthanc:
    """Records registrations; answers ``GetConfiguration`` and ``RestApi*`` from dicts."""

    ChangeType = ChangeType
    ReceivedInstanceAction = ReceivedInstanceAction
    ResourceType = ResourceType
    MetricsType = MetricsType

    def __init__(self, configuration: dict[str, Any] | None = None) -> None:
        self.configuration = configuration or {}
        self.routes: dict[str, Callable[..., None]] = {}
        self.http_filter: Callable[..., bool] | None = None
        self.cstore_filter: Callable[[Any], int] | None = None
        self.on_change: Callable[[int, int, str], None] | None = None
        self.storage_area: tuple[Callable[..., Any], ...] | None = None
        self.find_callback: Callable[..., None] | None = None
        self.move_callback: Callable[..., None] | None = None
        self.received_callback: Callable[[bytes, int], Any] | None = None
        self.explorer_js: str | None = None
        self.root_uri: str | None = None
        self.description: str | None = None
        self.logs: list[tuple[str, str]] = []
        self.metrics: dict[str, float] = {}
        self.rest: dict[tuple[str, str], Any] = {}
        self.rest_calls: list[tuple[str, str, Any]] = []

    def GetConfiguration(self) -> str:
        return json.dumps(self.configuration)

    def RegisterRestCallback(self, pattern: str, callback: Callable[..., None]) -> None:
        self.routes[pattern] = callback

    def RegisterIncomingHttpRequestFilter(self, callback: Callable[..., bool]) -> None:
        self.http_filter = callback

    def RegisterIncomingCStoreInstanceFilter(self, callback: Callable[[Any], int]) -> None:
        self.cstore_filter = callback

    def RegisterOnChangeCallback(self, callback: Callable[[int, int, str], None]) -> None:
        self.on_change = callback

    def RegisterStorageArea(self, create: Any, read: Any, remove: Any) -> None:
        self.storage_area = (create, read, remove)

    def RegisterFindCallback(self, callback: Callable[..., None]) -> None:
        self.find_callback = callback

    def RegisterMoveCallback(self, callback: Callable[..., None]) -> None:
        self.move_callback = callback

    def RegisterReceivedInstanceCallback(self, callback: Callable[[bytes, int], Any]) -> None:
        self.received_callback = callback

    def ExtendOrthancExplorer(self, javascript: str) -> None:
        self.explorer_js = javascript

    def SetRootUri(self, uri: str) -> None:
        self.root_uri = uri

    def SetDescription(self, description: str) -> None:
        self.description = description

    def LogInfo(self, message: str) -> None:
        self.logs.append(("info", message))

    def LogWarning(self, message: str) -> None:
        self.logs.append(("warning", message))

    def LogError(self, message: str) -> None:
        self.logs.append(("error", message))

    def SetMetricsValue(self, name: str, value: float, kind: int) -> None:
        self.metrics[name] = value

    def _rest(self, method: str, uri: str, body: Any = None) -> Any:
        self.rest_calls.append((method, uri, body))
        try:
            answer = self.rest[(method, uri)]
        except KeyError as exc:
            raise ValueError(f"FakeOrthanc has no answer for {method} {uri}") from exc
        if isinstance(answer, Exception):
            raise answer
        return answer if isinstance(answer, bytes | str) else json.dumps(answer)

    def RestApiGet(self, uri: str) -> Any:
        return self._rest("GET", uri)

    def RestApiPost(self, uri: str, body: Any) -> Any:
        return self._rest("POST", uri, body)

    def RestApiPut(self, uri: str, body: Any) -> Any:
        return self._rest("PUT", uri, body)

    def RestApiDelete(self, uri: str) -> Any:
        return self._rest("DELETE", uri)


class _Done:
    def wait(self) -> None:
        return None


class MemoryAuditSink:
    """An in-memory audit sink (``audit.sink.AuditSink``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.events: list[AuditEvent] = []

    def record(self, event: AuditEvent) -> None:
        with self._lock:
            self.events.append(event)

    def record_many(self, events: list[AuditEvent]) -> None:
        with self._lock:
            self.events.extend(events)

    def submit(self, events: list[AuditEvent]) -> Any:
        """Record at once (memory is durable enough for a unit test); the waiter has nothing to wait for."""
        self.record_many(events)
        return _Done()

    def last(self) -> AuditEvent:
        """Return the newest event.

        Raises:
            IndexError: nothing was recorded.
        """
        return self.events[-1]
