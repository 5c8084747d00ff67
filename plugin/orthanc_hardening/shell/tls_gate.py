"""TLS enforcement and the posture report, wired into Orthanc.

Two phases, because Orthanc serves a URI with the *first* plugin route whose pattern matches
(verified with Orthanc 1.10.1):

* ``install_early`` runs before every other feature registers a route. It evaluates the
  posture (``tls/posture.py``), refuses to start when a configured certificate cannot be
  read, sets ``runtime.lockdown`` (enforce mode, a critical check failed) and registers the
  REST routes: in lockdown a catch-all ``(/.*)`` answering 403 JSON; otherwise the
  enforcement overrides (insecure destinations, Lua, filesystem export, run-time creation
  of modalities and peers) and ``GET /hardening/posture``.
* ``install_dimse`` runs once the storage area exists: in lockdown it refuses every incoming
  C-STORE (C-STORE gate) and C-GET/C-MOVE read (storage read hook), and records one Security
  Alert; the C-FIND and C-MOVE handlers refuse in lockdown themselves.

Outgoing sends cannot be forwarded from a REST override (a job started from a callback
deadlocks Orthanc, ORTHANC-NOTES.md), so in enforce mode the override routes answer 403 JSON
only for the destinations that are insecure at start; creating an insecure destination at run
time is refused; and an HTTP gate refuses (empty 403) any send to a destination not known to
be secure, after re-reading Orthanc's list once. Sends that bypass HTTP (the C-MOVE callback
uses ``orthanc.RestApiPost``) ask ``TLSGate.outgoing.check_modality(name)``. Monitor mode blocks
nothing: each would-be refusal is a warning in the log and counts in ``hardening_tls_violations``.

``install_early`` returns the ``TLSGate``: the last ``PostureReport`` and the ``OutgoingPolicy``.
Metrics: gauges ``hardening_posture_failed_checks`` and ``hardening_certificate_days_left`` (the
soonest-expiring server certificate), counters ``hardening_tls_violations`` and
``hardening_lockdown_refusals``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from orthanc_hardening.errors import AccessDeniedError, HostileBodyError
from orthanc_hardening.identity import ADMINISTRATOR, HttpRequest, Requester, transport_of_uri
from orthanc_hardening.request_body import MAX_DEPTH, nesting_depth
from orthanc_hardening.services import host_probe as host
from orthanc_hardening.services.tls_probe import measure_endpoints
from orthanc_hardening.shell.guard import JSON_CONTENT_TYPE, RestRefusal, alert, answer_json, decide
from orthanc_hardening.shell.orthanc_api import core_call
from orthanc_hardening.shell.requester import internal_requester, rest_requester
from orthanc_hardening.shell.rest import Reply, RestCall, register
from orthanc_hardening.shell.runtime import Runtime
from orthanc_hardening.shell.storage import SealedStorage
from orthanc_hardening.tls.enforcement import (
    MODALITY_DEFINITION,
    PEER_DEFINITION,
    Destination,
    RouteKind,
    Verdict,
    destinations,
    judge_definition,
    judge_request,
)
from orthanc_hardening.tls.facts import TLSMeasurement
from orthanc_hardening.tls.posture import (
    PostureReport,
    Status,
    check_certificate_files,
    files_to_inspect,
    inspect_posture,
)

logger = logging.getLogger(__name__)

POSTURE_ROUTE = "/hardening/posture"
METRICS_ROUTE = "/tools/metrics-prometheus"
LOCKDOWN_ROUTE = "(/.*)"
# Top-level segments of Orthanc's own REST API and web pages (1.10) and of this plugin:
# in lockdown, these reach the catch-all route and get the JSON answer. Anything else
# (DICOMweb, WebDAV, other plugins, whose routes may precede ours) is refused by the HTTP
# gate with an empty 403.
CORE_SEGMENTS = frozenset(
    {
        "", "app", "changes", "exports", "instances", "jobs", "modalities", "patients", "peers",
        "plugins", "queries", "series", "statistics", "storage-commitment", "studies", "system",
        "tools", "hardening", "favicon.ico",
    }
)
_MODALITY_ACTIONS = (
    "echo|store|store-straight|move|get|query|find|find-patient|find-study|find-series|"
    "find-instance|find-worklist|storage-commitment"
)
_OVERRIDE_ACTIONS = {
    RouteKind.MODALITY: ("/modalities/", _MODALITY_ACTIONS),
    RouteKind.PEER: ("/peers/", "store|store-straight|system"),
    RouteKind.DICOMWEB_SERVER: ("/dicom-web/servers/", "stow|get|retrieve|qido|wado|delete"),
}
FORBIDDEN_ROUTES = (
    ("/tools/execute-script", "POST /tools/execute-script runs Lua code on the server"),
    ("/instances/([^/]+)/export", "POST /instances/{id}/export writes to the server's filesystem"),
)


Measure = Callable[[Mapping[str, Any], Path], dict[str, TLSMeasurement]]


def evaluate_posture(runtime: Runtime, live: bool, measure: Measure | None = None) -> PostureReport:
    """Gather host facts and run the posture checks.

    Args:
        runtime: the plugin runtime.
        live: read modalities and peers through the REST API and measure the TLS endpoints
            (not possible during Orthanc's initialisation; they come from the configuration then).
        measure: what measures the TLS endpoints (``measure_endpoints``; tests pass a fake).

    Raises:
        ConfigError: a configured certificate file is missing, unreadable or not a
            certificate (only raised when ``live`` is false, i.e. at start).
    """
    config = runtime.orthanc_config
    base = host.orthanc_configuration_directory()
    wanted = files_to_inspect(config, runtime.config, base)
    libssl = host.probe_libssl(host.civetweb_in_process())
    modalities = _rest_json(runtime, "/modalities?expand") if live else None
    peers = _rest_json(runtime, "/peers?expand") if live else None
    # The servers listen only once Orthanc has started: what they accept is measured live.
    tls = (measure or measure_endpoints)(config, base) if live else None
    facts = host.gather_host_facts(wanted, base, libssl, modalities, peers, tls)
    if not live:
        check_certificate_files(config, facts)
    report = inspect_posture(config, runtime.config, facts, runtime.clock())
    runtime.metrics.set("posture_failed_checks", len(report.failed))
    if report.certificate_days_left is not None:
        runtime.metrics.set("certificate_days_left", report.certificate_days_left)
    return report


@dataclass
class TLSGate:
    """The TLS side of the plugin: the last posture report and the rules for outgoing sends."""

    report: PostureReport
    outgoing: OutgoingPolicy


def install_early(runtime: Runtime, measure: Measure | None = None) -> TLSGate:
    """Evaluate the posture, decide on lockdown and register every TLS route (see module doc).

    ``measure`` measures the running TLS endpoints for ``GET /hardening/posture``
    (``measure_endpoints`` by default).

    Raises:
        ConfigError: a configured certificate file cannot be used; Orthanc must not start.
    """
    report = evaluate_posture(runtime, live=False)
    gate = TLSGate(report, OutgoingPolicy(runtime))
    for check in report.checks:
        if check.status is Status.FAIL:
            log = logger.error if check.is_critical_failure else logger.warning
            log("posture check %s failed (%s): %s. Fix: %s", check.id, check.severity.value, check.evidence,
                check.remedy)
    _keep_certificate_metric_fresh(runtime, gate)
    critical = tuple(c.id for c in report.critical_failures)
    if critical and runtime.config.is_enforcing:
        runtime.lockdown = critical
        logger.error(
            "LOCKDOWN: critical checks failed (%s): every HTTP and DICOM request is refused until "
            "the configuration is fixed; see GET /hardening/posture after the fix or "
            "`python -m orthanc_hardening posture`",
            ", ".join(critical),
        )
        _install_lockdown_routes(runtime, report)
        return gate
    if critical:
        logger.warning("monitor mode: critical checks failed (%s); nothing is blocked", ", ".join(critical))
    _install_enforcement(runtime, gate.outgoing)

    def posture(call: RestCall) -> Reply:
        gate.report = evaluate_posture(runtime, live=True, measure=measure)
        return Reply(gate.report.to_json(runtime.config.mode.value, runtime.lockdown))

    register(runtime, POSTURE_ROUTE, {"GET": posture}, role=ADMINISTRATOR)
    return gate


def install_dimse(runtime: Runtime, storage: SealedStorage) -> None:
    """Install the DIMSE side of the lockdown (every C-STORE and every C-GET/C-MOVE read refused)."""
    if not runtime.lockdown:
        return

    def refuse_cstore(_instance: Any) -> None:
        runtime.metrics.increment("lockdown_refusals")
        raise AccessDeniedError(_lockdown_detail(runtime))

    def refuse_read(_event: Any) -> None:
        raise AccessDeniedError(_lockdown_detail(runtime))

    runtime.cstore_gates.insert(0, refuse_cstore)
    storage.read_hooks.insert(0, refuse_read)
    alert(runtime, internal_requester(), "startup", _lockdown_detail(runtime))


def _keep_certificate_metric_fresh(runtime: Runtime, gate: TLSGate) -> None:
    # Prometheus reads the metrics over HTTP: recompute the days left at each scrape, so the
    # gauge counts down between posture reports.
    def refresh_certificate_metric(request: HttpRequest) -> None:
        if request.uri != METRICS_ROUTE:
            return
        not_after = gate.report.certificate_not_after
        if not_after is not None:
            runtime.metrics.set("certificate_days_left", (not_after - runtime.clock()) // dt.timedelta(days=1))

    runtime.http_observers.append(refresh_certificate_metric)


# -- lockdown -----------------------------------------------------------------------------


def _lockdown_detail(runtime: Runtime) -> str:
    return (
        "orthanc-hardening is in lockdown because critical security checks failed: "
        f"{', '.join(runtime.lockdown)}; the administrator must fix the configuration and restart Orthanc"
    )


def _lockdown_body(runtime: Runtime, report: PostureReport) -> dict[str, Any]:
    return {
        "error": "forbidden",
        "detail": _lockdown_detail(runtime),
        "failed_checks": list(runtime.lockdown),
        "titles": {c.id: c.title for c in report.critical_failures},
    }


def _install_lockdown_routes(runtime: Runtime, report: PostureReport) -> None:
    body = _lockdown_body(runtime, report)

    def refuse_everything(output: Any, uri: str, **request: Any) -> None:
        # Every request is refused; the HTTP filter already counted and alerted it.
        answer_json(output, 403, body)

    runtime.orthanc.RegisterRestCallback(LOCKDOWN_ROUTE, refuse_everything)

    def lockdown_gate(request: HttpRequest) -> None:
        runtime.metrics.increment("lockdown_refusals")
        if _first_segment(request.uri) not in CORE_SEGMENTS:
            # Another plugin's route may precede the catch-all: refuse it here (empty 403).
            raise AccessDeniedError(_lockdown_detail(runtime))

    runtime.http_gates.insert(0, lockdown_gate)


def _first_segment(uri: str) -> str:
    return uri.lstrip("/").split("/", 1)[0]


# -- enforcement --------------------------------------------------------------------------


class OutgoingPolicy:
    """Orthanc's modalities, peers and DICOMweb servers as last read, and the sending rules.

    Code that sends on Orthanc's behalf without an HTTP request (the C-MOVE callback sends
    through ``orthanc.RestApiPost``, which bypasses the HTTP filter and the REST overrides)
    calls ``check_modality`` first.
    """

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        config = runtime.orthanc_config
        self.known = destinations(
            _mapping(config.get("DicomModalities")),
            _mapping(config.get("OrthancPeers")),
            _mapping(_mapping(config.get("DicomWeb")).get("Servers")),
        )

    def refresh(self) -> None:
        """Re-read the live lists (``GET /modalities?expand`` etc., no job involved)."""
        modalities = _rest_json(self._runtime, "/modalities?expand")
        peers = _rest_json(self._runtime, "/peers?expand")
        servers = _rest_json(self._runtime, "/dicom-web/servers?expand")
        fresh = destinations(modalities or {}, peers or {}, servers or {})
        listed = {RouteKind.MODALITY: modalities, RouteKind.PEER: peers, RouteKind.DICOMWEB_SERVER: servers}
        # A list that could be read replaces the old one (a deleted destination disappears);
        # one that could not (no DICOMweb plugin) keeps what the configuration said.
        known = {key: value for key, value in self.known.items() if listed[key[0]] is None}
        known.update(fresh)
        self.known = known

    def add(self, destination: Destination) -> None:
        """Record a destination created at run time (after its definition was judged)."""
        self.known = {**self.known, (destination.kind, destination.name): destination}

    def judge(self, method: str, uri: str) -> Verdict:
        """Judge a request against the known destinations, re-reading them once if unknown."""
        verdict = judge_request(method, uri, self.known)
        if not verdict.allowed and verdict.is_unknown_target:
            self.refresh()
            verdict = judge_request(method, uri, self.known)
        return verdict

    def check_modality(self, name: str, requester: Requester | None = None) -> None:
        """Check that DICOM may be sent to the modality ``name`` (C-MOVE targets).

        Raises:
            AccessDeniedError: enforce mode, and the modality does not use DICOM TLS or is
                unknown. In monitor mode the violation is only logged and counted.
        """
        uri = f"/modalities/{quote(name, safe='')}/store"
        verdict = self.judge("POST", uri)
        if verdict.allowed:
            return
        _violation(self._runtime, verdict, requester or Requester(transport=transport_of_uri("/")), uri)
        if self._runtime.config.is_enforcing:
            raise AccessDeniedError(verdict.reason)


def _install_enforcement(runtime: Runtime, policy: OutgoingPolicy) -> None:
    enforcing = runtime.config.is_enforcing
    # Routes whose refusal a REST override answers with JSON; the gate lets exactly these
    # through (matched on the raw URI, as Orthanc matches the override) and refuses the rest.
    answered_in_json: list[re.Pattern[str]] = []
    if enforcing:
        for (kind, _name), destination in sorted(policy.known.items(), key=lambda item: (item[0][0].value, item[0][1])):
            # DICOMweb routes belong to another plugin whose routes may precede ours: the
            # gate refuses those itself.
            if not destination.is_secure and kind is not RouteKind.DICOMWEB_SERVER:
                answered_in_json.append(_register_insecure_destination(runtime, destination))
        for pattern, reason in FORBIDDEN_ROUTES:
            _register_forbidden(runtime, pattern, reason)
            answered_in_json.append(re.compile(pattern))
    _register_definition_override(runtime, policy, MODALITY_DEFINITION.pattern, RouteKind.MODALITY)
    _register_definition_override(runtime, policy, PEER_DEFINITION.pattern, RouteKind.PEER)

    def outgoing_gate(request: HttpRequest) -> None:
        verdict = policy.judge(request.method, request.uri)
        if verdict.allowed:
            return
        _violation(runtime, verdict, request.requester, request.uri)
        if not enforcing:
            return
        if any(pattern.fullmatch(request.uri) for pattern in answered_in_json):
            return  # the override route answers 403 JSON
        raise AccessDeniedError(verdict.reason)

    runtime.http_gates.insert(0, outgoing_gate)


def _violation(runtime: Runtime, verdict: Verdict, requester: Requester, uri: str) -> None:
    runtime.metrics.increment("tls_violations")
    if runtime.config.is_enforcing:
        logger.warning("refused %s: %s", uri, verdict.reason)
    else:
        logger.warning("monitor mode, would refuse %s: %s", uri, verdict.reason)


def _register_insecure_destination(runtime: Runtime, destination: Destination) -> re.Pattern[str]:
    prefix, actions = _OVERRIDE_ACTIONS[destination.kind]
    pattern = f"{prefix}{re.escape(destination.name)}/({actions})/?"
    only = {(destination.kind, destination.name): destination}
    verdict = judge_request("POST", f"{prefix}{destination.name}/store", only)

    def refuse(output: Any, uri: str, **request: Any) -> None:
        def deny() -> None:
            raise AccessDeniedError(verdict.reason, answer=verdict.body)

        decide(runtime, uri, rest_requester(runtime, uri, request), deny, RestRefusal(output))

    runtime.orthanc.RegisterRestCallback(pattern, refuse)
    return re.compile(pattern)


def _register_forbidden(runtime: Runtime, pattern: str, reason: str) -> None:
    def refuse(output: Any, uri: str, **request: Any) -> None:
        def deny() -> None:
            if str(request.get("method", "GET")).upper() != "POST":
                output.SendMethodNotAllowed("POST")
                return
            raise AccessDeniedError(f"{reason} and is refused in enforce mode")

        decide(runtime, uri, rest_requester(runtime, uri, request), deny, RestRefusal(output))

    runtime.orthanc.RegisterRestCallback(pattern, refuse)


def _register_definition_override(runtime: Runtime, state: OutgoingPolicy, pattern: str, kind: RouteKind) -> None:
    """Override ``/modalities/{name}`` (or ``/peers/{name}``): judge PUT bodies, forward the rest.

    GET, PUT and DELETE of a definition start no job, so forwarding them to Orthanc's core
    with ``orthanc.RestApi*`` from this callback is safe.
    """
    orthanc = runtime.orthanc

    def callback(output: Any, uri: str, **request: Any) -> None:
        method = str(request.get("method", "GET")).upper()
        requester = rest_requester(runtime, uri, request)

        def forward() -> None:
            if method == "PUT":
                name = (request.get("groups") or ("",))[0]
                body = request.get("body") or b""
                if nesting_depth(body) > MAX_DEPTH:
                    # Neither json here nor Orthanc's parser should see a body built to
                    # exhaust the HTTP thread's stack.
                    raise HostileBodyError("body", f"is nested deeper than {MAX_DEPTH} levels")
                verdict, destination = judge_definition(kind, name, body)
                if not verdict.allowed:
                    _violation(runtime, verdict, requester, uri)
                    if runtime.config.is_enforcing:
                        raise AccessDeniedError(verdict.reason, answer=verdict.body)
                answer = core_call(orthanc.RestApiPut, uri, body)
                if destination is not None:
                    state.add(destination)
            elif method == "GET":
                query = dict(request.get("get") or {})
                answer = core_call(orthanc.RestApiGet, uri + ("?" + urlencode(query) if query else ""))
            elif method == "DELETE":
                answer = core_call(orthanc.RestApiDelete, uri)
                answer = answer if answer is not None else b"{}"
            else:
                output.SendMethodNotAllowed("GET,PUT,DELETE")
                return
            output.AnswerBuffer(answer if answer is not None else b"{}", JSON_CONTENT_TYPE)

        decide(runtime, uri, requester, forward, RestRefusal(output))

    orthanc.RegisterRestCallback(pattern, callback)


def _rest_json(runtime: Runtime, uri: str) -> dict[str, Any] | None:
    try:
        answer = runtime.orthanc.RestApiGet(uri)
    except Exception:
        return None
    try:
        value = json.loads(answer)
    except (TypeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}

