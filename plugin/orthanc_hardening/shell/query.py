"""Verified query answers on REST and C-FIND: items whose index tags disagree with their seals.

``install(runtime, storage, recorder)``:

* keeps the sealed-tag catalogue (``services/tag_catalogue.py``) of the index tags of every
  sealed instance, read once from verified bytes and followed by a background thread.
* overrides, for every authenticated user: ``POST /tools/find``, ``GET /patients``, ``/studies``,
  ``/series`` (with ``expand``, ``since``, ``limit``), ``GET /{level}/{id}`` (``DELETE`` is passed
  through), and child lookups (``/patients/{id}/studies``, ``/studies/{id}/series``,
  ``/series/{id}/study``, …). Orthanc's own answer is fetched with ``orthanc.RestApiGet/Post``
  (index queries, never jobs) and filtered: enforce mode withholds mismatching items, monitor
  flags them; unsealed items follow ``Hardening.UnsealedPolicy``. Headers
  ``X-Hardening-Withheld`` / ``X-Hardening-Flagged`` give the counts; a withheld or flagged item
  is named in a Security Alert.
* registers the C-FIND handler (``RegisterFindCallback``, or ``RegisterFindCallback2`` with the
  peer's IP on Python plugin 7.0+): it records the query, answers from Orthanc's own
  ``/tools/find`` filtered the same way, refuses in lockdown, and marks the answer incomplete
  when something was withheld.
* QIDO-RS (orthanc-dicomweb): an HTTP gate re-runs the search as a ``/tools/find`` over a superset
  of its constraints before orthanc-dicomweb answers; in enforce mode the whole search is refused
  (403) when an item it could return disagrees with its seals (item-by-item filtering of another
  plugin's answer is not possible from here).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol
from urllib.parse import quote

from pydicom.datadict import keyword_for_tag

from orthanc_hardening.audit.event import Outcome, Transport
from orthanc_hardening.errors import AccessDeniedError, HardeningError, IntegrityError, SealMismatchError
from orthanc_hardening.identity import HttpRequest, Requester, dimse_requester
from orthanc_hardening.integrity.cfind import (
    MODALITIES_IN_STUDY,
    PATIENT_INSTANCES,
    PATIENT_SERIES,
    PATIENT_STUDIES,
    QIDO_ROUTE,
    SERIES_INSTANCES,
    SOP_CLASSES_IN_STUDY,
    STUDY_INSTANCES,
    STUDY_SERIES,
    FindQuery,
    Sequences,
    Value,
    answer_dataset,
    answer_elements,
    counters_of,
    find_bodies,
    joined,
    lookup,
    needs_instance_tags,
    parse_query,
    qido_keyword,
    tag_key,
)
from orthanc_hardening.integrity.query import (
    INSTANCE,
    FilteredAnswer,
    ItemCheck,
    Verdict,
    level_of,
    missing_from_answer,
)
from orthanc_hardening.request_body import parse_json_object
from orthanc_hardening.services.tag_catalogue import SealedTagCatalogue
from orthanc_hardening.shell.guard import (
    JSON_CONTENT_TYPE,
    RestRefusal,
    alert,
    answer_json,
    decide,
    mark_audited,
    refuse_raise,
    security_alert,
)
from orthanc_hardening.shell.orthanc_api import OrthancCoreError, core_call
from orthanc_hardening.shell.requester import rest_requester
from orthanc_hardening.shell.rest import describe_errors
from orthanc_hardening.shell.runtime import Runtime
from orthanc_hardening.shell.storage import SealedStorage
from orthanc_hardening.stores.seal_store import SealReader
from orthanc_hardening.stores.sql import SEALS_SCHEMA, open_store_database
from orthanc_hardening.stores.tag_store import SQLiteTagStore

logger = logging.getLogger(__name__)

DICOM = 1
FIND_ROUTE = "/tools/find"
# Fields that make a /tools/find answer a page or a subset on purpose: no completeness check.
_PARTIAL_FIND_FIELDS = ("Since", "Limit", "Labels", "LabelsConstraint", "ParentPatient", "ParentStudy",
                        "ParentSeries", "MetadataQuery", "OrderBy")
MISSING_HEADER = "X-Hardening-Missing"
LIST_ROUTE = "/(patients|studies|series)"
RESOURCE_ROUTE = "/(patients|studies|series|instances)/([^/]+)"
CHILD_ROUTE = "/(patients|studies|series|instances)/([^/]+)/(patient|study|series|studies|instances)"
WITHHELD_HEADER = "X-Hardening-Withheld"
FLAGGED_HEADER = "X-Hardening-Flagged"
_FORMAT_FLAGS = ("short", "full", "simplify", "requestedTags", "requested-tags")
# Fields of a /tools/find body that change the form of the answer, not which resources match.
_FIND_FORM_FIELDS = ("RequestedTags", "Short", "Full", "ResponseContent")
_PLURAL_OF = {"Patient": "patients", "Study": "studies", "Series": "series", "Instance": "instances"}


# -- REST -----------------------------------------------------------------------------------


# For each level, the parents Orthanc reports as RemainingAncestor candidates, nearest first.
_PARENTS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "instances": (("ParentSeries", "series", "Series"), ("ParentStudy", "studies", "Study"),
                  ("ParentPatient", "patients", "Patient")),
    "series": (("ParentStudy", "studies", "Study"), ("ParentPatient", "patients", "Patient")),
    "studies": (("ParentPatient", "patients", "Patient"),),
    "patients": (),
}
_TYPES = {"series": "Series", "studies": "Study", "patients": "Patient"}

def _item_id(item: Any) -> str | None:
    """The Orthanc id of one item of a ``/tools/find`` answer (a bare id, or an object's ``ID``)."""
    if isinstance(item, str):
        return item
    if isinstance(item, dict) and isinstance(item.get("ID"), str):
        return str(item["ID"])
    return None


def _query_string(get: Mapping[str, str], overrides: Mapping[str, str | None]) -> str:
    merged: dict[str, str] = {k: v for k, v in get.items()}
    for key, value in overrides.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    if not merged:
        return ""
    # Orthanc splits list arguments (requestedTags=A;B, or A,B) before decoding: those separators
    # stay as they are.
    parts = [quote(k, safe="") if v == "" else f"{quote(k, safe='')}={quote(v, safe=';,')}" for k, v in merged.items()]
    return "?" + "&".join(parts)


def _wants_other_format(get: Mapping[str, str]) -> bool:
    return any(flag in get for flag in _FORMAT_FLAGS)


class QueryRecorder(Protocol):
    """Where C-FIND queries are recorded (``shell.audit_hooks.AuditHooks``)."""

    def record_query(self, requester: Requester, route: str, detail: str, outcome: Outcome = Outcome.SUCCESS,
                     patient_id: str = "", study_uid: str = "", series_uid: str = "") -> None: ...


class QueryVerifier:
    """The REST overrides and the C-FIND handler."""

    def __init__(self, runtime: Runtime, catalogue: SealedTagCatalogue, recorder: QueryRecorder) -> None:
        self.runtime = runtime
        self.catalogue = catalogue
        self.recorder = recorder
        self._alerted_unsealed: set[str] = set()
        self._alert_lock = threading.Lock()

    # -- shared -----------------------------------------------------------------------------

    def judge(self, items: list[Any], requester: Requester, route: str, level: str | None = None) -> FilteredAnswer:
        """Filter expanded items, count them, and record Security Alerts for what was withheld or flagged."""
        config = self.runtime.config
        answer = self.catalogue.filter(items, config.mode, config.unsealed_policy, level)
        metrics = self.runtime.metrics
        metrics.increment("query_items_checked_total", len(items))
        if answer.withheld:
            metrics.increment("query_withheld_total", len(answer.withheld))
        if answer.flagged:
            metrics.increment("query_flagged_total", len(answer.flagged))
        for check in answer.withheld:
            self._alert(check, requester, route, "withheld")
        for check in answer.flagged:
            self._alert(check, requester, route, "flagged")
        return answer

    def _alert(self, check: ItemCheck, requester: Requester, route: str, what: str) -> None:
        if check.verdict is Verdict.UNSEALED:
            with self._alert_lock:
                if check.resource_id in self._alerted_unsealed:
                    return
                if len(self._alerted_unsealed) > 100_000:
                    self._alerted_unsealed.clear()
                self._alerted_unsealed.add(check.resource_id)
        logger.warning("query answer: %s %s (%s)", what, check.resource_id, check.verdict.value)
        identity = {}
        if "StudyInstanceUID" in check.uids:
            identity["study_uid"] = check.uids["StudyInstanceUID"]
        if "SeriesInstanceUID" in check.uids:
            identity["series_uid"] = check.uids["SeriesInstanceUID"]
        outcome = Outcome.MINOR_FAILURE if check.verdict is Verdict.UNSEALED else Outcome.SERIOUS_FAILURE
        try:
            security_alert(self.runtime, requester, route, f"query answer {what}: {check.detail}", outcome,
                           **identity)
        except HardeningError:
            logger.error("could not audit the query verification of %s", check.resource_id)
            # A withheld mismatch must be on the record: without it the answer is refused.
            if self.runtime.config.is_enforcing and check.verdict is not Verdict.UNSEALED:
                raise


    def hidden_from_answer(self, level: str, query: Mapping[str, Any], answered: Iterable[Any],
                           requester: Requester, route: str) -> list[str]:
        """Sealed resources an answer should hold but does not, each alerted (complete answers).

        The catalogue of seals says who has what (``integrity.query.missing_from_answer``); a
        resource it names that Orthanc's index still holds, but did not return, was hidden by an
        edit of the index's identifiers. Checked for exact-identifier queries only.

        Raises:
            IntegrityError: in enforce mode, when a sealed resource is missing.
        """
        answered_ids = {str(i) for i in (_item_id(item) for item in answered) if i}
        with self.catalogue.lock:
            self.catalogue.refresh()
            missing = missing_from_answer(level, query, answered_ids, self.catalogue.index)
        hidden = []
        for resource_id in missing:
            try:
                json.loads(self.runtime.orthanc.RestApiGet(f"/{_PLURAL_OF[level]}/{resource_id}"))
            except Exception:
                continue  # deleted since: not hidden
            hidden.append(resource_id)
        if not hidden:
            return []
        self.runtime.metrics.increment("query_missing_total", len(hidden))
        constraints = ", ".join(f"{k}={v}" for k, v in sorted(query.items()) if isinstance(v, str) and v)
        for resource_id in hidden:
            logger.warning("query answer: missing %s %s (%s)", level, resource_id, constraints)
            alert(self.runtime, requester, route,
                  f"query answer incomplete: sealed {level.lower()} {resource_id} matches {constraints} but "
                  "Orthanc's index did not return it (its identifiers were edited in the index)")
        if self.runtime.config.is_enforcing:
            raise mark_audited(IntegrityError(
                f"query answer incomplete: {len(hidden)} sealed {level.lower()}(s) matching the query are hidden "
                f"by Orthanc's index ({', '.join(hidden[:5])})"))
        return hidden

    def _answer(self, output: Any, payload: Any, answer: FilteredAnswer, raw: Any = None) -> None:
        """Answer JSON with the verification headers; ``raw`` is Orthanc's own body when unchanged."""
        for name, value in answer.headers.items():
            output.SetHttpHeader(name, value)
        output.AnswerBuffer(raw if raw is not None else json.dumps(payload), JSON_CONTENT_TYPE)

    def _run(self, output: Any, uri: str, request: Mapping[str, Any], body: Callable[[Requester], None]) -> None:
        # These routes stand in for Orthanc's own: a client sees Orthanc's error format for
        # Orthanc's errors and bad requests, the plugin's for its refusals.
        requester = rest_requester(self.runtime, uri, request)
        refusal = RestRefusal(output, uri, str(request.get("method", "GET")), like_orthanc=True,
                              describe=describe_errors(self.runtime))
        decide(self.runtime, uri, requester, lambda: body(requester), refusal)

    def _answer_list(self, output: Any, answer: Any, items: list[Any], raw: Any, expanded: bool,
                     refetch: Callable[[], Any] | None) -> None:
        """Answer a verified list the way Orthanc would have answered it.

        Not expanded: the kept ids. Expanded in another format (``Short``/``Full``/requested
        tags): Orthanc's own answer, fetched again by ``refetch`` and filtered to the kept ids.
        Expanded: the verified items, or Orthanc's bytes unchanged when nothing was withheld.
        """
        kept_ids = [item["ID"] for item in answer.kept]
        if not expanded:
            payload: Any = kept_ids
        elif refetch is not None:
            allowed = set(kept_ids)
            payload = [item for item in json.loads(refetch()) if item.get("ID") in allowed]
        else:
            payload = list(answer.kept)
            if len(answer.kept) == len(items):
                self._answer(output, None, answer, raw)
                return
        self._answer(output, payload, answer)

    # -- routes -----------------------------------------------------------------------------

    def on_find(self, output: Any, uri: str, **request: Any) -> None:
        """``POST /tools/find``: Orthanc's own answer to the client's exact body, verified.

        The body goes to Orthanc unchanged, so every field Orthanc knows (``ResponseContent``,
        ``RequestedTags``, ``OrderBy``, ``Since``, ``Limit``, ``Labels``… whatever the version)
        keeps its meaning and the answer its form. The items are then verified against their
        seals by id, from the expanded form of the same query (one more index query, unless the
        client asked for exactly that form). With nothing withheld the client gets Orthanc's
        bytes as they are.
        """
        def body(requester: Requester) -> None:
            if str(request.get("method", "")).upper() != "POST":
                output.SendMethodNotAllowed("POST")
                return
            raw_body = request.get("body") or b""
            query = parse_json_object(raw_body)
            orthanc = self.runtime.orthanc
            raw = core_call(orthanc.RestApiPost, FIND_ROUTE, raw_body)
            answered = json.loads(raw)
            if not isinstance(answered, list):
                raise OrthancCoreError(500, "Orthanc's /tools/find answer is not a list")
            level = level_of(str(query.get("Level", "")))
            expanded = self._expanded_for(query, answered, level)
            answer = self.judge(expanded, requester, "/tools/find", level)
            constraints = query.get("Query")
            if isinstance(constraints, dict) and not any(key in query for key in _PARTIAL_FIND_FIELDS):
                hidden = self.hidden_from_answer(level, constraints, expanded, requester, "/tools/find")
                if hidden:
                    output.SetHttpHeader(MISSING_HEADER, str(len(hidden)))
            if not answer.withheld:
                self._answer(output, None, answer, raw)
                return
            kept = {item["ID"] for item in answer.kept}
            self._answer(output, [item for item in answered if _item_id(item) in kept], answer)

        self._run(output, uri, request, body)

    def _expanded_for(self, query: Mapping[str, Any], answered: list[Any], level: str) -> list[Any]:
        """The expanded form (``ID``, main tags) of each answered item, in the answer's order.

        The expanded form comes from the same query with only its form changed; an item that
        query did not return (the index changed in between) is read by id.
        """
        if query.get("Expand") is True and not any(key in query for key in _FIND_FORM_FIELDS):
            return answered
        check = {key: value for key, value in query.items() if key not in _FIND_FORM_FIELDS and key != "Expand"}
        check["Expand"] = True
        orthanc = self.runtime.orthanc
        checked = json.loads(core_call(orthanc.RestApiPost, FIND_ROUTE, json.dumps(check)))
        by_id = {item.get("ID"): item for item in checked if isinstance(item, dict)}
        plural = _PLURAL_OF[level]
        expanded = []
        for item in answered:
            resource_id = _item_id(item)
            if resource_id is None:
                raise OrthancCoreError(500, "an item of Orthanc's /tools/find answer has no ID")
            found = by_id.get(resource_id)
            if found is None:
                found = json.loads(core_call(orthanc.RestApiGet, f"/{plural}/{resource_id}"))
            expanded.append(found)
        return expanded

    def on_list(self, output: Any, uri: str, **request: Any) -> None:
        def body(requester: Requester) -> None:
            if str(request.get("method", "")).upper() != "GET":
                output.SendMethodNotAllowed("GET")
                return
            plural = request["groups"][0]
            get = dict(request.get("get") or {})
            orthanc = self.runtime.orthanc
            raw = core_call(orthanc.RestApiGet, f"/{plural}" + _query_string(
                {k: v for k, v in get.items() if k not in _FORMAT_FLAGS}, {"expand": ""}))
            items = json.loads(raw)
            answer = self.judge(items, requester, f"/{plural}", level_of(plural))
            self._answer_list(output, answer, items, raw, "expand" in get, (
                lambda: core_call(orthanc.RestApiGet, f"/{plural}" + _query_string(get, {})))
                if _wants_other_format(get) else None)

        self._run(output, uri, request, body)

    def on_resource(self, output: Any, uri: str, **request: Any) -> None:
        def body(requester: Requester) -> None:
            method = str(request.get("method", "")).upper()
            plural, resource_id = request["groups"][0], request["groups"][1]
            orthanc = self.runtime.orthanc
            if method == "DELETE":
                self._delete(output, plural, resource_id, uri)
                return
            if method != "GET":
                output.SendMethodNotAllowed("GET,DELETE")
                return
            get = dict(request.get("get") or {})
            try:
                item = json.loads(core_call(orthanc.RestApiGet, f"/{plural}/{resource_id}"))
            except OrthancCoreError as exc:
                if exc.status != 404:
                    raise
                output.SendHttpStatusCode(404)  # Orthanc answers an unknown resource with an empty 404
                return
            self._single(output, requester, uri, level_of(plural), item, get)

        self._run(output, uri, request, body)

    def _delete(self, output: Any, plural: str, resource_id: str, uri: str) -> None:
        """Forward a DELETE and answer ``{"RemainingAncestor": …}`` as Orthanc does.

        ``orthanc.RestApiDelete`` returns no body, so the nearest ancestor that still exists is
        found here: the chain of parents is read before the deletion, and checked after it.
        """
        orthanc = self.runtime.orthanc
        resource = json.loads(core_call(orthanc.RestApiGet, f"/{plural}/{resource_id}"))
        ancestors: list[tuple[str, str]] = []
        current, level = resource, plural
        for parent_key, parent_plural, _parent_type in _PARENTS.get(level, ()):
            parent_id = str(current.get(parent_key, ""))
            if not parent_id:
                break
            ancestors.append((parent_plural, parent_id))
            if parent_plural != "patients":
                current = json.loads(core_call(orthanc.RestApiGet, f"/{parent_plural}/{parent_id}"))
        with self.runtime.index_writes:  # the storage removes run inside Orthanc's deletion
            core_call(orthanc.RestApiDelete, uri)
        remaining = None
        for parent_plural, parent_id in ancestors:
            try:
                orthanc.RestApiGet(f"/{parent_plural}/{parent_id}")
            except Exception:  # gone with the deletion: look further up
                continue
            remaining = {"ID": parent_id, "Path": f"/{parent_plural}/{parent_id}", "Type": _TYPES[parent_plural]}
            break
        answer_json(output, 200, {"RemainingAncestor": remaining})

    def on_child(self, output: Any, uri: str, **request: Any) -> None:
        def body(requester: Requester) -> None:
            if str(request.get("method", "")).upper() != "GET":
                output.SendMethodNotAllowed("GET")
                return
            plural, resource_id, child = request["groups"]
            get = dict(request.get("get") or {})
            orthanc = self.runtime.orthanc
            plain = json.loads(core_call(orthanc.RestApiGet, f"/{plural}/{resource_id}/{child}" + _query_string(
                {k: v for k, v in get.items() if k not in _FORMAT_FLAGS}, {})))
            level = level_of(child)
            if isinstance(plain, dict):
                self._single(output, requester, uri, level, plain, get, path=f"/{plural}/{resource_id}/{child}")
                return
            answer = self.judge(plain, requester, uri, level)
            payload: Any = list(answer.kept)
            if _wants_other_format(get):
                allowed = {item["ID"] for item in answer.kept}
                original = json.loads(core_call(orthanc.RestApiGet, f"/{plural}/{resource_id}/{child}"
                                            + _query_string(get, {})))
                payload = [item for item in original if item.get("ID") in allowed]
            self._answer(output, payload, answer)

        self._run(output, uri, request, body)

    def _single(self, output: Any, requester: Requester, uri: str, level: str, item: Mapping[str, Any],
                get: Mapping[str, str], path: str | None = None) -> None:
        answer = self.judge([item], requester, uri, level)
        if answer.withheld:
            for name, value in answer.headers.items():
                output.SetHttpHeader(name, value)
            raise SealMismatchError(answer.withheld[0].detail)
        payload: Any = item
        if _wants_other_format(get):
            payload = json.loads(core_call(self.runtime.orthanc.RestApiGet, (path or uri) + _query_string(get, {})))
        self._answer(output, payload, answer)

    # -- QIDO-RS (orthanc-dicomweb) -------------------------------------------------------

    def qido_gate(self, request: HttpRequest) -> None:
        """HTTP gate: check what a QIDO-RS search could return before orthanc-dicomweb answers it.

        orthanc-dicomweb answers from the same index, and its answer cannot be filtered item by
        item from here; so the search is re-run as a ``/tools/find`` over a superset of its
        constraints (every match key that names a main DICOM tag, the UIDs of the path) and, in
        enforce mode, the whole search is refused (403) when any item it could return is withheld.

        Raises:
            AccessDeniedError: an item the search could return disagrees with its seals (enforce).
        """
        if request.method != "GET":
            return
        match = QIDO_ROUTE.fullmatch(request.uri)
        if match is None:
            return
        level = level_of(match.group("level"))
        constraints: dict[str, str] = {}
        if match.group("study"):
            constraints["StudyInstanceUID"] = match.group("study")
        if match.group("series"):
            constraints["SeriesInstanceUID"] = match.group("series")
        for key, value in request.query.items():
            name = qido_keyword(key)
            if name and value and name not in constraints:
                constraints[name] = value
        items = json.loads(self.runtime.orthanc.RestApiPost(
            FIND_ROUTE, json.dumps({"Level": level, "Query": constraints, "Expand": True})))
        answer = self.judge(items, request.requester, request.uri, level)
        withheld = list(answer.withheld)
        if level in ("Series", INSTANCE):
            # QIDO answers carry the study's and patient's attributes at every level.
            withheld_parents, _kept = self.judge_parent_studies(answer.kept, level, request.requester, request.uri)
            withheld.extend(withheld_parents)
        if withheld:
            raise AccessDeniedError(f"QIDO-RS search refused: {len(withheld)} matching item(s) disagree "
                                    f"with their seals ({', '.join(c.resource_id for c in withheld[:5])})")
        if not any(key.lower() in ("limit", "offset") for key in request.query):
            self.hidden_from_answer(level, constraints, items, request.requester, request.uri)

    def judge_parent_studies(self, items: Iterable[Mapping[str, Any]], level: str, requester: Requester,
                             route: str) -> tuple[list[ItemCheck], list[Mapping[str, Any]]]:
        """Check the parent study of each series or instance; return the withheld studies and the kept items."""
        orthanc = self.runtime.orthanc
        series_cache: dict[str, Any] = {}
        study_of: dict[int, str] = {}
        studies: dict[str, Any] = {}
        listed = list(items)
        for position, item in enumerate(listed):
            if level == INSTANCE:
                series_id = str(item.get("ParentSeries", ""))
                if series_id not in series_cache:
                    series_cache[series_id] = json.loads(orthanc.RestApiGet(f"/series/{series_id}"))
                study_id = str(series_cache[series_id].get("ParentStudy", ""))
            else:
                study_id = str(item.get("ParentStudy", ""))
            study_of[position] = study_id
            if study_id not in studies:
                studies[study_id] = json.loads(orthanc.RestApiGet(f"/studies/{study_id}"))
        verdict = self.judge(list(studies.values()), requester, route, "Study")
        bad = {check.resource_id for check in verdict.withheld}
        kept = [item for position, item in enumerate(listed) if study_of[position] not in bad]
        return list(verdict.withheld), kept

    # -- C-FIND -----------------------------------------------------------------------------

    def _audit_cfind(self, requester: Requester, level: str, constraints: dict[str, str], returned: int) -> None:
        """Record the C-FIND as a Query (110112) before its answers leave (raises if the store fails)."""
        detail = json.dumps({"level": level, "query": constraints, "returned": returned}, sort_keys=True)
        self.recorder.record_query(requester, "C-FIND", detail, patient_id=constraints.get("PatientID", ""),
                              study_uid=constraints.get("StudyInstanceUID", ""),
                              series_uid=constraints.get("SeriesInstanceUID", ""))

    def on_cfind(self, answers: Any, query: Any, issuer_aet: str, called_aet: str) -> None:
        """``RegisterFindCallback`` (every plugin version): the peer's AE titles, no IP."""
        self.answer_cfind(answers, query, Requester(transport=Transport.DIMSE, calling_aet=issuer_aet,
                                                    called_aet=called_aet))

    def on_cfind_connection(self, answers: Any, query: Any, connection: Any) -> None:
        """``RegisterFindCallback2`` (Python plugin 7.0+): the DICOM connection names the peer's IP too."""
        self.answer_cfind(answers, query, dimse_requester(connection))

    def answer_cfind(self, answers: Any, query: Any, requester: Requester) -> None:
        """Answer C-FIND as Orthanc would, from Orthanc's ``/tools/find``, filtered, behind the guard.

        A refusal is 0xC000, as is a query Orthanc itself would refuse.
        """
        decide(self.runtime, "C-FIND", requester, lambda: self._cfind(answers, query, requester), refuse_raise)

    def _cfind(self, answers: Any, query: Any, requester: Requester) -> None:
        if self.runtime.lockdown:
            raise AccessDeniedError("orthanc-hardening is in lockdown: " + ", ".join(self.runtime.lockdown))
        request = parse_query(_query_elements(query))
        orthanc = self.runtime.orthanc
        settings = self.runtime.orthanc_config
        finder = self.runtime.capabilities.resource_finder
        sequences = Sequences.of(finder, self.runtime.capabilities.loader_threads)
        bodies = find_bodies(request, bool(settings.get("CaseSensitivePN", False)), finder)
        items = json.loads(orthanc.RestApiPost(FIND_ROUTE, json.dumps(bodies[0])))
        for body in bodies[1:]:
            also = set(json.loads(orthanc.RestApiPost(FIND_ROUTE, json.dumps(body))))
            items = [item for item in items if item.get("ID") in also]
        limit = int(settings.get("LimitFindInstances" if request.level == INSTANCE else "LimitFindResults", 0) or 0)
        answer = self.judge(items, requester, "C-FIND", request.level)
        kept = list(answer.kept)
        withheld_parents: list[ItemCheck] = []
        if request.level in ("Series", INSTANCE):
            withheld_parents, kept = self.judge_parent_studies(kept, request.level, requester, "C-FIND")
        constraints = {str(keyword_for_tag(key.tag) or tag_key(key.tag)): key.constraint
                       for key in request.keys if key.constraint}
        self.hidden_from_answer(request.level, constraints, items, requester, "C-FIND")
        self._audit_cfind(requester, request.level, constraints, len(kept))
        retrieve_aet = str(settings.get("DicomAet", "ORTHANC"))
        cache: dict[str, Any] = {}
        for item in kept:
            values = self._cfind_values(item, request, finder, cache)
            answers.FindAddAnswer(answer_dataset(answer_elements(request, values, retrieve_aet, sequences)))
        if answer.withheld or withheld_parents or (limit and len(items) > limit):
            if answer.withheld or withheld_parents:
                logger.warning("C-FIND from %s: %d item(s) withheld", requester.calling_aet, len(items) - len(kept))
            answers.FindMarkIncomplete()

    def _cfind_values(self, item: Mapping[str, Any], request: FindQuery, finder: bool,
                      cache: dict[str, Any]) -> dict[int, Value]:
        """The value of every key for one matching resource, where Orthanc takes it from."""
        if finder:
            sources = [item.get("RequestedTags") or {}, item.get("MainDicomTags") or {},
                       item.get("PatientMainDicomTags") or {}]
        elif needs_instance_tags(request):
            sources = [json.loads(self.runtime.orthanc.RestApiGet(
                f"/instances/{self._sample_instance(item, request.level, cache)}/tags?short"))]
        else:
            sources = [item.get("MainDicomTags") or {}, item.get("PatientMainDicomTags") or {},
                       *self._parent_tags(item, request.level, cache)]
        values: dict[int, Value] = {key.tag: lookup(key.tag, *sources) for key in request.keys}
        if not finder:
            values.update(self._counters(str(item.get("ID", "")), request, cache))
        return values

    def _get(self, uri: str, cache: dict[str, Any]) -> Any:
        if uri not in cache:
            cache[uri] = json.loads(self.runtime.orthanc.RestApiGet(uri))
        return cache[uri]

    def _sample_instance(self, item: Mapping[str, Any], level: str, cache: dict[str, Any]) -> str:
        """One instance of the resource (Orthanc before 1.12.5 answers from one instance's tags)."""
        resource, children = item, {"Patient": "Studies", "Study": "Series", "Series": "Instances"}
        plural = {"Studies": "studies", "Series": "series"}
        while level != INSTANCE:
            child = str(resource[children[level]][0])
            if children[level] == "Instances":
                return child
            resource = self._get(f"/{plural[children[level]]}/{child}", cache)
            level = {"Patient": "Study", "Study": "Series"}[level]
        return str(item.get("ID", ""))

    def _counters(self, resource_id: str, request: FindQuery, cache: dict[str, Any]) -> dict[int, Value]:
        """The counters Orthanc before 1.12.5 computes for a C-FIND (``ComputeCounters``)."""
        wanted = counters_of(request)
        if not wanted:
            return {}
        if request.level == "Patient":
            studies = self._get(f"/patients/{resource_id}", cache)["Studies"]
            series = [s for study in studies for s in self._get(f"/studies/{study}", cache)["Series"]]
        elif request.level == "Study":
            studies, series = [resource_id], self._get(f"/studies/{resource_id}", cache)["Series"]
        else:
            studies, series = [], [resource_id]
        needs_instances = {PATIENT_INSTANCES, STUDY_INSTANCES, SERIES_INSTANCES, SOP_CLASSES_IN_STUDY} & set(wanted)
        instances = [i for s in series for i in self._get(f"/series/{s}", cache)["Instances"]] \
            if needs_instances else []
        found: dict[int, Value] = {
            PATIENT_STUDIES: str(len(studies)), PATIENT_SERIES: str(len(series)),
            PATIENT_INSTANCES: str(len(instances)), STUDY_SERIES: str(len(series)),
            STUDY_INSTANCES: str(len(instances)), SERIES_INSTANCES: str(len(instances)),
        }
        if MODALITIES_IN_STUDY in wanted:
            found[MODALITIES_IN_STUDY] = joined(
                str(modality) for s in series
                if isinstance(modality := (self._get(f"/series/{s}", cache).get("MainDicomTags") or {})
                              .get("Modality"), str))
        if SOP_CLASSES_IN_STUDY in wanted:
            found[SOP_CLASSES_IN_STUDY] = joined(
                self.runtime.orthanc.RestApiGet(f"/instances/{i}/metadata/SopClassUid").decode() for i in instances)
        return {tag: found[tag] for tag in wanted}

    def _parent_tags(self, item: Mapping[str, Any], level: str, cache: dict[str, Any]) -> list[Mapping[str, Any]]:
        found: list[Mapping[str, Any]] = []
        if level == INSTANCE:
            series = self._get(f"/series/{item.get('ParentSeries', '')}", cache)
            found.append(series.get("MainDicomTags") or {})
            study_id = str(series.get("ParentStudy", ""))
        elif level == "Series":
            study_id = str(item.get("ParentStudy", ""))
        else:
            return found
        study = self._get(f"/studies/{study_id}", cache)
        found.extend([study.get("MainDicomTags") or {}, study.get("PatientMainDicomTags") or {}])
        return found


def _query_elements(query: Any) -> Iterator[tuple[int, str | None]]:
    """The keys of a plugin C-FIND query; a key Orthanc holds as null (an empty number) reads as ``None``."""
    for index in range(query.GetFindQuerySize()):
        tag = (query.GetFindQueryTagGroup(index) << 16) | query.GetFindQueryTagElement(index)
        try:
            value: str | None = query.GetFindQueryValue(index)
        except Exception:  # Orthanc refuses to read a null value ("Bad type for a parameter")
            value = None
        yield tag, value


def install(runtime: Runtime, storage: SealedStorage, recorder: QueryRecorder) -> QueryVerifier:
    """Install the sealed-tag catalogue, the verified REST answers and the C-FIND handler.

    Raises:
        StoreUnavailableError: the tag store or the seal store cannot be opened.
    """
    catalogue = SealedTagCatalogue(
        SealReader(open_store_database(runtime.config.shared_database, SEALS_SCHEMA, runtime.config.seal_database,
                                       readonly=True)),
        SQLiteTagStore(runtime.config.data_directory / "query-tags.db", runtime.config.sqlite_synchronous),
        storage.root, storage.keyring, storage.cache, storage.take_index_tags)
    verifier = QueryVerifier(runtime, catalogue, recorder)
    orthanc = runtime.orthanc
    orthanc.RegisterRestCallback(FIND_ROUTE, verifier.on_find)
    orthanc.RegisterRestCallback(LIST_ROUTE, verifier.on_list)
    orthanc.RegisterRestCallback(CHILD_ROUTE, verifier.on_child)
    orthanc.RegisterRestCallback(RESOURCE_ROUTE, verifier.on_resource)
    if runtime.capabilities.find_connection:
        orthanc.RegisterFindCallback2(verifier.on_cfind_connection)  # type: ignore[attr-defined]
    else:
        orthanc.RegisterFindCallback(verifier.on_cfind)
    runtime.http_gates.append(verifier.qido_gate)

    deleted = orthanc.ChangeType.DELETED
    instance_level = orthanc.ResourceType.INSTANCE

    def forget_deleted(change_type: int, level: int, resource_id: str) -> None:
        if change_type == deleted and level == instance_level:
            catalogue.forget(resource_id)

    runtime.change_observers.append(forget_deleted)

    # New instances are indexed by a background thread soon after they are stored, so a query
    # right after a bulk ingest does not read the new files itself.
    wake = threading.Event()
    stopping = threading.Event()
    new_instance = orthanc.ChangeType.NEW_INSTANCE

    def follow_seals() -> None:
        started = time.monotonic()
        first = True
        while not stopping.is_set():
            try:
                catalogue.refresh()
            except HardeningError as exc:
                logger.error("sealed tag catalogue not refreshed: %s", exc)
            if first:
                logger.info("sealed tag catalogue: %d instances in %.1f s", len(catalogue),
                            time.monotonic() - started)
                first = False
            wake.wait(5.0)
            wake.clear()
            stopping.wait(0.2)  # gather a burst of new instances into one refresh

    def on_new_instance(change_type: int, _level: int, _resource: str) -> None:
        if change_type == new_instance:
            wake.set()

    runtime.change_observers.append(on_new_instance)
    follower = threading.Thread(target=follow_seals, name="hardening-query-tags", daemon=True)

    def stop_following() -> None:
        stopping.set()
        wake.set()
        if follower.is_alive():
            follower.join(30)

    runtime.stop_actions.append(stop_following)
    started_change = orthanc.ChangeType.ORTHANC_STARTED

    def warm_up_on_start(change_type: int, _level: int, _resource: str) -> None:
        if change_type == started_change and not stopping.is_set():
            follower.start()

    runtime.change_observers.append(warm_up_on_start)
    return verifier
