"""The C-MOVE handler: verify, record, send asynchronously, record the outcome (DESIGN.md §7).

Orthanc's own C-MOVE is replaced; it matches what Orthanc's would (``integrity/cmove.py``:
the level's identifier only, nothing matched is a failure). On Python plugin 5.0+
(``RegisterMoveCallback2``) and 7.0+ (``RegisterMoveCallback3``, whose DICOM connection names the
SCU's IP) there is one sub-operation per instance, as with Orthanc's own; plugin 4.x only offers
``RegisterMoveCallback``, which reports the whole move as one sub-operation (README, "Supported
Orthanc versions"). A C-MOVE is refused in lockdown, to an unknown or insecure
destination (``TLSGate.outgoing``), or when an instance does not verify
(``SealedStorage.check_instance``); otherwise each file's next read is granted the index facts
that check read (``SealedStorage.grant_index_reads``: the send job's read does not ask the index
again), Begin Transferring is recorded for each series,
the instances are sent by one asynchronous store job (a synchronous one deadlocks Orthanc when
started from a callback), and Transferred is recorded with the job's outcome. Every callback
runs behind the guard (a refusal is a DIMSE failure).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from orthanc_hardening.audit.event import Action, EventCode, Outcome, Transport
from orthanc_hardening.errors import AccessDeniedError, BadRequestError, IntegrityError
from orthanc_hardening.identity import Requester, dimse_requester
from orthanc_hardening.integrity.cmove import move_identifiers
from orthanc_hardening.shell.audit_hooks import AuditHooks, SeriesRef
from orthanc_hardening.shell.guard import decide, mark_audited, refuse_raise
from orthanc_hardening.shell.jobs import wait_for_job
from orthanc_hardening.shell.runtime import Runtime
from orthanc_hardening.shell.storage import SealedStorage
from orthanc_hardening.shell.tls_gate import OutgoingPolicy

MOVE_TIMEOUT_SECONDS = 3600.0


@dataclass
class MovePlan:
    """One C-MOVE, checked and announced; ``state`` is the send job's final state once sent."""

    requester: Requester
    target: str
    modality: str
    instances: tuple[str, ...]
    groups: tuple[SeriesRef, ...]
    detail: str
    request: dict[str, Any]
    state: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class MoveHandler:
    """The C-MOVE callbacks (see the module docstring)."""

    def __init__(self, runtime: Runtime, hooks: AuditHooks, outgoing: OutgoingPolicy, storage: SealedStorage) -> None:
        self.runtime = runtime
        self.hooks = hooks
        self.outgoing = outgoing
        self.storage = storage
        self.our_aet = hooks.our_aet

    def on_move(self, **request: Any) -> None:
        """``RegisterMoveCallback`` (every plugin version): verify, record, send, record the outcome.

        Orthanc passes the SCU that asked as ``OriginatorAET`` and itself (the sender) as
        ``SourceAET``; the peer's IP is not given.

        Raises:
            AccessDeniedError: lockdown, or an unknown or insecure destination.
            IntegrityError: an instance does not verify.
            RuntimeError: the send failed (the SCU gets a failure status).
        """
        originator = str(request.get("OriginatorAET", "") or "")
        called = str(request.get("SourceAET", "") or "") or self.our_aet
        requester = Requester(transport=Transport.DIMSE, calling_aet=originator, called_aet=called)
        self.run_move(self.plan_move(requester, request))

    def create_move_v2(self, **request: Any) -> MovePlan:
        """``RegisterMoveCallback2`` (Python plugin 5.0+), create: the plan, checked and recorded.

        As ``on_move`` names the SCU (AE titles only); Orthanc then asks for the number of
        sub-operations (``move_size``) and calls ``apply_move`` once per sub-operation.
        """
        originator = str(request.get("OriginatorAET", "") or "")
        called = str(request.get("SourceAET", "") or "") or self.our_aet
        return self.plan_move(Requester(transport=Transport.DIMSE, calling_aet=originator, called_aet=called),
                              request)

    def create_move(self, connection: Any, **request: Any) -> MovePlan:
        """``RegisterMoveCallback3`` (Python plugin 7.0+), create: the plan, checked and recorded.

        The DICOM connection names the SCU's IP and AE title. Orthanc then asks for the number
        of sub-operations (``move_size``) and calls ``apply_move`` once per sub-operation.
        """
        requester = dimse_requester(connection)
        if not requester.called_aet:
            requester = replace(requester, called_aet=self.our_aet)
        request.setdefault("OriginatorAET", requester.calling_aet)
        return self.plan_move(requester, request)

    @staticmethod
    def move_size(plan: MovePlan) -> int:
        """``RegisterMoveCallback3``: one sub-operation per instance to send."""
        return len(plan.instances)

    def apply_move(self, plan: MovePlan) -> None:
        """``RegisterMoveCallback3``: the first sub-operation sends every instance (one job, one
        association); each later one reports the outcome of that send.

        Raises:
            RuntimeError: the send failed (each sub-operation is then counted as failed).
        """
        with plan.lock:
            if plan.state is None:
                try:
                    self.run_move(plan)
                except Exception:
                    plan.state = plan.state or "Failure"
                    raise
            if plan.state != "Success":
                raise RuntimeError(f"C-MOVE to {plan.target} failed: job {plan.state}")

    @staticmethod
    def free_move(plan: MovePlan) -> None:
        """``RegisterMoveCallback3``: nothing to release (the plan is garbage-collected)."""

    def plan_move(self, requester: Requester, request: dict[str, Any]) -> MovePlan:
        """Check a C-MOVE and record Begin Transferring (DESIGN.md §7) for each series.

        Raises:
            AccessDeniedError: lockdown, or an unknown or insecure destination.
            IntegrityError: an instance does not verify.
        """
        target = str(request.get("TargetAET", "") or "")
        route = "C-MOVE"
        if self.runtime.lockdown:
            detail = f"C-MOVE refused: locked down ({', '.join(self.runtime.lockdown)})"
            self.hooks.alert(requester, route, detail)
            raise mark_audited(AccessDeniedError(detail))
        try:
            # The destination first: an unknown or insecure one is refused before any lookup.
            modality = self._modality_of(target)
            self.outgoing.check_modality(modality, requester)
            parents: dict[str, Any] = {}  # the index's answers, read once per move
            instances = self._move_instances(request, parents)
            bound: list[tuple[str, str, str]] = []
            for instance_id in instances:
                self.storage.check_instance(instance_id, parents=parents, bound=bound)
        except (AccessDeniedError, IntegrityError) as exc:
            self.hooks.alert(requester, route, f"C-MOVE to {target} refused: {exc}")
            raise mark_audited(exc) from None
        # Every instance verified: the send job's reads take the index facts read for them here.
        self.storage.grant_index_reads(bound)
        groups = self._group_by_series(instances)
        detail = f"C-MOVE to {target} (modality {modality}), level {request.get('Level', '')}"
        self.hooks.record([self.hooks.event(requester, EventCode.BEGIN_TRANSFERRING, Action.EXECUTE, route, ref, detail)
                      for ref in groups])
        return MovePlan(requester, target, modality, tuple(instances), tuple(groups), detail, dict(request))

    def run_move(self, plan: MovePlan) -> None:
        """Send the plan's instances, record Transferred with the outcome.

        Raises:
            RuntimeError: the send failed.
        """
        with self.hooks.move_in_progress():
            plan.state = self._send(plan.modality, list(plan.instances), plan.request)
        outcome = Outcome.SUCCESS if plan.state == "Success" else Outcome.SERIOUS_FAILURE
        self.hooks.record([self.hooks.event(plan.requester, EventCode.INSTANCES_TRANSFERRED, Action.READ, "C-MOVE", ref,
                                  f"{plan.detail}; job {plan.state}", outcome) for ref in plan.groups])
        if plan.state != "Success":
            raise RuntimeError(f"C-MOVE to {plan.target} failed: job {plan.state}")

    def _move_instances(self, request: dict[str, Any], listed: dict[str, Any]) -> list[str]:
        """The instances Orthanc's own C-MOVE would send (``move_identifiers``), in its order.

        Each instance object a listing of its parent answered goes into ``listed`` under
        ``/instances/{id}`` (``SealedStorage.expected_identity``: the check does not ask again).

        Raises:
            BadRequestError: no identifier for the level, or nothing matches (Orthanc's refusals).
        """
        orthanc = self.runtime.orthanc
        level, keyword, values = move_identifiers(request)
        plural = {"Patient": "patients", "Study": "studies", "Series": "series", "Instance": "instances"}[level]
        instances: list[str] = []
        for value in values:
            body = json.dumps({"Level": level, "Query": {keyword: value}, "CaseSensitive": True, "Expand": False})
            for resource in json.loads(orthanc.RestApiPost("/tools/find", body)):
                if level == "Instance":
                    instances.append(str(resource))
                else:
                    instances.extend(self.storage.list_instances(f"/{plural}/{resource}/instances", listed))
        if not instances:
            raise BadRequestError(keyword, "C-MOVE request matching no resource stored in Orthanc")
        return instances

    def _group_by_series(self, instances: Iterable[str]) -> list[SeriesRef]:
        counts: dict[SeriesRef, int] = {}
        for instance_id in instances:
            ref = self.hooks.resolver.instance(instance_id)
            key = SeriesRef(ref.patient_id, ref.study_uid, ref.series_uid)
            counts[key] = counts.get(key, 0) + 1
        return [SeriesRef(k.patient_id, k.study_uid, k.series_uid, n) for k, n in counts.items()]

    def _modality_of(self, target: str) -> str:
        modalities = json.loads(self.runtime.orthanc.RestApiGet("/modalities?expand"))
        for name, definition in modalities.items():
            if str(definition.get("AET", "")) == target:
                return str(name)
        raise AccessDeniedError(f"C-MOVE destination {target!r} is not a configured modality")

    def _send(self, modality: str, instances: list[str], request: dict[str, Any]) -> str:
        body = {"Resources": instances, "Asynchronous": True, "Synchronous": False}
        originator = str(request.get("OriginatorAET", "") or "")
        if originator:
            body["MoveOriginatorAet"] = originator
        if request.get("OriginatorID"):
            body["MoveOriginatorID"] = int(request["OriginatorID"])
        answer = json.loads(self.runtime.orthanc.RestApiPost(f"/modalities/{modality}/store", json.dumps(body)))
        # Waits sleeping (Python's lock released), so that the job thread can run its storage reads.
        return str(wait_for_job(self.runtime, str(answer["ID"]), MOVE_TIMEOUT_SECONDS).get("State", ""))


def install(runtime: Runtime, hooks: AuditHooks, outgoing: OutgoingPolicy, storage: SealedStorage) -> MoveHandler:
    """Register the C-MOVE handler, behind the guard."""
    handler = MoveHandler(runtime, hooks, outgoing, storage)

    def guarded(gate: str, function: Any) -> Any:
        def callback(*args: Any, **kwargs: Any) -> Any:
            return decide(runtime, gate, lambda: _requester_of(args, kwargs, handler.our_aet),
                          lambda: function(*args, **kwargs), refuse_raise)

        return callback

    steps = (guarded("C-MOVE", handler.move_size), guarded("C-MOVE", handler.apply_move),
             guarded("C-MOVE", handler.free_move))
    if runtime.capabilities.move_connection:
        runtime.orthanc.RegisterMoveCallback3(guarded("C-MOVE", handler.create_move), *steps)  # type: ignore[attr-defined]
    elif runtime.capabilities.move_steps:
        runtime.orthanc.RegisterMoveCallback2(guarded("C-MOVE", handler.create_move_v2), *steps)  # type: ignore[attr-defined]
    else:
        runtime.orthanc.RegisterMoveCallback(guarded("C-MOVE", handler.on_move))
    return handler


def _requester_of(args: tuple[Any, ...], kwargs: dict[str, Any], our_aet: str) -> Requester:
    if isinstance(args[0] if args else None, MovePlan):
        return args[0].requester
    if args and hasattr(args[0], "GetConnectionRemoteAet"):
        return dimse_requester(args[0])
    return Requester(transport=Transport.DIMSE, calling_aet=str(kwargs.get("OriginatorAET", "") or ""),
                     called_aet=our_aet)
