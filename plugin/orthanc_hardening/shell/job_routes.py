"""JSON body limits on Orthanc's routes that start a job, and on the modality queries.

Orthanc's JSON reader recurses per level on the HTTP thread: a 1 KB body nested 500 levels
deep segfaults Orthanc 1.10.1, 1.12.7 and 1.13.0 on any JSON route, before any permission or
job. The HTTP filter cannot see bodies, so the plugin stands in for these routes (a plugin route
takes precedence over Orthanc's own) and looks at the body first (``request_body.job_request``):
nested more than ``MAX_DEPTH`` levels, it gets 400 JSON and a Security Alert; any other body is
handed on to Orthanc.

* **Job routes** (study, series and patient modify and anonymize, bulk modify and anonymize,
  ``/modalities/{m}/store|move|get``, ``/peers/{p}/store``). A synchronous job cannot be handed
  on from a callback (its thread reads storage through Python, whose lock the waiting callback
  holds): the body goes on with ``"Asynchronous": true`` and, when the client asked to wait,
  the plugin waits for the job sleeping (``shell/jobs.py``) and answers what Orthanc's
  synchronous route answers — the job's ``Content`` (200), or the job's error (its error code's
  status, its description and details). An asynchronous request gets Orthanc's answer unchanged.
* **Modality queries** (``/modalities/{m}/query``, ``find*``): synchronous, no job, but a network
  wait inside the ``orthanc.RestApiPost``. Only where the Python plugin releases Python's lock
  during that call (``Python.AllowThreads``, Python plugin 4.3 and later: trixie, forky);
  with Python plugin 4.0 (bookworm) every request would wait for the remote modality, so
  there is no stand-in (README).

Archives and media (``shell/archives.py``) parse their bodies through ``request_body`` already.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from orthanc_hardening.request_body import job_request
from orthanc_hardening.shell.body_limits import checked_hand_on
from orthanc_hardening.shell.jobs import wait_for_job
from orthanc_hardening.shell.orthanc_api import ORTHANC_ERROR_STATUS, OrthancCoreError, capabilities_of, core_call
from orthanc_hardening.shell.rest import Reply, RestCall, forwarded_post, register
from orthanc_hardening.shell.runtime import Runtime

# (route pattern, whether Orthanc reads a bare id, a string or a list as the resources to send)
JOB_ROUTES = (
    ("/(patients|studies|series)/([^/]+)/(modify|anonymize)", False),
    ("/tools/(bulk-modify|bulk-anonymize)", False),
    ("/modalities/([^/]+)/(move|get)", False),
    ("/modalities/([^/]+)/store", True),
    ("/peers/([^/]+)/store", True),
)
QUERY_ROUTE = "/modalities/([^/]+)/(query|find|find-patient|find-study|find-series|find-instance|find-worklist)"
ORTHANC_JSON = "application/json; charset=utf-8"


class JobFailedError(OrthancCoreError):
    """The job of a synchronous request failed: Orthanc's synchronous route answers its error."""

    def __init__(self, code: int, description: str, details: str, payload: Any = None) -> None:
        super().__init__(ORTHANC_ERROR_STATUS.get(code, 500), details or description, code)
        self._description = description
        # Orthanc's "ErrorPayload" of the answer (guard.answer_like_orthanc), when it gives one.
        self.payload = payload

    @property
    def description(self) -> str:
        return self._description


def job_answer(state: Mapping[str, Any], payload: Any = None) -> Any:
    """What Orthanc's synchronous route answers for a job that ended in ``state``.

    Raises:
        JobFailedError: the job failed (or did not end): Orthanc's error of the job.
    """
    if state.get("State") == "Success":
        return state.get("Content", {})
    code = state.get("ErrorCode")
    code = code if isinstance(code, int) and code != 0 else -1
    raise JobFailedError(code, str(state.get("ErrorDescription") or "Internal error"),
                         str(state.get("ErrorDetails") or ""), payload)


def hand_on_job(runtime: Runtime, call: RestCall, resources_form: bool) -> Reply:
    """Check a job route's body, start Orthanc's job asynchronously, and answer as Orthanc would.

    Raises:
        HostileInputError: the body is nested too deep (nothing is handed on).
        OrthancCoreError: Orthanc refused the request, or the job failed.
    """
    request = job_request(call.body, resources_form)
    if not request.synchronous:
        return forwarded_post(runtime, call.uri, request.body, ORTHANC_JSON)
    started = json.loads(core_call(runtime.orthanc.RestApiPost, call.uri, request.body))
    state = wait_for_job(runtime, str(started["ID"]))
    return Reply(job_answer(state, error_payload(runtime, state)))


# Orthanc 1.13 adds the failed job's details to the error of a synchronous C-MOVE or C-GET request
# (measured: the job's Content.Details, as a "RetrieveJob"); earlier versions and other jobs do not.
RETRIEVE_JOBS = frozenset({"DicomMoveScu", "DicomGetScu"})


def error_payload(runtime: Runtime, state: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ``ErrorPayload`` Orthanc's synchronous route adds to a failed job's error, if any."""
    content = state.get("Content")
    if not capabilities_of(runtime.orthanc).loader_threads or state.get("Type") not in RETRIEVE_JOBS \
            or not isinstance(content, Mapping) or "Details" not in content:
        return None
    return {"Content": content["Details"], "Type": "RetrieveJob"}


def releases_python_lock(runtime: Runtime) -> bool:
    """Whether ``orthanc.*`` calls may release Python's lock: ``Python.AllowThreads`` is set and
    the Python plugin is 4.2 or later (its move callback with steps; 4.0 has neither).

    Read at start (the REST API is not up yet); ``Runtime.threads_released`` confirms it with
    the plugin's version at the first query.
    """
    python = runtime.orthanc_config.get("Python", {})
    wanted = isinstance(python, Mapping) and python.get("AllowThreads") is True
    return wanted and capabilities_of(runtime.orthanc).move_steps


def install(runtime: Runtime) -> None:
    """Register the stand-ins for Orthanc's job routes and (where safe) its modality queries."""
    for pattern, resources_form in JOB_ROUTES:

        def job(call: RestCall, resources_form: bool = resources_form) -> Reply:
            return hand_on_job(runtime, call, resources_form)

        register(runtime, pattern, {"POST": job}, name="job-body-limits", like_orthanc=True)
    if not releases_python_lock(runtime):
        return

    # A query stores nothing and waits for the remote modality: it holds no index lock meanwhile.
    query = checked_hand_on(runtime, ORTHANC_JSON, writes=False)
    register(runtime, QUERY_ROUTE, {"POST": query}, name="query-body-limits", like_orthanc=True)
