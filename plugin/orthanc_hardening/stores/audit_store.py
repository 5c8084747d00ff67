"""Where audit rows live: the ``AuditStore`` port and its one implementation on the SQL layer.

The store is deliberately simple: the writer (``services/audit_writer.py``) links events into the
chain and hands the store whole batches of ``StoredEvent`` rows (and sometimes a checkpoint) to
commit in one transaction (``append_linked``: the head is read inside that transaction, under the
append lock, so several nodes on one PostgreSQL database extend one chain); readers query by
filter, replay the chain for verification, or read forward from a sequence number (for the syslog
exporter, with durable named cursors).

SQLite (``sqlite:///…``, the default ``DataDirectory/audit.db``) runs in WAL mode with
``synchronous`` from ``Hardening.Durability`` (NORMAL by default, as Orthanc's own index: a
committed batch survives ``kill -9``; FULL: it also survives power loss). PostgreSQL
(``Hardening.Audit.Database`` or ``Hardening.Database``: ``postgresql://…``) uses the same schema
and SQL through ``stores/sql.py``. Indexes on ``(series_uid, seq)``, ``(study_uid, seq)``,
``(patient_id, seq)`` and ``(user, seq)`` answer a trail among millions of rows in milliseconds.
Every driver error is wrapped in ``StoreUnavailableError`` (password redacted).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from orthanc_hardening.audit.chain import Checkpoint, StoredEvent, event_from_fields, row_fields
from orthanc_hardening.audit.event import Action, AuditEvent, EventCode, Outcome, Transport
from orthanc_hardening.audit.query import AuditQuery
from orthanc_hardening.stores.sql import Database, Transaction, sqlite_url
from orthanc_hardening.timefmt import format_time

SCHEMA_VERSION = 1
WAL_AUTOCHECKPOINT_PAGES = 4000
WAL_SIZE_LIMIT_BYTES = 4 * 1024 * 1024
AUDIT_LOCK = "orthanc-hardening:audit-append"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EVENT_COLUMNS = (
    "seq", "time", "event", "action", "outcome", "user", "roles", "source_ip", "calling_aet", "called_aet",
    "transport", "route", "patient_id", "study_uid", "series_uid", "instance_count", "detail", "prev_hash", "hash",
)
_SELECT = "SELECT " + ", ".join(f'"{c}"' for c in _EVENT_COLUMNS) + " FROM events"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq {bigint} PRIMARY KEY,
    time TEXT NOT NULL,
    event TEXT NOT NULL,
    action TEXT NOT NULL,
    outcome INTEGER NOT NULL,
    "user" TEXT NOT NULL,
    roles TEXT NOT NULL,
    source_ip TEXT NOT NULL,
    calling_aet TEXT NOT NULL,
    called_aet TEXT NOT NULL,
    transport TEXT NOT NULL,
    route TEXT NOT NULL,
    patient_id TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    instance_count INTEGER NOT NULL,
    detail TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_series ON events (series_uid, seq);
CREATE INDEX IF NOT EXISTS events_study ON events (study_uid, seq);
CREATE INDEX IF NOT EXISTS events_patient ON events (patient_id, seq);
CREATE INDEX IF NOT EXISTS events_user ON events ("user", seq);
CREATE INDEX IF NOT EXISTS events_time ON events (time);
CREATE TABLE IF NOT EXISTS checkpoints (
    seq {bigint} PRIMARY KEY,
    hash TEXT NOT NULL,
    time TEXT NOT NULL,
    key_id TEXT NOT NULL,
    signature TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS cursors (
    name TEXT PRIMARY KEY,
    seq {bigint} NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


class AuditStore(Protocol):
    """The audit store port (SQLite or PostgreSQL)."""

    def head(self) -> tuple[int, str] | None:
        """``(seq, hash)`` of the newest row, or ``None`` when empty."""

    def append(self, rows: Sequence[StoredEvent], checkpoint: Checkpoint | None = None) -> None:
        """Commit ``rows`` (and ``checkpoint``) in one durable transaction, or nothing.

        Raises:
            StoreUnavailableError: nothing was committed.
        """

    def append_linked(self, build: Callable[[tuple[int, str] | None], tuple[list[StoredEvent], Checkpoint | None]],
                      ) -> tuple[list[StoredEvent], Checkpoint | None, tuple[int, str] | None]:
        """Commit what ``build(head)`` links to the head read in the same serialised transaction."""

    def add_checkpoint(self, checkpoint: Checkpoint) -> None:
        """Commit one checkpoint. Raises ``StoreUnavailableError``."""

    def last_checkpoint(self) -> Checkpoint | None:
        """The checkpoint with the highest seq."""

    def query(self, query: AuditQuery) -> list[StoredEvent]:
        """Rows matching ``query``, newest first, at most ``query.limit``."""

    def iter_rows(self, batch: int = 5000) -> Iterator[StoredEvent]:
        """Every row in ascending seq (for verification)."""

    def checkpoints(self) -> list[Checkpoint]:
        """Every checkpoint."""

    def read_after(self, seq: int, limit: int) -> list[StoredEvent]:
        """Up to ``limit`` rows with a seq above ``seq``, ascending (for exporters)."""

    def get_cursor(self, name: str) -> int:
        """A named exporter's durable position (0 when never set)."""

    def set_cursor(self, name: str, seq: int) -> None:
        """Durably set a named exporter's position."""

    def close(self) -> None:
        """Release the connection(s)."""


def open_store(url: str, synchronous: str = "FULL", schema: str | None = None) -> SQLAuditStore:
    """Open the store named by ``Hardening.Audit.Database``.

    ``synchronous`` (``NORMAL``/``FULL``) applies to SQLite; PostgreSQL commits synchronously.
    ``schema``: the PostgreSQL schema (``None``: the connection's default ``search_path``).

    Raises:
        StoreUnavailableError: it cannot be opened or created.
    """
    parsed = urlparse(url)
    if parsed.scheme == "sqlite":
        return SQLiteAuditStore(Path(parsed.path), synchronous=synchronous)
    if parsed.scheme in ("postgresql", "postgres"):
        return PostgresAuditStore(url, schema=schema)
    raise ValueError(f"unsupported audit database URL {url!r}")


def _row_values(row: StoredEvent) -> tuple[Any, ...]:
    fields = row.fields or row_fields(row.seq, row.event, row.prev_hash)
    roles = ",".join(row.event.roles)
    return (
        row.seq, fields["time"], fields["event"], fields["action"], fields["outcome"], fields["user"], roles,
        fields["source_ip"], fields["calling_aet"], fields["called_aet"], fields["transport"], fields["route"],
        fields["patient_id"], fields["study_uid"], fields["series_uid"], fields["instance_count"],
        fields["detail"], row.prev_hash, row.hash,
    )


def _stored(values: Sequence[Any]) -> StoredEvent:
    fields = dict(zip(_EVENT_COLUMNS, values, strict=True))
    roles = str(fields["roles"])
    fields["roles"] = [r for r in roles.split(",") if r]
    try:
        event = event_from_fields(fields)
    except (ValueError, KeyError, TypeError) as exc:
        # A row someone made unparseable (an unknown code, a bad time): it is shown as such and,
        # since its recomputed hash cannot match, verification names its sequence number.
        event = AuditEvent(time=_EPOCH, event=EventCode.SECURITY_ALERT, action=Action.EXECUTE,
                           outcome=Outcome.MAJOR_FAILURE, transport=Transport.INTERNAL,
                           detail=f"MALFORMED AUDIT ROW (does not verify): {exc}"[:500])
    return StoredEvent(int(fields["seq"]), event, str(fields["prev_hash"]), str(fields["hash"]))


def _where(query: AuditQuery, mark: str) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    args: list[Any] = []
    for column, value in (("series_uid", query.series), ("study_uid", query.study),
                          ("patient_id", query.patient), ('"user"', query.user)):
        if value:
            clauses.append(f"{column} = {mark}")
            args.append(value)
    if query.action is not None:
        clauses.append(f"action = {mark}")
        args.append(query.action.value)
    if query.event is not None:
        clauses.append(f"event = {mark}")
        args.append(query.event.code)
    if query.outcome is not None:
        clauses.append(f"outcome = {mark}")
        args.append(query.outcome.value)
    if query.since is not None:
        clauses.append(f"time >= {mark}")
        args.append(format_time(query.since))
    if query.until is not None:
        clauses.append(f"time <= {mark}")
        args.append(format_time(query.until))
    if query.after is not None:
        clauses.append(f"seq < {mark}")
        args.append(query.after)
    where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
    return where, args


class SQLAuditStore:
    """The audit store on the SQL layer (``stores/sql.py``): one SQLite file or one PostgreSQL schema.

    Every append runs in one transaction serialised by ``AUDIT_LOCK`` (``BEGIN IMMEDIATE`` on
    SQLite, ``pg_advisory_xact_lock`` on PostgreSQL): ``append_linked`` reads the head *inside*
    that transaction and links the new rows to it, so writers on several nodes sharing one
    PostgreSQL database extend one chain, never fork it, and lose nothing.
    """

    def __init__(self, database: Database, create: bool = True) -> None:
        """Use ``database`` (and create the schema when ``create``).

        Raises:
            StoreUnavailableError: the schema cannot be created.
        """
        self.database = database
        if create:
            database.create_schema(_SCHEMA)
            database.write("INSERT INTO meta (name, value) VALUES ('schema', ?) ON CONFLICT (name) DO NOTHING",
                           (str(SCHEMA_VERSION),))

    @property
    def path(self) -> Path | None:
        return self.database.path

    def head(self) -> tuple[int, str] | None:
        row = self.database.read_one("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1")
        return (int(row[0]), str(row[1])) if row else None

    def _insert(self, tx: Transaction, rows: Sequence[StoredEvent], checkpoint: Checkpoint | None) -> None:
        marks = ", ".join("?" for _ in _EVENT_COLUMNS)
        columns = ", ".join(f'"{c}"' for c in _EVENT_COLUMNS)
        tx.executemany(f"INSERT INTO events ({columns}) VALUES ({marks})", [_row_values(row) for row in rows])
        if checkpoint is not None:
            tx.execute("INSERT INTO checkpoints (seq, hash, time, key_id, signature) VALUES (?, ?, ?, ?, ?) "
                       "ON CONFLICT (seq) DO UPDATE SET hash = excluded.hash, time = excluded.time, "
                       "key_id = excluded.key_id, signature = excluded.signature", _cp_values(checkpoint))

    def append(self, rows: Sequence[StoredEvent], checkpoint: Checkpoint | None = None) -> None:
        with self.database.transaction(serialise=AUDIT_LOCK, action="write") as tx:
            self._insert(tx, rows, checkpoint)

    def append_linked(self, build: Callable[[tuple[int, str] | None], tuple[list[StoredEvent], Checkpoint | None]],
                      ) -> tuple[list[StoredEvent], Checkpoint | None, tuple[int, str] | None]:
        """Read the head and commit what ``build(head)`` links to it, in one serialised transaction.

        Returns:
            The rows and checkpoint committed and the head the rows were linked to.

        Raises:
            StoreUnavailableError: nothing was committed.
        """
        with self.database.transaction(serialise=AUDIT_LOCK, action="write") as tx:
            row = tx.one("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1")
            head = (int(row[0]), str(row[1])) if row else None
            rows, checkpoint = build(head)
            self._insert(tx, rows, checkpoint)
        return rows, checkpoint, head

    def add_checkpoint(self, checkpoint: Checkpoint) -> None:
        self.append([], checkpoint)

    def last_checkpoint(self) -> Checkpoint | None:
        row = self.database.read_one(
            "SELECT seq, hash, time, key_id, signature FROM checkpoints ORDER BY seq DESC LIMIT 1")
        return Checkpoint(int(row[0]), row[1], row[2], row[3], row[4]) if row else None

    def query(self, query: AuditQuery) -> list[StoredEvent]:
        where, args = _where(query, "?")
        return [_stored(r) for r in self.database.read(f"{_SELECT}{where} ORDER BY seq DESC LIMIT ?",
                                                       [*args, query.limit])]

    def iter_rows(self, batch: int = 5000) -> Iterator[StoredEvent]:
        last = 0
        while True:
            chunk = self.read_after(last, batch)
            if not chunk:
                return
            yield from chunk
            last = chunk[-1].seq

    def read_after(self, seq: int, limit: int) -> list[StoredEvent]:
        return [_stored(r) for r in self.database.read(f"{_SELECT} WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit))]

    def count(self) -> int:
        """Number of rows."""
        row = self.database.read_one("SELECT count(*) FROM events")
        return int(row[0]) if row else 0

    def checkpoints(self) -> list[Checkpoint]:
        rows = self.database.read("SELECT seq, hash, time, key_id, signature FROM checkpoints ORDER BY seq")
        return [Checkpoint(int(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4])) for r in rows]

    def get_cursor(self, name: str) -> int:
        row = self.database.read_one("SELECT seq FROM cursors WHERE name = ?", (name,))
        return int(row[0]) if row else 0

    def set_cursor(self, name: str, seq: int) -> None:
        self.database.write("INSERT INTO cursors (name, seq) VALUES (?, ?) "
                            "ON CONFLICT (name) DO UPDATE SET seq = excluded.seq", (name, seq))

    def close(self) -> None:
        self.database.close()


def _cp_values(checkpoint: Checkpoint) -> tuple[Any, ...]:
    return (checkpoint.seq, checkpoint.hash, checkpoint.time, checkpoint.key_id, checkpoint.signature)


class SQLiteAuditStore(SQLAuditStore):
    """The audit store in one SQLite file (WAL; ``synchronous`` NORMAL or FULL)."""

    def __init__(
        self, path: Path, create: bool = True, busy_timeout: float = 5.0, synchronous: str = "FULL"
    ) -> None:
        """Open (and create) the store.

        Args:
            path: the database file.
            create: create the file and schema when missing (``False`` for offline readers).
            busy_timeout: seconds to wait for a lock held by another process before failing.
            synchronous: ``NORMAL`` (a commit survives a process crash) or ``FULL`` (also fsynced).

        Raises:
            StoreUnavailableError: the file cannot be opened or the schema cannot be created.
        """
        database = Database(sqlite_url(Path(path)), synchronous=synchronous, create=create, busy_timeout=busy_timeout)
        if create:
            # Each commit of a few events writes ~50 pages to the WAL (the rows and five indexes on
            # scattered keys), so SQLite's default automatic checkpoint (every 1,000 pages, with an
            # fsync of the WAL and of the database) ran every ~20 commits on the writer's critical
            # path. Every 4,000 pages it runs a quarter as often and copies each page rewritten
            # meanwhile once; the WAL is truncated back to 4 MB after it. Durability is unchanged
            # (a commit is in the WAL before it returns, at either synchronous level).
            database.write(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
            database.write(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT_BYTES}")
        super().__init__(database, create=create)


class PostgresAuditStore(SQLAuditStore):
    """The audit store in PostgreSQL (psycopg 3), same schema and semantics as SQLite.

    Each commit is a PostgreSQL transaction (durable with the server's default
    ``synchronous_commit=on``). Several nodes may share it: appends are serialised by an
    advisory lock and linked to the head read inside the same transaction (one chain).
    """

    def __init__(self, url: str, schema: str | None = None) -> None:
        """Connect and create the schema (``schema``: a PostgreSQL schema of its own, else the default).

        Raises:
            StoreUnavailableError: psycopg is missing or the server cannot be reached.
        """
        super().__init__(Database(url, schema=schema))


def signature_bytes(checkpoint: Checkpoint) -> bytes:
    """The raw signature of a checkpoint."""
    return base64.b64decode(checkpoint.signature)
