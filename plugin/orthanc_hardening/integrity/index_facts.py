"""An in-memory copy of the index facts the HTTP gates read: who is whose parent, which file is whose.

On Orthanc before 1.12.2 (bookworm) with the Python plugin 4.0, any call into Orthanc made with
Python's lock held can deadlock with an instance read of orthanc-dicomweb in flight (README, "No
single request stops, hangs or crashes it"). The gates that bind a read to its request and the
audit trail's resolution of a request to its series only need a few facts of the index:

* the parent of each resource (instance -> series -> study -> patient);
* the attachments (uuid per content type) the index names for each instance, DICOM types only
  (1 ``dicom``, 2 ``dicom-as-json``, 3 ``dicom-until-pixel-data``: the others carry no identity
  in their seal, and no gate reads them);
* the identifier of each resource (PatientID, StudyInstanceUID, SeriesInstanceUID,
  SOPInstanceUID) as Orthanc stores it, and the resources each identifier names, as
  ``/tools/lookup`` finds them (the value normalised as Orthanc normalises identifiers).

``IndexFacts`` holds them, loaded from Orthanc's SQLite index at start (the shell reads the
file before Orthanc opens it) and kept by the storage area's own callbacks: ``add_file`` when
an attachment is created (its identity, from its seal, names the instance and every parent,
since Orthanc's ids are hashes of the identifiers), ``remove_file`` when one is removed.

Why it answers as the index does (README): while Orthanc runs it holds its SQLite index
exclusively, so every row that appears there comes from a file the storage area created just
before (a new instance, a new attachment) and every row that goes away is followed by the
removal of its file. The copy may name a file *more* than the index, for a moment or for good
(an ingest Orthanc refused after the file was written: a duplicate, which Orthanc removes, or an
error, which it may not), but such a file is sealed for the very instance the copy names it
for, so a gate comparing seals with the copy decides as it would with the index. A resource
already known keeps the parent the index gave it (an index edited at rest is loaded as it is,
and caught by the gates as before); a new one gets the parent its identifiers hash to, as
Orthanc computes it.

No I/O: dictionaries; the shell hands in the lock that makes it safe across Orthanc's threads.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

PATIENT, STUDY, SERIES, INSTANCE = "Patient", "Study", "Series", "Instance"
LEVELS = (PATIENT, STUDY, SERIES, INSTANCE)
# Orthanc's DICOM attachment types: the only ones whose seal names an instance.
DICOM_TYPES = (1, 2, 3)


def normalize_identifier(value: str) -> str:
    """An identifier as Orthanc's index stores it for lookups (``ServerToolbox::NormalizeIdentifier``).

    ``%`` and ``_`` become spaces, non-printable characters are dropped, the rest is upper-cased
    and trimmed.
    """
    kept = "".join(" " if c in "%_" else c for c in value if c in "%_" or (c.isprintable() and ord(c) < 128))
    return kept.upper().strip()


@dataclass(frozen=True, slots=True, order=True)
class FileFact:
    """One attachment the index names for an instance."""

    content_type: int
    uuid: str


class IndexFacts:
    """Parents, identifiers and DICOM attachments of every indexed resource (see the module docstring).

    The storage area adds and removes from Orthanc's threads while gates read: the shell passes
    a ``threading.Lock`` as ``lock`` (every method holds it; none calls another while holding it).
    Kept compact (tuples, one entry per resource), since it holds the whole index.
    """

    def __init__(self, lock: contextlib.AbstractContextManager[Any] | None = None) -> None:
        self._lock = lock if lock is not None else contextlib.nullcontext()
        # id -> (level, parent id or "", identifier as stored, lookup key)
        self._node: dict[str, tuple[str, str, str, str]] = {}
        self._children: dict[str, set[str]] = {}
        # level -> lookup key -> ids
        self._named: dict[str, dict[str, tuple[str, ...]]] = {level: {} for level in LEVELS}
        # instance id -> ((content type, uuid), ...)
        self._files: dict[str, tuple[tuple[int, str], ...]] = {}
        # uuid -> the instances naming it (one, unless the index was edited to share a file).
        self._owner: dict[str, tuple[str, ...]] = {}
        self._instances = 0
        # A DICOM file created without an identity (e.g. ``StorageCompression``): its instance
        # is unknown here, so the copy no longer answers for the whole index.
        self.complete = True

    def __len__(self) -> int:
        with self._lock:
            return self._instances

    # -- building ------------------------------------------------------------------------

    def _add_resource(self, level: str, resource_id: str, parent_id: str, identifier: str,
                      lookup_key: str | None = None) -> None:
        if resource_id in self._node:
            return  # known: keeps the parent and identifier the index gave it
        key = normalize_identifier(identifier) if lookup_key is None else lookup_key
        if key == identifier:
            key = identifier  # one string for both
        self._node[resource_id] = (level, parent_id, identifier, key)
        if parent_id:
            self._children.setdefault(parent_id, set()).add(resource_id)
        named = self._named[level]
        named[key] = (*named.get(key, ()), resource_id)
        if level == INSTANCE:
            self._instances += 1

    def add_resource(self, level: str, resource_id: str, parent_id: str, identifier: str,
                     lookup_key: str | None = None) -> None:
        """Record a resource as the index holds it (at load); a known resource is left as it is.

        ``lookup_key`` is the value the index looks the identifier up by (its ``DicomIdentifiers``
        row); by default the identifier normalised.
        """
        if level not in LEVELS:
            raise ValueError(f"unknown level {level!r}")
        with self._lock:
            self._add_resource(level, resource_id, parent_id, identifier, lookup_key)

    def _add_file(self, instance_id: str, content_type: int, uuid: str) -> None:
        entry = (int(content_type), uuid)
        files = self._files.get(instance_id, ())
        if entry not in files:
            self._files[instance_id] = (*files, entry)
        owners = self._owner.get(uuid, ())
        if instance_id not in owners:
            self._owner[uuid] = (*owners, instance_id)

    def add_indexed_file(self, instance_id: str, content_type: int, uuid: str) -> None:
        """Record an attachment row of the index (at load): the instance must be recorded already."""
        if int(content_type) not in DICOM_TYPES:
            return
        with self._lock:
            node = self._node.get(instance_id)
            if node is not None and node[0] == INSTANCE:
                self._add_file(instance_id, content_type, uuid)

    def add_file(self, ids: dict[str, str], identifiers: tuple[str, str, str, str], content_type: int,
                 uuid: str) -> None:
        """Record an attachment the storage area created, and its instance and parents if new.

        Args:
            ids: Orthanc's ids of the patient, study, series and instance (``Patient``…``Instance``),
                as its identifiers hash to (``integrity.query.orthanc_ids_of_seal``).
            identifiers: PatientID, StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID.
            content_type: the attachment's type (only DICOM types are kept).
            uuid: the attachment's uuid.
        """
        if int(content_type) not in DICOM_TYPES:
            return
        with self._lock:
            # As Orthanc stores an instance: below the lowest resource it already holds, the
            # missing ones are created; a resource it holds keeps its parent.
            known = len(LEVELS)
            while known > 0 and ids[LEVELS[known - 1]] not in self._node:
                known -= 1
            for depth in range(known, len(LEVELS)):
                level = LEVELS[depth]
                self._add_resource(level, ids[level], ids[LEVELS[depth - 1]] if depth else "", identifiers[depth])
            self._add_file(ids[INSTANCE], content_type, uuid)

    def mark_incomplete(self) -> None:
        """A DICOM file was created whose instance the copy cannot know: stop answering for the index."""
        self.complete = False

    # -- removing ------------------------------------------------------------------------

    def _drop(self, resource_id: str) -> None:
        node = self._node.pop(resource_id, None)
        if node is None:
            return
        level, parent, _identifier, key = node
        if level == INSTANCE:
            self._instances -= 1
        named = self._named[level]
        left = tuple(i for i in named.get(key, ()) if i != resource_id)
        if left:
            named[key] = left
        else:
            named.pop(key, None)
        for _type, uuid in self._files.pop(resource_id, ()):
            owners = tuple(i for i in self._owner.get(uuid, ()) if i != resource_id)
            if owners:
                self._owner[uuid] = owners
            else:
                self._owner.pop(uuid, None)
        for child in self._children.pop(resource_id, ()):
            child_node = self._node.get(child)
            if child_node is not None:
                self._node[child] = (child_node[0], "", child_node[2], child_node[3])
        if parent:
            siblings = self._children.get(parent)
            if siblings is not None:
                siblings.discard(resource_id)
                if not siblings:
                    del self._children[parent]
                    self._drop(parent)  # Orthanc deletes a parent left without children

    def remove_file(self, uuid: str) -> None:
        """An attachment was removed: forget it, and its instance once its DICOM file is gone."""
        with self._lock:
            for instance_id in sorted(self._owner.pop(uuid, ())):
                files = tuple(f for f in self._files.get(instance_id, ()) if f[1] != uuid)
                self._files[instance_id] = files
                if not any(content_type == 1 for content_type, _uuid in files):
                    self._drop(instance_id)

    # -- reading -------------------------------------------------------------------------

    def _known(self, resource_id: str) -> tuple[str, str, str, str]:
        node = self._node.get(resource_id)
        if node is None:
            raise KeyError(resource_id)
        return node

    def lookup(self, identifier: str, level: str) -> list[str]:
        """Orthanc ids of the resources of ``level`` with this identifier (as ``/tools/lookup``)."""
        with self._lock:
            return sorted(self._named.get(level, {}).get(normalize_identifier(identifier), ()))

    def level(self, resource_id: str) -> str | None:
        """The level of a known resource, or ``None``."""
        with self._lock:
            node = self._node.get(resource_id)
            return node[0] if node is not None else None

    def parent(self, resource_id: str) -> str:
        """The parent's id of a known resource (``""`` for a patient).

        Raises:
            KeyError: the resource is unknown.
        """
        with self._lock:
            return self._known(resource_id)[1]

    def identifier(self, resource_id: str) -> str:
        """The identifier of a known resource, as Orthanc stores it (not normalised).

        Raises:
            KeyError: the resource is unknown.
        """
        with self._lock:
            return self._known(resource_id)[2]

    def children(self, resource_id: str) -> list[str]:
        """Ids of the children of a known resource, sorted.

        Raises:
            KeyError: the resource is unknown.
        """
        with self._lock:
            self._known(resource_id)
            return sorted(self._children.get(resource_id, ()))

    def instances_under(self, resource_id: str) -> list[tuple[str, str]]:
        """``(instance id, series id)`` of every instance under a known resource (itself if an instance).

        Raises:
            KeyError: the resource is unknown.
        """
        with self._lock:
            self._known(resource_id)
            found: list[tuple[str, str]] = []
            pending = [resource_id]
            while pending:
                current = pending.pop()
                node = self._node.get(current)
                if node is not None and node[0] == INSTANCE:
                    found.append((current, node[1]))
                else:
                    pending.extend(self._children.get(current, ()))
            return sorted(found)

    def files(self, instance_id: str) -> list[FileFact]:
        """The DICOM attachments the index names for a known instance (possibly a few more, see above).

        Raises:
            KeyError: the instance is unknown.
        """
        with self._lock:
            node = self._node.get(instance_id)
            if node is None or node[0] != INSTANCE:
                raise KeyError(instance_id)
            return sorted(FileFact(t, u) for t, u in self._files.get(instance_id, ()))

    def names_file(self, instance_id: str, content_type: int, uuid: str) -> bool:
        """Whether the copy names this attachment for this instance at this type."""
        with self._lock:
            return (int(content_type), uuid) in self._files.get(instance_id, ())


def load(resources: Iterable[tuple[str, str, str, str, str | None]],
         files: Iterable[tuple[str, int, str]],
         lock: contextlib.AbstractContextManager[Any] | None = None) -> IndexFacts:
    """The facts of an index read row by row.

    Args:
        resources: ``(level, id, parent id, identifier, lookup key)``, parents before children.
        files: ``(instance id, content type, uuid)``.
    """
    facts = IndexFacts(lock)
    for level, resource_id, parent_id, identifier, lookup_key in resources:
        facts.add_resource(level, resource_id, parent_id, identifier, lookup_key)
    for instance_id, content_type, uuid in files:
        facts.add_indexed_file(instance_id, content_type, uuid)
    return facts
