"""Verified query answers: compare the index tags Orthanc answers with the sealed index tags.

Orthanc answers queries (REST ``/tools/find``, ``/studies``, C-FIND, QIDO-RS) from its index
database, never from the stored files; someone who edits that database (a PatientName, a
PatientID) changes what every viewer lists without touching a sealed byte. Each seal binds the
digest of its instance's index tags (``seal/index_tags.py``); the tags themselves, taken once from
the verified stored bytes, are kept in a ``SealedTagIndex`` keyed by Orthanc's resource ids.
Checking an answer is then cheap, with no file read: recompute the level digests of what the
index returned and look them up.

Resources are found by their **Orthanc id**, never by a UID the answer carries: Orthanc's ids
are SHA-1 hashes of the UIDs from the stored file (``orthanc_ids``), so editing a UID or the
PatientID in the index does not move the resource away from its sealed tags.

Orthanc takes a study's (or patient's, series') tags from one of its instances; an answer level
passes when it equals the sealed tags of at least one instance below that resource.

No I/O here: the shell feeds the index and passes the answers.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from orthanc_hardening.config import Mode, UnsealedPolicy
from orthanc_hardening.errors import SealMismatchError
from orthanc_hardening.seal.index_tags import LEVELS, IndexTags, index_tags_digest, normalize
from orthanc_hardening.seal.record import Seal

PATIENT, STUDY, SERIES, INSTANCE = "Patient", "Study", "Series", "Instance"
RESOURCE_LEVELS = (PATIENT, STUDY, SERIES, INSTANCE)
# What each level of an Orthanc answer carries: (JSON field, index-tag level).
ANSWER_FIELDS: dict[str, tuple[tuple[str, str], ...]] = {
    PATIENT: (("MainDicomTags", PATIENT),),
    STUDY: (("MainDicomTags", STUDY), ("PatientMainDicomTags", PATIENT)),
    SERIES: (("MainDicomTags", SERIES),),
    INSTANCE: (("MainDicomTags", INSTANCE),),
}
_PLURAL = {"patients": PATIENT, "studies": STUDY, "series": SERIES, "instances": INSTANCE}
_NAMES = {level: frozenset(name for _g, _e, name in tags) for level, tags in LEVELS.items()}


def level_of(name: str) -> str:
    """Return ``Patient``/``Study``/``Series``/``Instance`` for a level or route name (any case, plural).

    Raises:
        ValueError: not a resource level (a caller bug, or a bad request the caller reports).
    """
    lowered = name.strip().lower()
    if lowered in _PLURAL:
        return _PLURAL[lowered]
    for level in RESOURCE_LEVELS:
        if lowered == level.lower():
            return level
    raise ValueError(f"unknown resource level {name!r}")


def orthanc_id(*parts: str) -> str:
    """Orthanc's public id of a resource: SHA-1 of its ``|``-joined identifiers, in 5 groups of 8.

    Patient: ``(PatientID,)``; study: ``(PatientID, StudyInstanceUID)``; series: ``(…, SeriesInstanceUID)``;
    instance: ``(…, SOPInstanceUID)`` (Orthanc's ``DicomInstanceHasher``).
    """
    digest = hashlib.sha1("|".join(parts).encode("utf-8"), usedforsecurity=False).hexdigest()
    return "-".join(digest[i:i + 8] for i in range(0, 40, 8))


@functools.lru_cache(maxsize=4096)
def _orthanc_ids(patient_id: str, study_uid: str, series_uid: str, sop_instance_uid: str) -> tuple[str, ...]:
    # A pure function of the four identifiers: an ingest and each read of an instance ask for the
    # ids of its seals several times (the header's seal names the same instance as the file's).
    return (*_parent_ids(patient_id, study_uid, series_uid),
            orthanc_id(patient_id, study_uid, series_uid, sop_instance_uid))


@functools.lru_cache(maxsize=1024)
def _parent_ids(patient_id: str, study_uid: str, series_uid: str) -> tuple[str, str, str]:
    # The instances of one series share these three: a new instance hashes its own id only.
    return (orthanc_id(patient_id), orthanc_id(patient_id, study_uid),
            orthanc_id(patient_id, study_uid, series_uid))


def orthanc_ids_of_seal(seal: Seal) -> dict[str, str]:
    """The Orthanc ids of the four resources an instance's seal belongs to."""
    ids = _orthanc_ids(seal.patient_id, seal.study_uid, seal.series_uid, seal.sop_instance_uid)
    return dict(zip(RESOURCE_LEVELS, ids, strict=True))


def level_tags(source: Mapping[str, Any], level: str) -> dict[str, str]:
    """The index tags of one level in ``source`` (Orthanc's ``MainDicomTags`` or ours), normalised."""
    values: dict[str, str] = {}
    for _group, _element, name in LEVELS[level]:
        value = source.get(name)
        if isinstance(value, str):
            values[name] = normalize(value)
    return values


def tags_digest(tags: Mapping[str, str]) -> str:
    """SHA-256 (hex) of one level's tags, canonical JSON."""
    return hashlib.sha256(
        json.dumps(dict(tags), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    ).hexdigest()


@dataclass(frozen=True, slots=True)
class SealedInstanceTags:
    """The index tags of one sealed instance, authenticated by its seal's ``index_tags_sha256``."""

    ids: Mapping[str, str]  # level -> Orthanc id
    tags: IndexTags
    seal_uuid: str

    @property
    def instance_id(self) -> str:
        return self.ids[INSTANCE]


def sealed_instance_tags(seal: Seal, tags: IndexTags) -> SealedInstanceTags:
    """Bind an instance's index tags (read from its verified bytes) to its seal.

    Args:
        seal: the instance's verified seal.
        tags: ``index_tags_of_dataset`` of the sealed bytes (or a stored copy of it).

    Returns:
        The entry for a ``SealedTagIndex``.

    Raises:
        SealMismatchError: the tags are not those the seal signed.
    """
    if not seal.index_tags_sha256 or index_tags_digest(tags) != seal.index_tags_sha256:
        raise SealMismatchError(f"attachment {seal.uuid}: index tags differ from the sealed digest")
    return SealedInstanceTags(orthanc_ids_of_seal(seal), tags, seal.uuid)


class SealedTagIndex:
    """In-memory index: Orthanc resource id -> the sealed tags of each level at and above it.

    Not thread-safe by itself; the shell guards it with a lock.
    """

    def __init__(self) -> None:
        self._entries: dict[str, SealedInstanceTags] = {}
        # (level, resource id) -> {tag level -> {digest: tags}}
        self._expected: dict[tuple[str, str], dict[str, dict[str, dict[str, str]]]] = {}
        # (level, resource id) -> {tag level -> {digest: how many member instances carry it}}
        self._counts: dict[tuple[str, str], dict[str, dict[str, int]]] = {}
        self._members: dict[tuple[str, str], set[str]] = {}
        # (identifier, normalised sealed value) -> instance ids: who has what, for completeness.
        self._by_identifier: dict[tuple[str, str], set[str]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, instance_id: object) -> bool:
        return instance_id in self._entries

    def add(self, entry: SealedInstanceTags) -> None:
        """Add (or replace) the sealed tags of an instance."""
        if entry.instance_id in self._entries:
            self.remove(entry.instance_id)
        self._entries[entry.instance_id] = entry
        for name, value in _identifiers_of(entry):
            self._by_identifier.setdefault((name, value), set()).add(entry.instance_id)
        for level, resource_id in entry.ids.items():
            key = (level, resource_id)
            self._members.setdefault(key, set()).add(entry.instance_id)
            expected = self._expected.setdefault(key, {})
            counts = self._counts.setdefault(key, {})
            for _field_name, tag_level in ANSWER_FIELDS[level]:
                tags = level_tags(entry.tags.get(tag_level, {}), tag_level)
                digest = tags_digest(tags)
                expected.setdefault(tag_level, {})[digest] = tags
                level_counts = counts.setdefault(tag_level, {})
                level_counts[digest] = level_counts.get(digest, 0) + 1

    def remove(self, instance_id: str) -> None:
        """Forget an instance (deleted, or re-stored under another uuid); O(levels), not O(members)."""
        entry = self._entries.pop(instance_id, None)
        if entry is None:
            return
        for name, value in _identifiers_of(entry):
            holders = self._by_identifier.get((name, value))
            if holders is not None:
                holders.discard(instance_id)
                if not holders:
                    self._by_identifier.pop((name, value), None)
        for level, resource_id in entry.ids.items():
            key = (level, resource_id)
            members = self._members.get(key, set())
            members.discard(instance_id)
            if not members:
                self._members.pop(key, None)
                self._expected.pop(key, None)
                self._counts.pop(key, None)
                continue
            expected = self._expected.get(key, {})
            counts = self._counts.get(key, {})
            for _field_name, tag_level in ANSWER_FIELDS[level]:
                digest = tags_digest(level_tags(entry.tags.get(tag_level, {}), tag_level))
                level_counts = counts.get(tag_level, {})
                left = level_counts.get(digest, 0) - 1
                if left > 0:
                    level_counts[digest] = left
                    continue
                level_counts.pop(digest, None)
                expected.get(tag_level, {}).pop(digest, None)

    def expected(self, level: str, resource_id: str) -> dict[str, dict[str, dict[str, str]]] | None:
        """The sealed tags allowed for a resource, per tag level, or ``None`` when none is sealed."""
        return self._expected.get((level, resource_id))

    def instance_ids(self) -> list[str]:
        return list(self._entries)

    def sealed_parent(self, level: str, resource_id: str) -> str | None:
        """The Orthanc id of the parent its seals put a study, series or instance under (``None``: unknown).

        Orthanc's ids hash every identifier above the resource, so all sealed members of a
        resource name the same parent.
        """
        members = self._members.get((level, resource_id))
        if not members or level == PATIENT:
            return None
        parent_level = RESOURCE_LEVELS[RESOURCE_LEVELS.index(level) - 1]
        return self._entries[next(iter(members))].ids[parent_level]

    def matching(self, level: str, constraints: Mapping[str, str]) -> set[str]:
        """The Orthanc ids of the ``level`` resources whose sealed identifiers match every constraint.

        An exact constraint is one dictionary lookup; one with DICOM wildcards (``*``, ``?``)
        scans the catalogue's values of that identifier once (``wildcard_pattern``).

        Args:
            level: ``Patient``/``Study``/``Series``/``Instance``.
            constraints: identifier constraints (``identifier_constraints``), not empty.
        """
        holders: set[str] | None = None
        for name, value in constraints.items():
            normalised = _identifier_value(value)
            if any(c in _MATCH_WILDCARDS for c in normalised):
                pattern = wildcard_pattern(normalised)
                found: set[str] = set()
                for (held_name, held_value), instances in self._by_identifier.items():
                    if held_name == name and pattern.fullmatch(held_value):
                        found |= instances
            else:
                found = self._by_identifier.get((name, normalised), set())
            holders = set(found) if holders is None else holders & found
            if not holders:
                return set()
        return {self._entries[i].ids[level] for i in holders or ()}


# The identifiers Orthanc matches exactly (its "DicomIdentifiers"), and their level.
IDENTIFIERS = {"PatientID": PATIENT, "StudyInstanceUID": STUDY, "AccessionNumber": STUDY,
               "SeriesInstanceUID": SERIES, "SOPInstanceUID": INSTANCE}
# PS3.4 C.2.2.2.4: "*" matches any sequence of characters (also none), "?" exactly one.
_MATCH_WILDCARDS = frozenset("*?")


def wildcard_pattern(value: str) -> re.Pattern[str]:
    """The regular expression of a DICOM wildcard match (PS3.4 C.2.2.2.4), for a full match.

    Orthanc matches identifiers on their normalised form (trimmed, upper case), so ``value``
    comes normalised and the match is case-sensitive on it; every other character is literal.
    """
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in value), re.DOTALL)


def _identifier_value(value: str) -> str:
    # Orthanc normalises identifiers for lookups (trimmed, upper case): so does the catalogue.
    return value.strip().upper()


def _identifiers_of(entry: SealedInstanceTags) -> list[tuple[str, str]]:
    found = []
    for name, tag_level in IDENTIFIERS.items():
        value = entry.tags.get(tag_level, {}).get(name)
        if isinstance(value, str) and value.strip():
            found.append((name, _identifier_value(value)))
    return found


def identifier_constraints(level: str, query: Mapping[str, Any]) -> dict[str, str] | None:
    """The query's constraints when every one is an identifier at or above ``level``, else ``None``.

    Only then can the catalogue say which sealed resources the answer must hold. A constraint
    is an exact value or a DICOM wildcard match (``*``, ``?``); a constraint on any other tag,
    or a list of values (``\\``), is matched by Orthanc's rules, which the catalogue does not
    replay. The identifiers are texts and UIDs, so no range applies to them: ``-`` is literal.
    A constraint of ``*`` alone matches everything, as an empty one does.
    """
    depth = RESOURCE_LEVELS.index(level)
    constraints: dict[str, str] = {}
    for name, value in query.items():
        if name not in IDENTIFIERS or not isinstance(value, str):
            return None
        if not value.strip().strip("*"):
            continue  # an empty (or "*") constraint matches everything: a return key, not a filter
        if "\\" in value or RESOURCE_LEVELS.index(IDENTIFIERS[name]) > depth:
            return None
        constraints[name] = value
    return constraints or None


def missing_from_answer(level: str, query: Mapping[str, Any], answered: Iterable[str],
                        index: SealedTagIndex) -> list[str]:
    """Sealed resources that match an identifier query (exact or wildcard) but are missing from its answer.

    Args:
        level: the query level.
        query: the query's constraints (tag name -> value).
        answered: the Orthanc ids the answer holds.
        index: the catalogue of sealed tags.

    Returns:
        The missing ids, sorted (``[]`` also when the query is not one the catalogue can check).
        The caller confirms each is still in Orthanc's index (hidden, not deleted).
    """
    constraints = identifier_constraints(level, query)
    if constraints is None:
        return []
    return sorted(index.matching(level, constraints) - set(answered))


class Verdict(enum.Enum):
    """How an answered item compares with the seals."""

    OK = "ok"
    MISMATCH = "mismatch"
    UNSEALED = "unsealed"
    REPARENTED = "reparented"  # listed under another parent than the sealed one


class Action(enum.Enum):
    """What the answer does with an item."""

    SERVE = "serve"
    FLAG = "flag"  # served, counted, alerted
    WITHHOLD = "withhold"


@dataclass(frozen=True, slots=True)
class ItemCheck:
    """The verdict on one answered resource; ``differing`` names tags (never values)."""

    level: str
    resource_id: str
    verdict: Verdict
    differing: tuple[str, ...] = ()
    uids: Mapping[str, str] = field(default_factory=dict)
    parents: tuple[str, str] = ("", "")  # (answered, sealed) parent, for a re-parented item

    @property
    def detail(self) -> str:
        if self.verdict is Verdict.REPARENTED:
            parent = PARENT_FIELDS[self.level][1].lower()
            return (f"{self.level.lower()} {self.resource_id} is listed by Orthanc's index under {parent} "
                    f"{self.parents[0]}, but sealed under {parent} {self.parents[1]} (re-parented in the index)")
        if self.verdict is Verdict.OK:
            return f"{self.level.lower()} {self.resource_id} matches its seals"
        if self.verdict is Verdict.UNSEALED:
            return f"{self.level.lower()} {self.resource_id} has no sealed instance"
        return (f"{self.level.lower()} {self.resource_id}: Orthanc's index holds other values than the sealed ones "
                f"for {', '.join(self.differing) or 'its index tags'}")


# The verdict of every item that matches on the fast path (its id is not needed by callers).
_OK = ItemCheck("", "", Verdict.OK)
# The field of an answered resource that names its parent, and the parent's level.
PARENT_FIELDS = {STUDY: ("ParentPatient", PATIENT), SERIES: ("ParentStudy", STUDY), INSTANCE: ("ParentSeries", SERIES)}


def _reparented(level: str, item: Mapping[str, Any], resource_id: str, index: SealedTagIndex) -> ItemCheck | None:
    """A resource the index lists under another parent than its seals name (re-parented), else ``None``."""
    parent_field = PARENT_FIELDS.get(level)
    if parent_field is None:
        return None
    answered = item.get(parent_field[0])
    sealed = index.sealed_parent(level, resource_id)
    if not isinstance(answered, str) or sealed is None or answered == sealed:
        return None
    return ItemCheck(level, resource_id, Verdict.REPARENTED, (parent_field[0],), _uids(level, item),
                     parents=(answered, sealed))


def _answer_matches(level: str, item: Mapping[str, Any], expected: Mapping[str, Mapping[str, dict[str, str]]]
                    ) -> bool:
    """Fast path: the answered tags equal one sealed instance's tags as they are (no normalisation).

    Orthanc usually answers exactly the level's main tags, so a plain dict comparison decides;
    only when it does not are the answered tags reduced to the level's names first.
    """
    for field_name, tag_level in ANSWER_FIELDS[level]:
        source = item.get(field_name)
        candidates = expected.get(tag_level)
        if not candidates or not isinstance(source, dict):
            return False
        if any(source == candidate for candidate in candidates.values()):
            continue
        names = _NAMES[tag_level]
        answered = {k: v for k, v in source.items() if k in names}
        if not any(answered == candidate for candidate in candidates.values()):
            return False
    return True


def inspect_item(level: str, item: Mapping[str, Any], index: SealedTagIndex) -> ItemCheck:
    """Compare one resource as Orthanc answered it (expanded JSON) with its sealed tags.

    Args:
        level: ``Patient``/``Study``/``Series``/``Instance``.
        item: the expanded resource (``ID``, ``MainDicomTags``, ``PatientMainDicomTags`` for studies).
        index: the sealed tags.

    Returns:
        The verdict.

    Raises:
        ValueError: ``item`` has no ``ID`` (not an expanded Orthanc resource; a caller bug).
    """
    resource_id = item.get("ID")
    if not isinstance(resource_id, str):
        raise ValueError("an expanded Orthanc resource has an ID")
    expected = index.expected(level, resource_id)
    if expected is None:
        return ItemCheck(level, resource_id, Verdict.UNSEALED, uids=_uids(level, item))
    moved = _reparented(level, item, resource_id, index)
    if moved is not None:
        return moved
    if _answer_matches(level, item, expected):
        return _OK
    differing: list[str] = []
    for field_name, tag_level in ANSWER_FIELDS[level]:
        source = item.get(field_name)
        answered = level_tags(source if isinstance(source, Mapping) else {}, tag_level)
        allowed = expected.get(tag_level, {})
        if tags_digest(answered) in allowed:
            continue
        differing.extend(_closest_difference(answered, list(allowed.values())))
    if differing:
        return ItemCheck(level, resource_id, Verdict.MISMATCH, tuple(sorted(set(differing))), _uids(level, item))
    return ItemCheck(level, resource_id, Verdict.OK, uids=_uids(level, item))


def _closest_difference(answered: Mapping[str, str], candidates: list[dict[str, str]]) -> list[str]:
    best: list[str] | None = None
    for candidate in candidates:
        names = sorted(n for n in set(answered) | set(candidate) if answered.get(n) != candidate.get(n))
        if best is None or len(names) < len(best):
            best = names
    return best or ["(index tags)"]


def _uids(level: str, item: Mapping[str, Any]) -> dict[str, str]:
    tags = item.get("MainDicomTags")
    tags = tags if isinstance(tags, Mapping) else {}
    name = {PATIENT: "PatientID", STUDY: "StudyInstanceUID", SERIES: "SeriesInstanceUID",
            INSTANCE: "SOPInstanceUID"}[level]
    value = tags.get(name)
    return {name: value} if isinstance(value, str) else {}


def action_for(verdict: Verdict, mode: Mode, unsealed_policy: UnsealedPolicy) -> Action:
    """What to do with an item: enforce withholds mismatches; monitor flags; unsealed follows the policy."""
    if verdict is Verdict.OK:
        return Action.SERVE
    if mode is not Mode.ENFORCE:
        return Action.FLAG
    if verdict in (Verdict.MISMATCH, Verdict.REPARENTED) or unsealed_policy is UnsealedPolicy.REFUSE:
        return Action.WITHHOLD
    return Action.FLAG


@dataclass(frozen=True, slots=True)
class FilteredAnswer:
    """A query answer after verification: the items kept, and what was withheld or flagged."""

    kept: tuple[Any, ...]
    withheld: tuple[ItemCheck, ...]
    flagged: tuple[ItemCheck, ...]

    @property
    def headers(self) -> dict[str, str]:
        return {"X-Hardening-Withheld": str(len(self.withheld)), "X-Hardening-Flagged": str(len(self.flagged))}


def filter_answer(
    items: Iterable[Mapping[str, Any]],
    index: SealedTagIndex,
    mode: Mode,
    unsealed_policy: UnsealedPolicy,
    level: str | None = None,
) -> FilteredAnswer:
    """Check every expanded item of an answer and drop those to withhold.

    Args:
        items: expanded resources (each with ``ID`` and ``Type`` unless ``level`` is given).
        index: the sealed tags.
        mode: enforce or monitor.
        unsealed_policy: what to do with unsealed items in enforce mode.
        level: the level of every item (``None``: read each item's ``Type``).

    Returns:
        The kept items (unchanged, in order) with the withheld and flagged verdicts.

    Raises:
        ValueError: an item is not an expanded Orthanc resource (a caller bug).
    """
    kept: list[Any] = []
    withheld: list[ItemCheck] = []
    flagged: list[ItemCheck] = []
    for item in items:
        if not isinstance(item, dict | Mapping):
            raise ValueError("filter_answer needs expanded resources")
        item_level = level or level_of(str(item.get("Type", "")))
        check = inspect_item(item_level, item, index)
        if check.verdict is Verdict.OK:
            kept.append(item)
            continue
        action = action_for(check.verdict, mode, unsealed_policy)
        if action is Action.WITHHOLD:
            withheld.append(check)
            continue
        if action is Action.FLAG:
            flagged.append(check)
        kept.append(item)
    return FilteredAnswer(tuple(kept), tuple(withheld), tuple(flagged))


__all__ = [
    "Action",
    "FilteredAnswer",
    "ItemCheck",
    "SealedInstanceTags",
    "SealedTagIndex",
    "Verdict",
    "action_for",
    "filter_answer",
    "inspect_item",
    "level_of",
    "orthanc_id",
    "orthanc_ids_of_seal",
    "sealed_instance_tags",
    "wildcard_pattern",
]
