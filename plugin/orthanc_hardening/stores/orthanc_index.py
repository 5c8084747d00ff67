"""The index SQLite file of a stopped Orthanc, read only (the offline scrub and seal-existing).

Reads only the columns every Orthanc 1.10 to 1.13 index has (``Resources``, ``MainDicomTags``,
``DicomIdentifiers``, ``AttachedFiles``), by name, so a newer schema with more columns is read
the same way.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from orthanc_hardening.errors import NotFoundError
from orthanc_hardening.integrity import index_facts
from orthanc_hardening.integrity.index_facts import IndexFacts
from orthanc_hardening.integrity.scrub import IndexedInstance

# Orthanc's SQLite schema: resource type -> level, and the identifier tag of each level.
_LEVELS = {1: index_facts.PATIENT, 2: index_facts.STUDY, 3: index_facts.SERIES, 4: index_facts.INSTANCE}
_IDENTIFIERS = {1: (0x0010, 0x0020), 2: (0x0020, 0x000D), 3: (0x0020, 0x000E), 4: (0x0008, 0x0018)}
# The lookup key of a resource the index holds no ``DicomIdentifiers`` row for: no lookup finds it.
NOT_LOOKED_UP = "\x00"


def _connect(path: Path, timeout: float) -> sqlite3.Connection:
    """Orthanc's index file, opened read only.

    Raises:
        NotFoundError: no index file at ``path``.
    """
    if not Path(path).is_file():
        raise NotFoundError(f"Orthanc index {path} does not exist")
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False, timeout=timeout)


@contextmanager
def _read_only(path: Path, timeout: float) -> Iterator[sqlite3.Connection]:
    db = _connect(path, timeout)
    try:
        yield db
    finally:
        db.close()



def shared_attachments(path: Path, timeout: float = 2.0) -> dict[str, tuple[str, ...]]:
    """Attachments the index names for more than one resource: uuid -> the resources' Orthanc ids.

    Orthanc gives every attachment its own uuid, so a uuid named twice is an edited index (a
    row copied from another instance's). One grouped query over ``AttachedFiles``; it reads
    the index of an Orthanc that has not opened it yet (at plugin start) or is stopped.

    Raises:
        NotFoundError: no index file at ``path``.
        sqlite3.Error: the index cannot be read (locked, not an Orthanc index).
    """
    with _read_only(path, timeout) as db:
        rows = db.execute("""
            SELECT a.uuid, r.publicId FROM AttachedFiles a JOIN Resources r ON a.id = r.internalId
            WHERE a.uuid IN (SELECT uuid FROM AttachedFiles GROUP BY uuid HAVING COUNT(DISTINCT id) > 1)
            ORDER BY a.uuid, r.publicId""").fetchall()
    shared: dict[str, list[str]] = {}
    for uuid, public_id in rows:
        owners = shared.setdefault(str(uuid), [])
        if str(public_id) not in owners:
            owners.append(str(public_id))
    return {uuid: tuple(owners) for uuid, owners in shared.items()}


def load_index_facts(path: Path, timeout: float = 2.0) -> IndexFacts:
    """The index facts the HTTP gates read (``integrity/index_facts.py``), from Orthanc's SQLite index.

    Read at plugin start, before Orthanc opens (and locks) the file: every resource with its
    parent and identifier (as stored, ``MainDicomTags``, and as looked up, ``DicomIdentifiers``)
    and every DICOM attachment row. Four plain selects.

    Raises:
        NotFoundError: no index file at ``path``.
        sqlite3.Error: the index cannot be read (locked, not an Orthanc index).
    """
    with _read_only(path, timeout) as db:
        wanted = " OR ".join(f"(tagGroup = {g} AND tagElement = {e})" for g, e in _IDENTIFIERS.values())
        stored = {(int(i), int(g), int(e)): str(v) for i, g, e, v in db.execute(
            f"SELECT id, tagGroup, tagElement, value FROM MainDicomTags WHERE {wanted}")}
        looked_up = {(int(i), int(g), int(e)): str(v) for i, g, e, v in db.execute(
            f"SELECT id, tagGroup, tagElement, value FROM DicomIdentifiers WHERE {wanted}")}
        public: dict[int, str] = {}
        resources: list[tuple[str, str, str, str, str | None]] = []
        for internal, kind, public_id, parent in db.execute(
                "SELECT internalId, resourceType, publicId, parentId FROM Resources ORDER BY resourceType"):
            level = _LEVELS.get(int(kind))
            if level is None:
                continue
            public[int(internal)] = str(public_id)
            tag = (int(internal), *_IDENTIFIERS[int(kind)])
            resources.append((level, str(public_id), public.get(int(parent), "") if parent is not None else "",
                              stored.get(tag, looked_up.get(tag, "")), looked_up.get(tag, NOT_LOOKED_UP)))
        files = [(public.get(int(i), ""), int(t), str(u)) for i, t, u in db.execute(
            "SELECT id, fileType, uuid FROM AttachedFiles WHERE fileType IN (1, 2, 3)")]
    return index_facts.load(resources, files, threading.Lock())


class SQLiteIndex:
    """The index SQLite file of a (stopped) Orthanc 1.x, read only."""

    def __init__(self, path: Path) -> None:
        self._db = _connect(path, timeout=30)

    # Orthanc's SQLite schema numbers resource types from 1 (patient) to 4 (instance).
    _STUDY, _INSTANCE = 2, 4

    def _tag(self, internal: int, group: int, element: int) -> str:
        for table in ("MainDicomTags", "DicomIdentifiers"):
            row = self._db.execute(f"SELECT value FROM {table} WHERE id = ? AND tagGroup = ? AND tagElement = ?",
                                   (internal, group, element)).fetchone()
            if row is not None:
                return str(row[0])
        return ""

    def _rows(self, study_filter: str = "", args: tuple[Any, ...] = ()) -> list[IndexedInstance]:
        query = f"""
            SELECT i.internalId, i.publicId, st.publicId, se.internalId
            FROM Resources i JOIN Resources se ON i.parentId = se.internalId
                             JOIN Resources st ON se.parentId = st.internalId
            WHERE i.resourceType = {self._INSTANCE} {study_filter} ORDER BY i.publicId"""
        result = []
        for internal, public, study, series in self._db.execute(query, args).fetchall():
            attachments = {int(t): str(u) for t, u in
                           self._db.execute("SELECT fileType, uuid FROM AttachedFiles WHERE id = ?", (internal,))}
            result.append(IndexedInstance(str(public), str(study), self._tag(series, 0x0020, 0x000E),
                                          self._tag(internal, 0x0008, 0x0018), attachments))
        return result

    def instances(self) -> Iterator[IndexedInstance]:
        yield from self._rows()

    def study_instances(self, study_id: str) -> list[IndexedInstance] | None:
        exists = self._db.execute("SELECT 1 FROM Resources WHERE publicId = ? AND resourceType = ?",
                                  (study_id, self._STUDY)).fetchone()
        if exists is None:
            return None
        return self._rows("AND st.publicId = ?", (study_id,))
