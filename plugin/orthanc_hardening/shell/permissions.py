"""Least privilege on every HTTP route: the permission gate, wired into Orthanc.

Every request goes through ``access.policy.check_access`` once, on the route Orthanc serves
(``access/routes.py`` normalises the path):

* routes of this plugin registered through ``shell/rest.register`` (the ``/hardening`` routes
  and the plugin's stand-ins for Orthanc's archive routes) check in their own callback and
  answer a refusal with 403 JSON naming the missing permission;
* every other route is refused by the HTTP filter (Orthanc answers an empty 403: the filter
  cannot give a body) before Orthanc or another plugin sees it.

Each refusal is a Security Alert (110113) naming the user, the route and the permission, and
counts in ``hardening_access_refusals``. ``GET /hardening/permissions`` tells the caller what
they may do.
"""

from __future__ import annotations

import logging

from orthanc_hardening.access.policy import holds
from orthanc_hardening.access.routes import TABLE, UNCHECKED_MODALITY_QUERIES, UNCHECKED_STOW_RS, Permission, route_of
from orthanc_hardening.identity import HttpRequest
from orthanc_hardening.shell.job_routes import releases_python_lock
from orthanc_hardening.shell.orthanc_api import capabilities_of
from orthanc_hardening.shell.rest import Reply, RestCall, enforce, register
from orthanc_hardening.shell.runtime import Runtime

logger = logging.getLogger(__name__)

PERMISSIONS_ROUTE = "/hardening/permissions"


def is_checked_by_route(runtime: Runtime, uri: str) -> bool:
    """Whether a plugin route that checks permissions itself serves ``uri``."""
    route = route_of(uri)
    return any(pattern.fullmatch(route) for pattern in runtime.checked_routes)


def restrict_unchecked_bodies(runtime: Runtime) -> None:
    """Make the routes whose body the plugin cannot check on this Orthanc need ``all``.

    Modality queries get a body check only where a stand-in may wait for the modality with
    Python's lock released (``shell/job_routes.py``); STOW-RS uploads only where the DICOMweb
    plugin hands each part to the received-instance callback unparsed (``shell/ingest_limits.py``).
    Elsewhere (Orthanc 1.10 with Python plugin 4.0: Debian bookworm) a 1 KB request on either
    crashes Orthanc, so only administrators may send one.
    """
    if not releases_python_lock(runtime):
        runtime.access = runtime.access.with_unchecked(UNCHECKED_MODALITY_QUERIES)
    if not capabilities_of(runtime.orthanc).stow_reaches_received_callback:
        runtime.access = runtime.access.with_unchecked(UNCHECKED_STOW_RS)
    for rule in runtime.access.unchecked if runtime.access.is_enforced else ():
        logger.warning("%s %s needs the permission 'all' on this Orthanc: %s",
                           "|".join(sorted(rule.methods)), rule.pattern.pattern, rule.reason)


def install(runtime: Runtime) -> None:
    """Register the permission gate (first of the HTTP gates) and ``GET /hardening/permissions``."""
    restrict_unchecked_bodies(runtime)

    def permission_gate(request: HttpRequest) -> None:
        if is_checked_by_route(runtime, request.uri):
            return
        enforce(runtime, request.requester, request.method, request.uri)

    runtime.http_gates.insert(0, permission_gate)

    def my_permissions(call: RestCall) -> Reply:
        granted = runtime.access.permissions_of(call.requester.user)
        return Reply({
            "user": call.requester.user or "anonymous",
            "enforced": runtime.access.is_enforced,
            "permissions": sorted(p.value for p in granted),
            "routes": [
                {"methods": sorted(rule.methods), "route": rule.pattern.pattern, "permission": rule.permission.value,
                 "allowed": holds(granted, rule.permission), **({"reason": rule.reason} if rule.reason else {})}
                for rule in (*runtime.access.unchecked, *TABLE)
            ],
            "other_routes": Permission.ALL.value,
        })

    register(runtime, PERMISSIONS_ROUTE, {"GET": my_permissions}, name="permissions")
    if not runtime.access.is_enforced:
        logger.warning("Hardening.Permissions is not configured: every registered user may use every route of "
                       "Orthanc (only /hardening is restricted); see the posture report")
