"""JSON body limits on Orthanc's own synchronous routes that take a JSON body.

Orthanc 1.10.1 parses request bodies with a recursive JSON reader: a body nested 50,000 levels
deep sent to ``POST /instances/{id}/modify`` overflows the HTTP thread's stack and kills the
server. The plugin stands in for the instance routes that answer synchronously and store nothing (no
job, so handing the body on with ``orthanc.RestApiPost`` from the callback is safe):
``/instances/{id}/modify`` and ``/instances/{id}/anonymize``, ``/tools/bulk-delete`` and
``/tools/bulk-content`` (measured: 500 levels, a 1 KB body, already kill 1.10.1). A body nested deeper than
``request_body.MAX_DEPTH`` levels gets 400 JSON and a Security Alert; any other body is handed
to Orthanc, whose answer (or error) is given back as is.

Also ``/tools/create-dicom``: synchronous, no job, but it stores what it creates, so Orthanc
records the instance's ``Origin`` as ``Plugins`` (README, Drop-in) — a documented difference
instead of a 1 KB segfault. Routes that start a job and the modality queries are stood in for by
``shell/job_routes.py``.
"""

from __future__ import annotations

from collections.abc import Callable

from orthanc_hardening.request_body import check_body_depth
from orthanc_hardening.shell.rest import Reply, RestCall, forwarded_post, register
from orthanc_hardening.shell.runtime import Runtime

# (route pattern, content type of Orthanc's answer)
GUARDED_ROUTES = (
    ("/instances/([^/]+)/(modify|anonymize)", "application/dicom"),
    ("/tools/bulk-content", "application/json; charset=utf-8"),
    ("/tools/bulk-delete", "text/plain"),  # Orthanc answers an empty body
    # Stores what it creates: Orthanc records the instance's Origin as "Plugins" (README, Drop-in).
    ("/tools/create-dicom", "application/json; charset=utf-8"),
)


def checked_hand_on(runtime: Runtime, content_type: str, writes: bool = True) -> Callable[[RestCall], Reply]:
    """A stand-in that checks a body's depth and hands it on to Orthanc's own route unchanged
    (``writes``: see ``rest.forwarded_post``).

    Raises (the stand-in):
        HostileBodyError: the body nests deeper than the limit (Orthanc never sees it).
    """

    def hand_on(call: RestCall) -> Reply:
        check_body_depth(call.body)
        return forwarded_post(runtime, call.uri, call.body, content_type, writes)

    return hand_on


def install(runtime: Runtime) -> None:
    """Register the stand-ins for Orthanc's synchronous JSON-body routes."""
    for pattern, content_type in GUARDED_ROUTES:
        register(runtime, pattern, {"POST": checked_hand_on(runtime, content_type)}, name="body-limits",
                 like_orthanc=True)
