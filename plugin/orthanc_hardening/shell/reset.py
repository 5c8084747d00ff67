"""``POST /tools/reset`` as a clean exit that the supervisor turns into a restart.

Orthanc's reset restarts Orthanc *in the same process*: the Python plugin finalises its
interpreter and starts a new one, which imports this package again. Extension modules built
with PyO3 (``cryptography``, which signs and verifies every seal) cannot be initialised twice
in one process; the second import fails (``NameError: name 'isinstance' is not defined``) and
Orthanc exits on the first request that needs a signature, with no seal checked in between.

So the plugin stands in for the route: an administrator's reset (permission ``all``, checked
by ``shell/rest.register``) is recorded in the audit trail (Application Activity, 110100),
leaves ``restart-requested`` in the plugin's data directory, and stops Orthanc cleanly through
Orthanc's own ``/tools/shutdown`` (exit status 0, every plugin thread joined). ``make run``
(scripts/run.sh) starts Orthanc again when it finds the file; the Docker service's restart
policy and the systemd drop-in (``deploy/systemd``) restart it in any case. The new process
loads the configuration afresh, as a reset would, and the plugin enforces as before.
"""

from __future__ import annotations

import logging
from pathlib import Path

from orthanc_hardening.audit.event import Action, AuditEvent, EventCode, Outcome
from orthanc_hardening.shell.rest import Reply, RestCall, register
from orthanc_hardening.shell.runtime import Runtime

logger = logging.getLogger(__name__)

RESET_ROUTE = "/tools/reset"
RESTART_MARKER = "restart-requested"


def restart_marker(runtime: Runtime) -> Path:
    """The file that tells ``make run`` to start Orthanc again after it exits."""
    return runtime.config.data_directory / RESTART_MARKER


def install(runtime: Runtime) -> None:
    """Register the stand-in for ``POST /tools/reset``."""

    def reset(call: RestCall) -> Reply:
        runtime.audit.record(AuditEvent(
            time=runtime.clock(), event=EventCode.APPLICATION_ACTIVITY, action=Action.EXECUTE,
            outcome=Outcome.SUCCESS, transport=call.requester.transport, user=call.requester.user,
            roles=call.requester.roles, source_ip=call.requester.source_ip, route=f"POST {RESET_ROUTE}",
            detail="reset requested: Orthanc stops cleanly and is started again by its supervisor "
                   "(an in-process restart cannot re-initialise the plugin's cryptography)",
        ))
        marker = restart_marker(runtime)
        marker.write_text(f"{call.requester.user or 'anonymous'}\n", encoding="utf-8")
        logger.warning("POST /tools/reset by %s: stopping Orthanc cleanly for a restart (%s)",
                       call.requester.user or "anonymous", marker)
        # Orthanc's own shutdown: it answers, then leaves its main loop; no job is started.
        runtime.orthanc.RestApiPost("/tools/shutdown", "")
        return Reply(raw=b"{}\n", content_type="application/json")

    register(runtime, RESET_ROUTE, {"POST": reset}, name="reset", like_orthanc=True)
