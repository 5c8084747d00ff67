"""Verified query answers on REST and C-FIND: items whose index tags disagree with their seals.

``install(runtime)``:

* keeps a ``SealedTagIndex`` (``integrity/query.py``) of the index tags of every sealed instance.
  The tags are read once from the instance's verified stored bytes (hash + seal signature + the
  seal's index-tag digest) and kept in ``DataDirectory/query-tags.db`` so a restart does not read
  the files again (each stored copy is re-checked against its seal's digest and signature when
  loaded). New seals are picked up from the seal store by row id before each verified query.
* overrides, for every authenticated user: ``POST /tools/find``, ``GET /patients``, ``/studies``,
  ``/series`` (with ``expand``, ``since``, ``limit``), ``GET /{level}/{id}`` (``DELETE`` is passed
  through), and child lookups (``/patients/{id}/studies``, ``/studies/{id}/series``,
  ``/series/{id}/study``, …). Orthanc's own answer is fetched with ``orthanc.RestApiGet/Post``
  (index queries, never jobs) and filtered: enforce mode withholds mismatching items, monitor
  flags them; unsealed items follow ``Hardening.UnsealedPolicy``. Headers
  ``X-Hardening-Withheld`` / ``X-Hardening-Flagged`` give the counts; a withheld or flagged item
  is named in a Security Alert.
* registers the C-FIND handler (``RegisterFindCallback``): it answers from Orthanc's own
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
import re
import sqlite3
import struct
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

from orthanc_hardening.audit.event import Outcome, Transport
from orthanc_hardening.errors import (
    AccessDeniedError,
    BadRequestError,
    HardeningError,
    IntegrityError,
    SealMismatchError,
    StoreUnavailableError,
)
from orthanc_hardening.identity import HttpRequest, Requester, dimse_requester, http_requester, transport_of_uri
from orthanc_hardening.integrity.query import (
    INSTANCE,
    FilteredAnswer,
    ItemCheck,
    SealedTagIndex,
    Verdict,
    filter_answer,
    level_of,
    sealed_instance_tags,
)
from orthanc_hardening.request_body import parse_json_object
from orthanc_hardening.seal.identity import identity_of_dataset, parse_dataset
from orthanc_hardening.seal.index_tags import IndexTags
from orthanc_hardening.seal.layout import attachment_path
from orthanc_hardening.seal.record import Seal, verify_seal
from orthanc_hardening.shell.guard import answer_error, answer_json, gatekeeper, security_alert
from orthanc_hardening.shell.runtime import Runtime

logger = logging.getLogger(__name__)

DICOM = 1
FIND_ROUTE = "/tools/find"
LIST_ROUTE = "/(patients|studies|series)"
RESOURCE_ROUTE = "/(patients|studies|series|instances)/([^/]+)"
CHILD_ROUTE = "/(patients|studies|series|instances)/([^/]+)/(patient|study|series|studies|instances)"
WITHHELD_HEADER = "X-Hardening-Withheld"
FLAGGED_HEADER = "X-Hardening-Flagged"
_FORMAT_FLAGS = ("short", "full", "simplify", "requestedTags", "requested-tags")
# Fields of a /tools/find body that change the form of the answer, not which resources match.
_FIND_FORM_FIELDS = ("RequestedTags", "Short", "Full", "ResponseContent")
_PLURAL_OF = {"Patient": "patients", "Study": "studies", "Series": "series", "Instance": "instances"}
_ORTHANC_STATUS = {0: 200, 1: 500, 3: 400, 7: 404, 8: 400, 13: 404, 17: 404}
_TAGS_SCHEMA = """
CREATE TABLE IF NOT EXISTS sealed_tags (
    seal_uuid TEXT PRIMARY KEY,
    instance_id TEXT NOT NULL,
    tags TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class SealedTagCatalogue:
    """The sealed index tags of every sealed instance, kept in memory and in SQLite.

    Follows the seal store by row id (``refresh``). Thread-safe.
    """

    def __init__(self, runtime: Runtime, root: Path, seal_db: Path, tags_db: Path) -> None:
        self.runtime = runtime
        self.root = root
        self.index = SealedTagIndex()
        self.lock = threading.RLock()
        self._last_rowid = 0
        self._seals = sqlite3.connect(f"file:{seal_db}?mode=ro", uri=True, check_same_thread=False, timeout=30)
        tags_db.parent.mkdir(parents=True, exist_ok=True)
        self._tags = sqlite3.connect(str(tags_db), check_same_thread=False, isolation_level=None, timeout=30)
        self._tags.execute("PRAGMA journal_mode=WAL")
        self._tags.execute(f"PRAGMA synchronous={runtime.config.sqlite_synchronous}")
        self._tags.executescript(_TAGS_SCHEMA)

    def refresh(self) -> None:
        """Add the tags of seals stored since the last refresh (reads new files once).

        Raises:
            StoreUnavailableError: the seal store or the tag store cannot be read.
        """
        with self.lock:
            try:
                rows = self._seals.execute(
                    "SELECT rowid, record FROM seals WHERE rowid > ? AND content_type = ? AND state = 'stored' "
                    "ORDER BY rowid", (self._last_rowid, DICOM)).fetchall()
            except sqlite3.Error as exc:
                raise StoreUnavailableError(f"seal store cannot be read: {exc}") from exc
            for rowid, record in rows:
                self._last_rowid = max(self._last_rowid, int(rowid))
                try:
                    seal = Seal.from_bytes(record)
                    if seal.index_tags_sha256:
                        self._add(seal)
                except (HardeningError, ValueError, OSError) as exc:
                    # A seal whose file or tags do not verify: its resources stay unknown here
                    # (reported as unsealed), the storage read and the scrub report the damage.
                    logger.warning("sealed tags of attachment %s not indexed: %s", _uuid_of(record), exc)

    def _add(self, seal: Seal) -> None:
        stored = self._tags.execute("SELECT tags FROM sealed_tags WHERE seal_uuid = ?", (seal.uuid,)).fetchone()
        tags: IndexTags | None = json.loads(stored[0]) if stored else None
        keyring = self.runtime.services["keyring"]
        if tags is None:
            # The storage create parsed these tags from the bytes it sealed moments ago.
            storage = self.runtime.services.get("sealed_storage")
            tags = storage.take_index_tags(seal) if storage is not None else None
            if tags is not None:
                keyring.verify(seal.key_id, seal.signed_bytes(), seal.signature_bytes)
        if tags is None:
            data = attachment_path(self.root, seal.uuid).read_bytes()
            verify_seal(seal, data, seal.uuid, keyring)
            _identity, tags = identity_of_dataset(parse_dataset(data))
        elif stored is not None:
            keyring.verify(seal.key_id, seal.signed_bytes(), seal.signature_bytes)
        entry = sealed_instance_tags(seal, tags)
        if stored is None:
            self._tags.execute("INSERT OR REPLACE INTO sealed_tags (seal_uuid, instance_id, tags) VALUES (?, ?, ?)",
                               (seal.uuid, entry.instance_id, json.dumps(tags, sort_keys=True)))
        self.index.add(entry)

    def forget(self, instance_id: str) -> None:
        """Forget a deleted instance."""
        with self.lock:
            self.index.remove(instance_id)

    def filter(self, items: Iterable[Mapping[str, Any]], level: str | None = None) -> FilteredAnswer:
        """Refresh, then filter an answer (see ``integrity.query.filter_answer``).

        Raises:
            StoreUnavailableError: the seal store cannot be read.
        """
        config = self.runtime.config
        with self.lock:
            self.refresh()
            return filter_answer(items, self.index, config.mode, config.unsealed_policy, level)


def _uuid_of(record: bytes) -> str:
    try:
        return str(json.loads(record).get("uuid", "?"))
    except ValueError:
        return "?"


# -- REST -----------------------------------------------------------------------------------


class CoreError(Exception):
    """Orthanc's core refused a forwarded call (unknown id, bad request)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status


# For each level, the parents Orthanc reports as RemainingAncestor candidates, nearest first.
_PARENTS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "instances": (("ParentSeries", "series", "Series"), ("ParentStudy", "studies", "Study"),
                  ("ParentPatient", "patients", "Patient")),
    "series": (("ParentStudy", "studies", "Study"), ("ParentPatient", "patients", "Patient")),
    "studies": (("ParentPatient", "patients", "Patient"),),
    "patients": (),
}
_TYPES = {"series": "Series", "studies": "Study", "patients": "Patient"}

_REASONS = {400: "Bad Request", 403: "Forbidden", 404: "Not Found", 409: "Conflict", 415: "Unsupported Media Type",
            500: "Internal Server Error"}
# Orthanc's ErrorCode for each HTTP status it maps to (OrthancFramework Enumerations).
_ORTHANC_CODES = {400: 8, 404: 17, 415: 3, 500: -1}


def _answer_like_orthanc(output: Any, status: int, detail: str, uri: str, request: Mapping[str, Any]) -> None:
    """Answer an error of an overridden core route the way Orthanc 1.10 itself does."""
    if status == 404:
        output.SendHttpStatusCode(404)  # Orthanc answers an unknown resource with an empty 404
        return
    body = {
        "Details": detail,
        "HttpError": _REASONS.get(status, "Error"),
        "HttpStatus": status,
        "Message": detail,
        "Method": str(request.get("method", "GET")).upper(),
        "OrthancError": detail,
        "OrthancStatus": _ORTHANC_CODES.get(status, -1),
        "Uri": uri,
    }
    answer_json(output, status, body)


def _core(call: Any, *args: Any) -> Any:
    try:
        return call(*args)
    except Exception as exc:
        code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
        status = _ORTHANC_STATUS.get(code, 500) if code is not None else 500
        raise CoreError(status, str(exc.args[1]) if len(exc.args) > 1 else "Orthanc refused the request") from exc


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
    parts = [quote(k, safe="") if v == "" else f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in merged.items()]
    return "?" + "&".join(parts)


def _wants_other_format(get: Mapping[str, str]) -> bool:
    return any(flag in get for flag in _FORMAT_FLAGS)


class QueryVerifier:
    """The REST overrides and the C-FIND handler."""

    def __init__(self, runtime: Runtime, catalogue: SealedTagCatalogue) -> None:
        self.runtime = runtime
        self.catalogue = catalogue
        self._alerted_unsealed: set[str] = set()
        self._alert_lock = threading.Lock()

    # -- shared -----------------------------------------------------------------------------

    def judge(self, items: list[Any], requester: Requester, route: str, level: str | None = None) -> FilteredAnswer:
        """Filter expanded items, count them, and record Security Alerts for what was withheld or flagged."""
        answer = self.catalogue.filter(items, level)
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
        outcome = Outcome.SERIOUS_FAILURE if check.verdict is Verdict.MISMATCH else Outcome.MINOR_FAILURE
        try:
            security_alert(self.runtime, requester, route, f"query answer {what}: {check.detail}", outcome,
                           **identity)
        except HardeningError:
            logger.error("could not audit the query verification of %s", check.resource_id)
            if self.runtime.config.is_enforcing and check.verdict is Verdict.MISMATCH:
                raise

    def _requester(self, uri: str, request: Mapping[str, Any]) -> Requester:
        current = self.runtime.current_request()
        ip = current.requester.source_ip if current is not None else ""
        return http_requester(dict(request.get("headers") or {}), ip, self.runtime.config, transport_of_uri(uri))

    def _answer(self, output: Any, payload: Any, answer: FilteredAnswer, raw: Any = None) -> None:
        """Answer JSON with the verification headers; ``raw`` is Orthanc's own body when unchanged."""
        for name, value in answer.headers.items():
            output.SetHttpHeader(name, value)
        output.AnswerBuffer(raw if raw is not None else json.dumps(payload), "application/json")

    def _run(self, output: Any, uri: str, request: Mapping[str, Any], body: Any) -> None:
        requester = self._requester(uri, request)
        with gatekeeper(self.runtime, output, uri, requester):
            try:
                body(requester)
            except CoreError as exc:
                _answer_like_orthanc(output, exc.status, str(exc), uri, request)
            except BadRequestError as exc:
                # These routes stand in for Orthanc's own: a client sees Orthanc's error format.
                _answer_like_orthanc(output, 400, str(exc), uri, request)

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
            raw = _core(orthanc.RestApiPost, FIND_ROUTE, raw_body)
            answered = json.loads(raw)
            if not isinstance(answered, list):
                raise CoreError(500, "Orthanc's /tools/find answer is not a list")
            level = level_of(str(query.get("Level", "")))
            expanded = self._expanded_for(query, answered, level)
            answer = self.judge(expanded, requester, "/tools/find", level)
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
        by_id = {item.get("ID"): item for item in json.loads(_core(orthanc.RestApiPost, FIND_ROUTE, json.dumps(check)))
                 if isinstance(item, dict)}
        plural = _PLURAL_OF[level]
        expanded = []
        for item in answered:
            resource_id = _item_id(item)
            if resource_id is None:
                raise CoreError(500, "an item of Orthanc's /tools/find answer has no ID")
            found = by_id.get(resource_id)
            if found is None:
                found = json.loads(_core(orthanc.RestApiGet, f"/{plural}/{resource_id}"))
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
            raw = _core(orthanc.RestApiGet, f"/{plural}" + _query_string(
                {k: v for k, v in get.items() if k not in _FORMAT_FLAGS}, {"expand": ""}))
            items = json.loads(raw)
            answer = self.judge(items, requester, f"/{plural}", level_of(plural))
            self._answer_list(output, answer, items, raw, "expand" in get, (
                lambda: _core(orthanc.RestApiGet, f"/{plural}" + _query_string(get, {})))
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
            item = json.loads(_core(orthanc.RestApiGet, f"/{plural}/{resource_id}"))
            self._single(output, requester, uri, level_of(plural), item, get)

        self._run(output, uri, request, body)

    def _delete(self, output: Any, plural: str, resource_id: str, uri: str) -> None:
        """Forward a DELETE and answer ``{"RemainingAncestor": …}`` as Orthanc does.

        ``orthanc.RestApiDelete`` returns no body, so the nearest ancestor that still exists is
        found here: the chain of parents is read before the deletion, and checked after it.
        """
        orthanc = self.runtime.orthanc
        resource = json.loads(_core(orthanc.RestApiGet, f"/{plural}/{resource_id}"))
        ancestors: list[tuple[str, str]] = []
        current, level = resource, plural
        for parent_key, parent_plural, _parent_type in _PARENTS.get(level, ()):
            parent_id = str(current.get(parent_key, ""))
            if not parent_id:
                break
            ancestors.append((parent_plural, parent_id))
            if parent_plural != "patients":
                current = json.loads(_core(orthanc.RestApiGet, f"/{parent_plural}/{parent_id}"))
        _core(orthanc.RestApiDelete, uri)
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
            plain = json.loads(_core(orthanc.RestApiGet, f"/{plural}/{resource_id}/{child}" + _query_string(
                {k: v for k, v in get.items() if k not in _FORMAT_FLAGS}, {})))
            level = level_of(child)
            if isinstance(plain, dict):
                self._single(output, requester, uri, level, plain, get, path=f"/{plural}/{resource_id}/{child}")
                return
            answer = self.judge(plain, requester, uri, level)
            payload: Any = list(answer.kept)
            if _wants_other_format(get):
                allowed = {item["ID"] for item in answer.kept}
                original = json.loads(_core(orthanc.RestApiGet, f"/{plural}/{resource_id}/{child}"
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
            payload = json.loads(_core(self.runtime.orthanc.RestApiGet, (path or uri) + _query_string(get, {})))
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
        match = _QIDO.fullmatch(request.uri)
        if match is None:
            return
        level = level_of(match.group("level"))
        constraints: dict[str, str] = {}
        if match.group("study"):
            constraints["StudyInstanceUID"] = match.group("study")
        if match.group("series"):
            constraints["SeriesInstanceUID"] = match.group("series")
        for key, value in request.query.items():
            name = _qido_keyword(key)
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
        recorder = self.runtime.services.get("audit_recorder")
        if recorder is None:
            return
        detail = json.dumps({"level": level, "query": constraints, "returned": returned}, sort_keys=True)
        recorder.record_query(requester, "C-FIND", detail, patient_id=constraints.get("PatientID", ""),
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
        """Answer C-FIND from Orthanc's ``/tools/find``, filtered; raise to refuse (0xC000)."""
        issuer_aet = requester.calling_aet
        if self.runtime.lockdown:
            raise AccessDeniedError("orthanc-hardening is in lockdown: " + ", ".join(self.runtime.lockdown))
        try:
            requested: dict[str, str] = {}
            for i in range(query.GetFindQuerySize()):
                requested[query.GetFindQueryTagName(i)] = query.GetFindQueryValue(i)
            level_name = requested.pop("QueryRetrieveLevel", "").strip()
            requested.pop("SpecificCharacterSet", None)
            try:
                level = level_of(level_name)
            except ValueError as exc:
                raise BadRequestError("QueryRetrieveLevel", f"unknown level {level_name!r}") from exc
            constraints = {name: value for name, value in requested.items() if value not in ("", "*")}
            orthanc = self.runtime.orthanc
            body = {"Level": level, "Query": constraints, "Expand": True}
            items = json.loads(orthanc.RestApiPost(FIND_ROUTE, json.dumps(body)))
            answer = self.judge(items, requester, "C-FIND", level)
            kept = list(answer.kept)
            withheld_parents: list[ItemCheck] = []
            if level in ("Series", INSTANCE):
                withheld_parents, kept = self.judge_parent_studies(kept, level, requester, "C-FIND")
            self._audit_cfind(requester, level, constraints, len(kept))
            parents: dict[str, Any] = {}
            for item in kept:
                fields = self._cfind_fields(item, level, requested, parents)
                fields["QueryRetrieveLevel"] = level_name.upper()
                answers.FindAddAnswer(answer_dataset(fields))
            if answer.withheld or withheld_parents:
                logger.warning("C-FIND from %s: %d item(s) withheld", issuer_aet,
                               len(answer.withheld) + len(items) - len(answer.withheld) - len(kept))
                answers.FindMarkIncomplete()
        except (HardeningError, ValueError, KeyError) as exc:
            logger.warning("C-FIND from %s refused: %s", issuer_aet, exc)
            if isinstance(exc, IntegrityError | AccessDeniedError):
                try:
                    security_alert(self.runtime, requester, "C-FIND", str(exc))
                except HardeningError:
                    logger.error("could not audit the refused C-FIND")
            raise

    def _cfind_fields(self, item: Mapping[str, Any], level: str, requested: Mapping[str, str],
                      parents: dict[str, Any]) -> dict[str, str]:
        sources: list[Mapping[str, Any]] = [item.get("MainDicomTags") or {}, item.get("PatientMainDicomTags") or {}]
        if level in ("Series", INSTANCE):
            sources.extend(self._parent_tags(item, level, parents))
        fields: dict[str, str] = {}
        for name in requested:
            for source in sources:
                value = source.get(name)
                if isinstance(value, str):
                    fields[name] = value
                    break
            else:
                fields[name] = ""
        return fields

    def _parent_tags(self, item: Mapping[str, Any], level: str, cache: dict[str, Any]) -> list[Mapping[str, Any]]:
        orthanc = self.runtime.orthanc
        found: list[Mapping[str, Any]] = []
        if level == INSTANCE:
            series_id = str(item.get("ParentSeries", ""))
            if series_id not in cache:
                cache[series_id] = json.loads(orthanc.RestApiGet(f"/series/{series_id}"))
            series = cache[series_id]
            found.append(series.get("MainDicomTags") or {})
            study_id = str(series.get("ParentStudy", ""))
        else:
            study_id = str(item.get("ParentStudy", ""))
        if study_id not in cache:
            cache[study_id] = json.loads(orthanc.RestApiGet(f"/studies/{study_id}"))
        study = cache[study_id]
        found.extend([study.get("MainDicomTags") or {}, study.get("PatientMainDicomTags") or {}])
        return found


_QIDO = re.compile(r"/dicom-web/(?:studies/(?P<study>[^/]+)/(?:series/(?P<series>[^/]+)/)?)?(?P<level>studies|series|"
                   r"instances)")
_QIDO_IGNORED = frozenset({"limit", "offset", "fuzzymatching", "includefield"})


def _qido_keyword(key: str) -> str:
    """The DICOM keyword of a QIDO-RS match key (keyword or 8 hex digits), or ``""``."""
    if key.lower() in _QIDO_IGNORED or "." in key:
        return ""
    if len(key) == 8 and all(c in "0123456789abcdefABCDEF" for c in key):
        return str(keyword_for_tag(int(key, 16)) or "")
    return key if tag_for_keyword(key) is not None else ""


_FIND_SOP_CLASS = "1.2.840.10008.5.1.4.1.2.2.1"  # Study Root Query/Retrieve Information Model - FIND
_LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI",
                       "UR", "UT"})


def _element(tag: int, vr: str, value: bytes) -> bytes:
    # PS3.5 §7.1.2: explicit VR little endian; values padded to even length (UI with NUL, text with space).
    if len(value) % 2:
        value += b"\x00" if vr in ("UI", "OB") else b" "
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr.encode("ascii")
    if vr in _LONG_VRS:
        return head + b"\x00\x00" + struct.pack("<I", len(value)) + value
    return head + struct.pack("<H", len(value)) + value


def answer_dataset(fields: Mapping[str, str]) -> bytes:
    """One C-FIND answer as a small DICOM file (explicit VR little endian, UTF-8).

    Encoded by hand: Orthanc's ``CreateDicom`` and pydicom both cost about a millisecond per
    answer, which a C-FIND over a thousand studies cannot afford. Keys that are not DICOM
    keywords are left out; a non-text key (sequences, binary numbers) is answered empty.
    """
    elements: dict[int, bytes] = {0x00080005: _element(0x00080005, "CS", b"ISO_IR 192")}
    for name, value in fields.items():
        tag = tag_for_keyword(name)
        if tag is None or tag >> 16 == 0x0002 or tag == 0x00080005:
            continue
        vr = dictionary_VR(tag).split(" or ")[0]
        encoded = value.encode("utf-8") if vr in _TEXT_VRS else b""
        elements[tag] = _element(tag, vr, encoded)
    body = b"".join(elements[tag] for tag in sorted(elements))
    meta = (_element(0x00020001, "OB", b"\x00\x01") + _element(0x00020002, "UI", _FIND_SOP_CLASS.encode())
            + _element(0x00020003, "UI", b"2.25.1") + _element(0x00020010, "UI", b"1.2.840.10008.1.2.1"))
    return b"\x00" * 128 + b"DICM" + _element(0x00020000, "UL", struct.pack("<I", len(meta))) + meta + body


def install(runtime: Runtime) -> None:
    """Install the sealed-tag catalogue, the verified REST answers and the C-FIND handler.

    Raises:
        StoreUnavailableError: the tag store cannot be opened.
    """
    storage = runtime.services.get("sealed_storage")
    if storage is None or "keyring" not in runtime.services:
        logger.error("verified queries need the sealed storage; not installed")
        return
    try:
        catalogue = SealedTagCatalogue(runtime, Path(storage.root), runtime.config.seal_database,
                                       runtime.config.data_directory / "query-tags.db")
    except sqlite3.Error as exc:
        raise StoreUnavailableError(f"query tag store cannot be opened: {exc}") from exc
    verifier = QueryVerifier(runtime, catalogue)
    runtime.services["query_catalogue"] = catalogue
    runtime.services["query_verifier"] = verifier
    orthanc = runtime.orthanc
    orthanc.RegisterRestCallback(FIND_ROUTE, verifier.on_find)
    orthanc.RegisterRestCallback(LIST_ROUTE, verifier.on_list)
    orthanc.RegisterRestCallback(CHILD_ROUTE, verifier.on_child)
    orthanc.RegisterRestCallback(RESOURCE_ROUTE, verifier.on_resource)
    if runtime.capabilities.find_connection:
        orthanc.RegisterFindCallback2(verifier.on_cfind_connection)
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
                logger.info("sealed tag catalogue: %d instances in %.1f s", len(catalogue.index),
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


__all__ = ["QueryVerifier", "SealedTagCatalogue", "answer_error", "install"]
