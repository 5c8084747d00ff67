"""Where audit rows live: the ``AuditStore`` port and its SQLite (WAL) implementation.

The store is deliberately simple: the single writer (``audit/writer.py``) computes the chain and
hands the store whole batches of ``StoredEvent`` rows (and sometimes a checkpoint) to commit in one
transaction; readers query by filter, replay the chain for verification, or read forward from a
sequence number (for the syslog exporter, with durable named cursors).

SQLite runs in WAL mode with ``synchronous`` from ``Hardening.Durability`` (NORMAL by default, as
Orthanc's own index: a committed batch survives ``kill -9``; FULL: it also survives power loss and
``kill -9``. Indexes on ``(series_uid, seq)``, ``(study_uid, seq)``, ``(patient_id, seq)`` and
``(user, seq)`` answer a trail among millions of rows in milliseconds. Every ``sqlite3`` error is
wrapped in ``StoreUnavailableError``.

PostgreSQL (``Hardening.Audit.Database: postgresql://…``) uses the same interface and schema
through psycopg 3 (``PostgresAuditStore``).
"""

from __future__ import annotations

import base64
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from orthanc_hardening.audit.chain import Checkpoint, StoredEvent, event_from_fields, row_fields
from orthanc_hardening.audit.event import Action, AuditEvent, EventCode, Outcome, Transport
from orthanc_hardening.audit.query import AuditQuery
from orthanc_hardening.config import redact_url
from orthanc_hardening.errors import StoreUnavailableError
from orthanc_hardening.timefmt import format_time

SCHEMA_VERSION = 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EVENT_COLUMNS = (
    "seq", "time", "event", "action", "outcome", "user", "roles", "source_ip", "calling_aet", "called_aet",
    "transport", "route", "patient_id", "study_uid", "series_uid", "instance_count", "detail", "prev_hash", "hash",
)
_SELECT = "SELECT " + ", ".join(f'"{c}"' for c in _EVENT_COLUMNS) + " FROM events"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
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
    seq INTEGER PRIMARY KEY,
    hash TEXT NOT NULL,
    time TEXT NOT NULL,
    key_id TEXT NOT NULL,
    signature TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS cursors (
    name TEXT PRIMARY KEY,
    seq INTEGER NOT NULL
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


def open_store(url: str, synchronous: str = "FULL") -> AuditStore:
    """Open the store named by ``Hardening.Audit.Database``.

    ``synchronous`` (``NORMAL``/``FULL``) applies to SQLite; PostgreSQL commits synchronously.

    Raises:
        StoreUnavailableError: it cannot be opened or created.
    """
    parsed = urlparse(url)
    if parsed.scheme == "sqlite":
        return SQLiteAuditStore(Path(parsed.path), synchronous=synchronous)
    if parsed.scheme in ("postgresql", "postgres"):
        return PostgresAuditStore(url)
    raise ValueError(f"unsupported audit database URL {url!r}")


def _without_password(text: str, url: str) -> str:
    """``text`` (a driver's error message) with the URL's password, if any, replaced by ``***``."""
    password = urlparse(url).password
    for part in urlparse(url).query.split("&"):
        if part.lower().startswith("password="):
            password = part.split("=", 1)[1]
    return text.replace(password, "***") if password else text


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


class SQLiteAuditStore:
    """The audit store in one SQLite file (WAL; ``synchronous`` NORMAL or FULL)."""

    def __init__(
        self, path: Path, create: bool = True, busy_timeout: float = 5.0, synchronous: str = "FULL"
    ) -> None:
        """Open (and create) the store.

        Args:
            path: the database file.
            create: create the file and schema when missing (``False`` for offline readers).
            busy_timeout: seconds to wait for a lock held by another process before failing.
            synchronous: ``NORMAL`` (a commit survives a process crash: WAL frames are written
                before the commit returns) or ``FULL`` (also fsynced: survives power loss).

        Raises:
            StoreUnavailableError: the file cannot be opened or the schema cannot be created.
        """
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be NORMAL or FULL, not {synchronous!r}")
        self.path = Path(path)
        self._synchronous = synchronous
        self._busy_timeout = busy_timeout
        self._lock = threading.Lock()
        try:
            if not create and not self.path.is_file():
                raise StoreUnavailableError(f"audit database {self.path} does not exist")
            if create:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = self._connect()
            if create:
                with self._conn:
                    self._conn.executescript(_SCHEMA)
                    self._conn.execute("INSERT OR IGNORE INTO meta (name, value) VALUES ('schema', ?)",
                                       (str(SCHEMA_VERSION),))
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailableError(f"audit database {self.path} cannot be opened: {exc}") from exc

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(str(self.path), timeout=self._busy_timeout, check_same_thread=False,
                               isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL: the WAL frames are written before a commit returns, so a committed event survives
        # kill -9 of Orthanc; FULL also fsyncs them, so it survives power loss (Hardening.Durability).
        conn.execute(f"PRAGMA synchronous={self._synchronous}")
        conn.execute(f"PRAGMA busy_timeout={int(self._busy_timeout * 1000)}")
        return conn

    def _run(self, action: str, function: Any) -> Any:
        with self._lock:
            try:
                return function(self._conn)
            except sqlite3.Error as exc:
                raise StoreUnavailableError(f"audit store cannot {action}: {exc}") from exc

    def head(self) -> tuple[int, str] | None:
        row = self._run("read", lambda c: c.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1")
                        .fetchone())
        return (int(row[0]), str(row[1])) if row else None

    def append(self, rows: Sequence[StoredEvent], checkpoint: Checkpoint | None = None) -> None:
        values = [_row_values(row) for row in rows]
        marks = ", ".join("?" for _ in _EVENT_COLUMNS)
        columns = ", ".join(f'"{c}"' for c in _EVENT_COLUMNS)

        def write(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(f"INSERT INTO events ({columns}) VALUES ({marks})", values)
                if checkpoint is not None:
                    conn.execute("INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?, ?, ?)", _cp_values(checkpoint))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

        self._run("write", write)

    def add_checkpoint(self, checkpoint: Checkpoint) -> None:
        self.append([], checkpoint)

    def last_checkpoint(self) -> Checkpoint | None:
        row = self._run("read", lambda c: c.execute(
            "SELECT seq, hash, time, key_id, signature FROM checkpoints ORDER BY seq DESC LIMIT 1").fetchone())
        return Checkpoint(int(row[0]), row[1], row[2], row[3], row[4]) if row else None

    def query(self, query: AuditQuery) -> list[StoredEvent]:
        where, args = _where(query, "?")
        sql = f"{_SELECT}{where} ORDER BY seq DESC LIMIT ?"
        rows = self._run("read", lambda c: c.execute(sql, [*args, query.limit]).fetchall())
        return [_stored(r) for r in rows]

    def iter_rows(self, batch: int = 5000) -> Iterator[StoredEvent]:
        last = 0
        while True:
            chunk = self.read_after(last, batch)
            if not chunk:
                return
            yield from chunk
            last = chunk[-1].seq

    def read_after(self, seq: int, limit: int) -> list[StoredEvent]:
        rows = self._run("read", lambda c: c.execute(f"{_SELECT} WHERE seq > ? ORDER BY seq LIMIT ?",
                                                     (seq, limit)).fetchall())
        return [_stored(r) for r in rows]

    def count(self) -> int:
        """Number of rows."""
        return int(self._run("read", lambda c: c.execute("SELECT count(*) FROM events").fetchone()[0]))

    def checkpoints(self) -> list[Checkpoint]:
        rows = self._run("read", lambda c: c.execute(
            "SELECT seq, hash, time, key_id, signature FROM checkpoints ORDER BY seq").fetchall())
        return [Checkpoint(int(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4])) for r in rows]

    def get_cursor(self, name: str) -> int:
        row = self._run("read", lambda c: c.execute("SELECT seq FROM cursors WHERE name = ?", (name,)).fetchone())
        return int(row[0]) if row else 0

    def set_cursor(self, name: str, seq: int) -> None:
        self._run("write", lambda c: c.execute(
            "INSERT INTO cursors (name, seq) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET seq = excluded.seq",
            (name, seq)))

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _cp_values(checkpoint: Checkpoint) -> tuple[Any, ...]:
    return (checkpoint.seq, checkpoint.hash, checkpoint.time, checkpoint.key_id, checkpoint.signature)


class PostgresAuditStore:
    """The audit store in PostgreSQL (psycopg 3), same schema and semantics as SQLite.

    Each commit is a PostgreSQL transaction (durable with the server's default
    ``synchronous_commit=on``). Several Orthanc nodes must not share one audit database: the
    chain has a single writer (use one database, or one schema, per node).
    """

    def __init__(self, url: str) -> None:
        """Connect and create the schema.

        Raises:
            StoreUnavailableError: psycopg is missing or the server cannot be reached.
        """
        self._lock = threading.Lock()
        try:
            import psycopg
        except ImportError as exc:
            raise StoreUnavailableError("psycopg is not installed: PostgreSQL audit store unavailable") from exc
        self._psycopg = psycopg
        self._url = url
        try:
            self._conn = psycopg.connect(url, autocommit=False)
            with self._conn.transaction():
                schema = _SCHEMA.replace("seq INTEGER PRIMARY KEY", "seq BIGINT PRIMARY KEY")
                for statement in filter(None, (s.strip() for s in schema.split(";"))):
                    self._conn.execute(statement)
                self._conn.execute("INSERT INTO meta (name, value) VALUES ('schema', %s) ON CONFLICT DO NOTHING",
                                   (str(SCHEMA_VERSION),))
        except psycopg.Error as exc:
            raise StoreUnavailableError(f"PostgreSQL audit store {redact_url(url)} cannot be opened: "
                                        f"{_without_password(str(exc), url)}") from exc

    def _run(self, action: str, function: Any) -> Any:
        with self._lock:
            try:
                if self._conn.closed:
                    self._conn = self._psycopg.connect(self._url, autocommit=False)
                with self._conn.transaction():
                    return function(self._conn)
            except self._psycopg.Error as exc:
                raise StoreUnavailableError(f"audit store cannot {action}: "
                                            f"{_without_password(str(exc), self._url)}") from exc

    def head(self) -> tuple[int, str] | None:
        row = self._run("read", lambda c: c.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1")
                        .fetchone())
        return (int(row[0]), str(row[1])) if row else None

    def append(self, rows: Sequence[StoredEvent], checkpoint: Checkpoint | None = None) -> None:
        values = [_row_values(row) for row in rows]
        marks = ", ".join("%s" for _ in _EVENT_COLUMNS)
        columns = ", ".join(f'"{c}"' for c in _EVENT_COLUMNS)

        def write(conn: Any) -> None:
            with conn.cursor() as cursor:
                if values:
                    cursor.executemany(f"INSERT INTO events ({columns}) VALUES ({marks})", values)
                if checkpoint is not None:
                    cursor.execute(
                        "INSERT INTO checkpoints VALUES (%s, %s, %s, %s, %s) ON CONFLICT (seq) DO UPDATE SET "
                        "hash = excluded.hash, time = excluded.time, key_id = excluded.key_id, "
                        "signature = excluded.signature", _cp_values(checkpoint))

        self._run("write", write)

    def add_checkpoint(self, checkpoint: Checkpoint) -> None:
        self.append([], checkpoint)

    def last_checkpoint(self) -> Checkpoint | None:
        row = self._run("read", lambda c: c.execute(
            "SELECT seq, hash, time, key_id, signature FROM checkpoints ORDER BY seq DESC LIMIT 1").fetchone())
        return Checkpoint(int(row[0]), row[1], row[2], row[3], row[4]) if row else None

    def query(self, query: AuditQuery) -> list[StoredEvent]:
        where, args = _where(query, "%s")
        sql = f"{_SELECT}{where} ORDER BY seq DESC LIMIT %s"
        rows = self._run("read", lambda c: c.execute(sql, [*args, query.limit]).fetchall())
        return [_stored(r) for r in rows]

    def iter_rows(self, batch: int = 5000) -> Iterator[StoredEvent]:
        last = 0
        while True:
            chunk = self.read_after(last, batch)
            if not chunk:
                return
            yield from chunk
            last = chunk[-1].seq

    def read_after(self, seq: int, limit: int) -> list[StoredEvent]:
        rows = self._run("read", lambda c: c.execute(f"{_SELECT} WHERE seq > %s ORDER BY seq LIMIT %s",
                                                     (seq, limit)).fetchall())
        return [_stored(r) for r in rows]

    def checkpoints(self) -> list[Checkpoint]:
        rows = self._run("read", lambda c: c.execute(
            "SELECT seq, hash, time, key_id, signature FROM checkpoints ORDER BY seq").fetchall())
        return [Checkpoint(int(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4])) for r in rows]

    def get_cursor(self, name: str) -> int:
        row = self._run("read", lambda c: c.execute("SELECT seq FROM cursors WHERE name = %s", (name,)).fetchone())
        return int(row[0]) if row else 0

    def set_cursor(self, name: str, seq: int) -> None:
        self._run("write", lambda c: c.execute(
            "INSERT INTO cursors (name, seq) VALUES (%s, %s) ON CONFLICT (name) DO UPDATE SET seq = excluded.seq",
            (name, seq)))

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def signature_bytes(checkpoint: Checkpoint) -> bytes:
    """The raw signature of a checkpoint."""
    return base64.b64decode(checkpoint.signature)
