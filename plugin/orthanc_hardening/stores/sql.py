"""One SQL layer for every plugin store: SQLite (one WAL file per store) or PostgreSQL (psycopg 3).

``open_database(url, schema=…)`` gives a ``Database``; the stores write their SQL once, with
``?`` placeholders (turned into psycopg's ``%s`` for PostgreSQL; values always travel as bound
parameters, never spliced), and run it inside ``Database.transaction()``. The few dialect
differences (the type of an auto-numbered column, a binary column) are spelled in the schema with
``{id}``, ``{blob}`` and ``{bigint}`` and filled in by ``Database.create_schema``.

* Errors of either driver (and of the file system) become ``StoreUnavailableError``, whose text
  never contains the URL's password.
* Schema creation is idempotent and safe when several nodes start at once: on PostgreSQL the DDL
  runs under a transaction-level advisory lock (``pg_advisory_xact_lock``), in the store's own
  schema (``CREATE SCHEMA IF NOT EXISTS``, named with ``psycopg.sql.Identifier``).
* ``transaction(serialise=key)`` serialises writers between nodes: ``BEGIN IMMEDIATE`` on SQLite
  (one writer per file), ``pg_advisory_xact_lock(key)`` on PostgreSQL (released at commit or
  rollback, also when the holder's connection dies).
* One connection per ``Database``, guarded by a lock (the stores' calls are short); a PostgreSQL
  connection that broke (server restarted) is replaced at the next call, so service resumes by
  itself once the server is back.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from orthanc_hardening.errors import StoreUnavailableError

SQLITE = "sqlite"
POSTGRESQL = "postgresql"
_DDL_LOCK = "orthanc-hardening:ddl"
_TYPES = {
    SQLITE: {"id": "INTEGER PRIMARY KEY AUTOINCREMENT", "blob": "BLOB", "bigint": "INTEGER", "rowid": "",
             "real": "REAL"},
    # PostgreSQL has no implicit rowid: a table that relies on one declares it with {rowid}.
    POSTGRESQL: {"id": "BIGSERIAL PRIMARY KEY", "blob": "BYTEA", "bigint": "BIGINT", "rowid": "rowid BIGSERIAL,",
                 "real": "DOUBLE PRECISION"},
}


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for ``name`` (the same on every node)."""
    value = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big")
    return value - (1 << 64) if value >= (1 << 63) else value


def redact(text: str, url: str) -> str:
    """``text`` (a driver's message) with the password of ``url`` (user part or ``password=``) hidden."""
    parsed = urlparse(url)
    secrets = [parsed.password] if parsed.password else []
    for part in parsed.query.split("&"):
        if part.lower().startswith("password="):
            secrets.append(part.split("=", 1)[1])
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***").replace(unquote(secret), "***")
    return text


def is_postgres_url(url: str | None) -> bool:
    return url is not None and urlparse(url).scheme in ("postgresql", "postgres")


class Transaction:
    """The statements of one transaction (``Database.transaction``)."""

    def __init__(self, database: Database, conn: Any) -> None:
        self._database = database
        self._conn = conn

    @property
    def dialect(self) -> str:
        return self._database.dialect

    def execute(self, statement: str, params: Sequence[Any] = ()) -> Any:
        """Run one statement; returns a cursor (``fetchone``, ``fetchall``, ``rowcount``)."""
        return self._conn.execute(self._database.sql(statement), tuple(params))

    def executemany(self, statement: str, rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        if self.dialect == SQLITE:
            self._conn.executemany(statement, rows)
        else:
            with self._conn.cursor() as cursor:
                cursor.executemany(self._database.sql(statement), rows)

    def one(self, statement: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        row = self.execute(statement, params).fetchone()
        return None if row is None else tuple(row)

    def all(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in self.execute(statement, params).fetchall()]

    def insert_id(self, statement: str, params: Sequence[Any] = (), column: str = "id") -> int:
        """Run an ``INSERT`` and return the auto-numbered ``column`` of the new row."""
        if self.dialect == SQLITE:
            return int(self._conn.execute(statement, tuple(params)).lastrowid or 0)
        row = self._conn.execute(self._database.sql(f"{statement} RETURNING {column}"), tuple(params)).fetchone()
        return int(row[0])

    def serialise(self, name: str) -> None:
        """Wait for (PostgreSQL) the named lock until this transaction ends (SQLite: the file's write lock)."""
        if self.dialect == POSTGRESQL:
            self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key(name),))


class Database:
    """One connection to a store's database (SQLite file or PostgreSQL schema)."""

    def __init__(self, url: str, schema: str | None = None, synchronous: str = "FULL", readonly: bool = False,
                 create: bool = True, busy_timeout: float = 30.0) -> None:
        """Open the database named by ``url``.

        Args:
            url: ``sqlite:///absolute/path.db`` or a libpq ``postgresql://…`` URL.
            schema: the PostgreSQL schema holding this store's tables (created when missing);
                ``None``: the connection's default ``search_path``. Ignored for SQLite.
            synchronous: SQLite ``synchronous`` pragma (``NORMAL`` or ``FULL``).
            readonly: SQLite only: open the file read-only (it must exist).
            create: SQLite only: create the file (and its directory) when missing.
            busy_timeout: seconds SQLite waits for another writer.

        Raises:
            StoreUnavailableError: the database cannot be opened.
            ValueError: an unsupported URL or ``synchronous`` value (a caller bug).
        """
        parsed = urlparse(url)
        self.url = url
        self.schema = schema
        self._lock = threading.RLock()
        self._conn: Any = None
        self.path: Path | None = None
        if parsed.scheme == "sqlite":
            if synchronous not in ("NORMAL", "FULL"):
                raise ValueError(f"synchronous must be NORMAL or FULL, not {synchronous!r}")
            self.dialect = SQLITE
            self.path = Path(parsed.path)
            self._synchronous = synchronous
            self._readonly = readonly
            self._create = create and not readonly
            self._busy_timeout = busy_timeout
        elif parsed.scheme in ("postgresql", "postgres"):
            self.dialect = POSTGRESQL
        else:
            raise ValueError(f"unsupported database URL scheme {parsed.scheme!r}")
        with self._lock:
            self._connection()

    @property
    def name(self) -> str:
        """How errors name this database (a path, or the URL without its password)."""
        if self.path is not None:
            return str(self.path)
        from orthanc_hardening.config import redact_url

        return redact_url(self.url) + (f" (schema {self.schema})" if self.schema else "")

    def sql(self, statement: str) -> str:
        """``statement`` in this dialect's placeholder style."""
        if self.dialect == SQLITE:
            return statement
        if "%" in statement:
            raise ValueError("a literal % in SQL: pass it as a parameter")
        return statement.replace("?", "%s")

    def _error(self, action: str, exc: BaseException) -> StoreUnavailableError:
        return StoreUnavailableError(f"database {self.name} cannot {action}: {redact(str(exc), self.url)}")

    def _connection(self) -> Any:
        if self._conn is not None and not (self.dialect == POSTGRESQL and (self._conn.closed or self._conn.broken)):
            return self._conn
        if self.dialect == SQLITE:
            self._conn = self._connect_sqlite()
        else:
            self._conn = self._connect_postgres()
        return self._conn

    def _connect_sqlite(self) -> sqlite3.Connection:
        assert self.path is not None
        try:
            if self._readonly or not self._create:
                if not self.path.is_file():
                    raise StoreUnavailableError(f"database {self.path} does not exist")
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            target = f"file:{self.path}?mode=ro" if self._readonly else str(self.path)
            conn = sqlite3.connect(target, uri=self._readonly, check_same_thread=False, isolation_level=None,
                                   timeout=self._busy_timeout)
            if not self._readonly:
                conn.execute("PRAGMA journal_mode=WAL")
                # NORMAL: a commit survives kill -9 (the WAL frame is written before it returns);
                # FULL also fsyncs it, so it survives power loss (Hardening.Durability).
                conn.execute(f"PRAGMA synchronous={self._synchronous}")
            conn.execute(f"PRAGMA busy_timeout={int(self._busy_timeout * 1000)}")
            return conn
        except (sqlite3.Error, OSError) as exc:
            raise self._error("be opened", exc) from exc

    def _connect_postgres(self) -> Any:
        try:
            import psycopg
            from psycopg import sql
        except ImportError as exc:
            raise StoreUnavailableError("psycopg is not installed: PostgreSQL store unavailable") from exc
        try:
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=10)
            if self.schema:
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key(_DDL_LOCK),))
                    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema)))
                conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
            return conn
        except psycopg.Error as exc:
            raise self._error("be opened", exc) from exc

    def _driver_errors(self) -> tuple[type[BaseException], ...]:
        if self.dialect == SQLITE:
            return (sqlite3.Error, OSError)
        import psycopg

        return (psycopg.Error, OSError)

    @contextmanager
    def transaction(self, serialise: str | None = None, action: str = "be used") -> Iterator[Transaction]:
        """One transaction: committed when the block ends, rolled back when it raises.

        Args:
            serialise: a lock name; writers naming the same lock run one after the other (across
                processes and nodes). SQLite always takes the file's write lock first (``BEGIN
                IMMEDIATE``) when a name is given, so a read inside sees the latest commit.
            action: how an error names what failed ("write", "read").

        Raises:
            StoreUnavailableError: the database failed (nothing of this transaction was committed).
        """
        errors = self._driver_errors()
        with self._lock:
            try:
                conn = self._connection()
                if self.dialect == SQLITE:
                    conn.execute("BEGIN IMMEDIATE" if serialise is not None else "BEGIN")
                    try:
                        yield Transaction(self, conn)
                        conn.execute("COMMIT")
                    except BaseException:
                        if conn.in_transaction:
                            conn.execute("ROLLBACK")
                        raise
                else:
                    with ExitStack() as stack:
                        stack.push(self._begin_postgres())  # entered: its __exit__ commits or rolls back
                        transaction = Transaction(self, self._conn)
                        if serialise is not None:
                            transaction.serialise(serialise)
                        yield transaction
            except errors as exc:
                raise self._error(action, exc) from exc

    def _begin_postgres(self) -> Any:
        """``BEGIN`` on the connection; a connection found dead there (the server restarted while it
        was idle) is replaced once: nothing of the transaction ran yet, so that is safe."""
        import psycopg

        manager = self._connection().transaction()
        try:
            manager.__enter__()
        except psycopg.OperationalError:
            self.close()
            manager = self._connection().transaction()
            manager.__enter__()
        return manager

    def _single(self, statement: str, params: Sequence[Any], action: str, retry: bool) -> Any:
        """One statement in autocommit (its own transaction; one round trip on PostgreSQL)."""
        errors = self._driver_errors()
        with self._lock:
            try:
                conn = self._connection()
                try:
                    return conn.execute(self.sql(statement), tuple(params))
                except errors:
                    # A read found the connection dead (the server restarted while it was idle):
                    # replaced once. A write is not repeated: it may have committed.
                    if not retry or self.dialect != POSTGRESQL or not (conn.closed or conn.broken):
                        raise
                    self.close()
                    return self._connection().execute(self.sql(statement), tuple(params))
            except errors as exc:
                raise self._error(action, exc) from exc

    def read(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Every row of one query."""
        with self._lock:
            return [tuple(row) for row in self._fetch(statement, params, all_rows=True)]

    def read_one(self, statement: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        """The first row of one query, or ``None``."""
        with self._lock:
            row = self._fetch(statement, params, all_rows=False)
        return None if row is None else tuple(row)

    def _fetch(self, statement: str, params: Sequence[Any], all_rows: bool) -> Any:
        errors = self._driver_errors()
        cursor = self._single(statement, params, "read", retry=True)
        try:
            return cursor.fetchall() if all_rows else cursor.fetchone()
        except errors as exc:
            raise self._error("read", exc) from exc

    def write(self, statement: str, params: Sequence[Any] = ()) -> int:
        """Run one statement as its own transaction; return the number of rows it changed."""
        with self._lock:
            return int(self._single(statement, params, "write", retry=False).rowcount)

    def create_schema(self, ddl: str) -> None:
        """Create the tables and indexes of ``ddl`` (``;``-separated, ``IF NOT EXISTS``) in one transaction.

        ``{id}``, ``{blob}``, ``{bigint}``, ``{real}`` (8 bytes) and ``{rowid}`` become this dialect's
        types (``{rowid}``: an explicit ``rowid`` column where the dialect has no implicit one). On
        PostgreSQL the DDL runs under an advisory lock, so nodes starting at once do not race.

        Raises:
            StoreUnavailableError: it cannot be created.
        """
        statements = [s.strip() for s in ddl.format(**_TYPES[self.dialect]).split(";") if s.strip()]
        with self.transaction(action="create its tables") as tx:
            if self.dialect == POSTGRESQL:
                tx.serialise(_DDL_LOCK)
            for statement in statements:
                tx.execute(statement)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                with suppress(Exception):
                    self._conn.close()
                self._conn = None


def sqlite_url(path: Path) -> str:
    return f"sqlite://{path}"


def store_url(database: str | None, sqlite_file: Path) -> str:
    """The URL a store opens: ``Hardening.Database`` when it is PostgreSQL, else the store's own SQLite file."""
    return database if is_postgres_url(database) and database is not None else sqlite_url(sqlite_file)


def open_store_database(shared: str | None, schema: str, sqlite_file: Path, synchronous: str = "FULL",
                        readonly: bool = False) -> Database:
    """The database of one plugin store: schema ``schema`` of ``shared`` (``Hardening.Database``,
    PostgreSQL) when set, else the store's own SQLite file under ``DataDirectory``.

    Raises:
        StoreUnavailableError: it cannot be opened.
    """
    if shared is not None:
        return Database(shared, schema=schema)
    return Database(sqlite_url(sqlite_file), synchronous=synchronous, readonly=readonly)


# PostgreSQL schemas of the stores (one each, as the SQLite files are one each).
SEALS_SCHEMA = "hardening_seals"
MANIFESTS_SCHEMA = "hardening_manifests"
TAGS_SCHEMA = "hardening_tags"
SCRUB_SCHEMA = "hardening_scrub"
LEGACY_SCHEMA = "hardening_legacy"
AUDIT_SCHEMA = "hardening_audit"
