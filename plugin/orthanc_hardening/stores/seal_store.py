"""Where seals live: the ``SealStore`` port and its SQLite implementation (WAL).

``synchronous`` follows ``Hardening.Durability``: ``NORMAL`` (default; a committed row survives
a crash or ``kill -9`` of Orthanc, as Orthanc's own SQLite index does) or ``FULL`` (one fsync
per commit: it also survives a power loss).

A seal row is written and committed *before* the attachment's file is renamed into place
(``shell/storage.py``), so an acknowledged instance always has its seal; a crash in between
leaves a row whose file is missing or that Orthanc never indexed. ``suspect_rows`` lists the
rows written since the last clean stop (``mark_clean``), which start-up reconciliation checks
and ``abandon``s. Removals and read failures are recorded too (evidence for an incident).

Errors of the database become ``StoreUnavailableError``; a row that does not parse raises
``SealInvalidError`` from ``Seal.from_bytes``. The same class serves PostgreSQL (``Hardening.Database``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from orthanc_hardening.seal.record import Seal
from orthanc_hardening.stores.sql import SQLITE, Database, Transaction, sqlite_url
from orthanc_hardening.timefmt import format_time

SCHEMA = """
CREATE TABLE IF NOT EXISTS seals (
    {rowid}
    uuid TEXT NOT NULL,
    content_type INTEGER NOT NULL,
    record {blob} NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    key_id TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'stored',
    changed_at TEXT NOT NULL DEFAULT '',
    writer TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (uuid, content_type)
);
CREATE INDEX IF NOT EXISTS seals_sop ON seals (sop_instance_uid);
CREATE TABLE IF NOT EXISTS failures (
    id {id},
    time TEXT NOT NULL,
    uuid TEXT NOT NULL,
    content_type INTEGER NOT NULL,
    problem TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
# PostgreSQL's explicit rowid column (SQLite's implicit one is the table's key already).
POSTGRES_INDEXES = "CREATE INDEX IF NOT EXISTS seals_rowid ON seals (rowid)"

STORED = "stored"
REMOVED = "removed"
ABANDONED = "abandoned"


@dataclass(frozen=True, slots=True)
class SealRow:
    """A seal with its row id and state (``stored``, ``removed``, ``abandoned``)."""

    rowid: int
    seal: Seal
    state: str


@dataclass(frozen=True, slots=True)
class Failure:
    """One failed verification, recorded for the incident report and for archive jobs."""

    id: int
    time: str
    uuid: str
    content_type: int
    problem: str


class SealStore(Protocol):
    """The seal store port."""

    def put(self, seal: Seal) -> bytes: ...
    def get(self, uuid: str, content_type: int) -> Seal | None: ...
    def delete(self, uuid: str, content_type: int) -> None: ...
    def mark_removed(self, uuid: str, content_type: int, now: datetime) -> None: ...
    def record_failure(self, uuid: str, content_type: int, problem: str, now: datetime) -> int: ...
    def failures_since(self, failure_id: int) -> list[Failure]: ...
    def last_failure_id(self) -> int: ...


class SQLSealStore:
    """Seals in one SQLite file (WAL; ``synchronous`` NORMAL or FULL, see the module docstring) or
    in a PostgreSQL schema shared by several nodes (``stores/sql.py``).

    One connection guarded by a lock: a commit in WAL mode with ``NORMAL`` is a single write of
    the WAL frame (no fsync), so the lock is held for microseconds. PostgreSQL has no implicit
    ``rowid``: the schema gives it a ``rowid`` sequence column, renumbered when a row is replaced
    (as SQLite's ``INSERT OR REPLACE`` does), so ``suspect_rows`` and ``stored_after`` mean the same.
    """

    def __init__(self, database: Database, writer: str = "") -> None:
        """Use ``database`` and create the schema.

        ``writer`` names the node whose writes these are (``shell/storage.node_identity``): on a
        database shared by several nodes, start-up reconciliation checks only this node's rows,
        never a write another node has in flight.

        Raises:
            StoreUnavailableError: the database cannot be opened or the schema created.
        """
        self.database = database
        self.path = database.path
        self.writer = writer
        database.create_schema(SCHEMA if database.dialect == SQLITE else f"{SCHEMA};{POSTGRES_INDEXES}")
        self._add_writer_column()

    def _add_writer_column(self) -> None:
        """Seal stores created before rows named their writer gain the column (empty: one node)."""
        with self._cursor() as db:
            if db.dialect == SQLITE:
                columns = {str(row[1]) for row in db.execute("PRAGMA table_info(seals)").fetchall()}
                if "writer" not in columns:
                    db.execute("ALTER TABLE seals ADD COLUMN writer TEXT NOT NULL DEFAULT ''")
            else:
                db.execute("ALTER TABLE seals ADD COLUMN IF NOT EXISTS writer TEXT NOT NULL DEFAULT ''")

    def close(self) -> None:
        self.database.close()

    @contextmanager
    def _cursor(self) -> Iterator[Transaction]:
        with self.database.transaction() as tx:
            yield tx

    def put(self, seal: Seal, record: bytes | None = None) -> bytes:
        """Insert (or replace) the seal of an attachment; committed when this returns.

        Args:
            seal: the seal.
            record: ``seal.to_bytes()`` when the caller already has it (``sign_attachment``).

        Returns:
            The record bytes stored (what ``get_record`` will return).

        Raises:
            StoreUnavailableError: the row could not be committed.
        """
        if record is None:
            record = seal.to_bytes()
        values = (seal.uuid, seal.content_type, record, seal.sop_instance_uid, seal.study_uid, seal.key_id,
                  self.writer)
        if self.database.dialect == SQLITE:
            # One statement in autocommit is its own transaction, committed when it returns: the
            # same durability as BEGIN, INSERT, COMMIT, with a third of the statements.
            self.database.write("INSERT OR REPLACE INTO seals (uuid, content_type, record, sop_instance_uid, "
                                "study_uid, key_id, writer, state) VALUES (?, ?, ?, ?, ?, ?, ?, 'stored')", values)
            return record
        with self._cursor() as db:
            db.execute("INSERT INTO seals (uuid, content_type, record, sop_instance_uid, study_uid, key_id, "
                       "writer, state) VALUES (?, ?, ?, ?, ?, ?, ?, 'stored') ON CONFLICT (uuid, content_type) "
                       "DO UPDATE SET record = excluded.record, sop_instance_uid = excluded.sop_instance_uid, "
                       "study_uid = excluded.study_uid, key_id = excluded.key_id, writer = excluded.writer, "
                       "state = 'stored', changed_at = '', rowid = DEFAULT", values)
        return record

    def get(self, uuid: str, content_type: int) -> Seal | None:
        """The seal of an attachment (whatever its state), or ``None``.

        Raises:
            StoreUnavailableError: the store cannot be read.
            SealInvalidError: the stored record is malformed.
        """
        record = self.get_record(uuid, content_type)
        return None if record is None else Seal.from_bytes(record)

    def get_record(self, uuid: str, content_type: int) -> bytes | None:
        """The stored record bytes of an attachment's seal (one primary-key select), or ``None``.

        Raises:
            StoreUnavailableError: the store cannot be read.
        """
        # One statement, no BEGIN and COMMIT around it (PostgreSQL: a dead connection is replaced once).
        found = self.database.read_one("SELECT record FROM seals WHERE uuid = ? AND content_type = ?",
                                       (uuid, content_type))
        return None if found is None else bytes(found[0])

    def content_types_of(self, uuid: str) -> list[int]:
        """The content types an attachment uuid is sealed under (a primary-key prefix select).

        Raises:
            StoreUnavailableError: the store cannot be read.
        """
        with self._cursor() as db:
            rows = db.execute("SELECT content_type FROM seals WHERE uuid = ? ORDER BY content_type", (uuid,)).fetchall()
        return [int(row[0]) for row in rows]

    def get_row(self, uuid: str, content_type: int) -> SealRow | None:
        """Like ``get`` with the row id and state."""
        with self._cursor() as db:
            found = db.execute(
                "SELECT rowid, record, state FROM seals WHERE uuid = ? AND content_type = ?", (uuid, content_type)
            ).fetchone()
        if found is None:
            return None
        return SealRow(int(found[0]), Seal.from_bytes(found[1]), str(found[2]))

    def seals_of_instance(self, sop_instance_uid: str) -> list[Seal]:
        """Every stored seal bound to a SOP Instance UID."""
        with self._cursor() as db:
            rows = db.execute(
                "SELECT record FROM seals WHERE sop_instance_uid = ? AND state = 'stored'", (sop_instance_uid,)
            ).fetchall()
        return [Seal.from_bytes(r[0]) for r in rows]

    def delete(self, uuid: str, content_type: int) -> None:
        """Drop a seal row (only when its file was never written)."""
        with self._cursor() as db:
            db.execute("DELETE FROM seals WHERE uuid = ? AND content_type = ?", (uuid, content_type))

    def _set_state(self, uuid: str, content_type: int, state: str, now: datetime) -> None:
        with self._cursor() as db:
            db.execute(
                "UPDATE seals SET state = ?, changed_at = ? WHERE uuid = ? AND content_type = ?",
                (state, format_time(now), uuid, content_type),
            )

    def mark_removed(self, uuid: str, content_type: int, now: datetime) -> None:
        """Record that Orthanc removed the attachment (the row stays as evidence)."""
        self._set_state(uuid, content_type, REMOVED, now)

    def abandon(self, uuid: str, content_type: int, now: datetime) -> None:
        """Record that the row belongs to a write that never completed (start-up reconciliation)."""
        self._set_state(uuid, content_type, ABANDONED, now)

    def record_failure(self, uuid: str, content_type: int, problem: str, now: datetime) -> int:
        """Record a failed verification; return its id (a counter that only grows)."""
        with self._cursor() as db:
            return db.insert_id("INSERT INTO failures (time, uuid, content_type, problem) VALUES (?, ?, ?, ?)",
                                (format_time(now), uuid, content_type, problem[:1000]))

    def last_failure_id(self) -> int:
        with self._cursor() as db:
            found = db.execute("SELECT COALESCE(MAX(id), 0) FROM failures").fetchone()
        return int(found[0])

    def failures_since(self, failure_id: int) -> list[Failure]:
        """Failures recorded after ``failure_id``, oldest first."""
        with self._cursor() as db:
            rows = db.execute(
                "SELECT id, time, uuid, content_type, problem FROM failures WHERE id > ? ORDER BY id", (failure_id,)
            ).fetchall()
        return [Failure(int(r[0]), str(r[1]), str(r[2]), int(r[3]), str(r[4])) for r in rows]

    def count(self, state: str = STORED) -> int:
        with self._cursor() as db:
            return int(db.execute("SELECT COUNT(*) FROM seals WHERE state = ?", (state,)).fetchone()[0])

    # -- meta and reconciliation -----------------------------------------------------------

    def get_meta(self, name: str) -> str | None:
        with self._cursor() as db:
            found = db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if found is None else str(found[0])

    def set_meta(self, name: str, value: str) -> None:
        with self._cursor() as db:
            db.execute("INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET "
                       "value = excluded.value", (name, value))

    def max_rowid(self) -> int:
        with self._cursor() as db:
            return int(db.execute("SELECT COALESCE(MAX(rowid), 0) FROM seals").fetchone()[0])

    def _clean_mark(self) -> str:
        return "clean_through_rowid" if not self.writer else f"clean_through_rowid:{self.writer}"

    def mark_clean(self) -> None:
        """Record that every row this node wrote so far belongs to a completed write (clean stop)."""
        self.set_clean_through(self.max_rowid())

    def set_clean_through(self, rowid: int) -> None:
        """Record that this node's rows up to ``rowid`` belong to completed writes."""
        self.set_meta(self._clean_mark(), str(rowid))

    def suspect_rows(self) -> list[SealRow]:
        """This node's stored rows written after its last clean stop (possibly half-written state).

        Another node's rows are never suspects here: on a shared database its write may be in
        flight right now (seal row committed, file or Orthanc's index not yet), and that node
        reconciles its own rows when it starts again.
        """
        clean = int(self.get_meta(self._clean_mark()) or "0")
        with self._cursor() as db:
            rows = db.execute(
                "SELECT rowid, record, state FROM seals WHERE rowid > ? AND state = 'stored' AND writer = ? "
                "ORDER BY rowid", (clean, self.writer)
            ).fetchall()
        return [SealRow(int(r[0]), Seal.from_bytes(r[1]), str(r[2])) for r in rows]


class SQLiteSealStore(SQLSealStore):
    """The seal store in its SQLite file (the default ``DataDirectory/seals.db``)."""

    def __init__(self, path: Path, synchronous: str = "FULL") -> None:
        super().__init__(Database(sqlite_url(Path(path)), synchronous=synchronous))
        self.synchronous = synchronous


class MemorySealStore:
    """An in-memory ``SealStore`` for unit tests."""

    def __init__(self) -> None:
        self.seals: dict[tuple[str, int], Seal] = {}
        self.states: dict[tuple[str, int], str] = {}
        self.failures: list[Failure] = []

    def put(self, seal: Seal) -> bytes:
        self.seals[(seal.uuid, seal.content_type)] = seal
        self.states[(seal.uuid, seal.content_type)] = STORED
        return seal.to_bytes()

    def get(self, uuid: str, content_type: int) -> Seal | None:
        return self.seals.get((uuid, content_type))

    def get_record(self, uuid: str, content_type: int) -> bytes | None:
        seal = self.seals.get((uuid, content_type))
        return None if seal is None else seal.to_bytes()

    def delete(self, uuid: str, content_type: int) -> None:
        self.seals.pop((uuid, content_type), None)

    def mark_removed(self, uuid: str, content_type: int, now: datetime) -> None:
        self.states[(uuid, content_type)] = REMOVED

    def record_failure(self, uuid: str, content_type: int, problem: str, now: datetime) -> int:
        failure = Failure(len(self.failures) + 1, format_time(now), uuid, content_type, problem)
        self.failures.append(failure)
        return failure.id

    def failures_since(self, failure_id: int) -> list[Failure]:
        return [f for f in self.failures if f.id > failure_id]

    def last_failure_id(self) -> int:
        return len(self.failures)


class SealReader:
    """Read-only access to the seal store's rows (for the scrub and offline tools)."""

    def __init__(self, source: Path | Database) -> None:
        """Read the seal store at ``source`` (a SQLite file, opened read-only, or a ``Database``).

        Raises:
            StoreUnavailableError: it cannot be opened.
        """
        self._db = source if isinstance(source, Database) else Database(sqlite_url(Path(source)), readonly=True)

    def stored_keys(self) -> list[tuple[str, int]]:
        rows = self._db.read("SELECT uuid, content_type FROM seals WHERE state = 'stored'")
        return [(str(u), int(t)) for u, t in rows]

    def get(self, uuid: str, content_type: int) -> Seal | None:
        """The stored seal of an attachment (state ``stored``), or ``None``.

        Raises:
            SealInvalidError: the row is malformed.
        """
        return self.get_with_record(uuid, content_type)[0]

    def get_with_record(self, uuid: str, content_type: int) -> tuple[Seal | None, bytes]:
        """Like ``get``, with the stored record's exact bytes (``b""`` when there is none).

        Raises:
            SealInvalidError: the row is malformed.
        """
        row = self._db.read_one("SELECT record FROM seals WHERE uuid = ? AND content_type = ? AND state = 'stored'",
                                (uuid, content_type))
        if row is None:
            return None, b""
        record = bytes(row[0])
        return Seal.from_bytes(record), record

    def stored_after(self, rowid: int, content_type: int) -> list[tuple[int, bytes]]:
        """``(rowid, record)`` of the stored seals of ``content_type`` written after ``rowid``, in order.

        Raises:
            StoreUnavailableError: the store cannot be read.
        """
        return [(int(r), bytes(rec)) for r, rec in self._db.read(
            "SELECT rowid, record FROM seals WHERE rowid > ? AND content_type = ? AND state = 'stored' "
            "ORDER BY rowid", (rowid, content_type))]
