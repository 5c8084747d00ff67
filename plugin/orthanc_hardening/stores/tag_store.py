"""The sealed index tags of every sealed instance, kept so that a restart does not read the files
again (``DataDirectory/query-tags.db``, SQLite WAL). One owner of the ``sealed_tags`` table.

A stored copy is only a cache: the catalogue re-checks each one against its seal's signed
index-tag digest when it loads it (``integrity/query.py``).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path

from orthanc_hardening.errors import StoreUnavailableError
from orthanc_hardening.seal.index_tags import IndexTags

SCHEMA = """
CREATE TABLE IF NOT EXISTS sealed_tags (
    seal_uuid TEXT PRIMARY KEY,
    instance_id TEXT NOT NULL,
    tags TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class SQLiteTagStore:
    """Index tags by seal uuid."""

    def __init__(self, path: Path, synchronous: str = "FULL") -> None:
        """Open (create) the store.

        Raises:
            StoreUnavailableError: it cannot be opened.
        """
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=" + ("NORMAL" if synchronous == "NORMAL" else "FULL"))
            self._db.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StoreUnavailableError(f"query tag store {path} cannot be opened: {exc}") from exc
        self._lock = threading.Lock()

    def get(self, seal_uuid: str) -> IndexTags | None:
        """The stored tags of a seal, or ``None``.

        Raises:
            StoreUnavailableError: the store cannot be read.
        """
        try:
            with self._lock:
                row = self._db.execute("SELECT tags FROM sealed_tags WHERE seal_uuid = ?", (seal_uuid,)).fetchone()
        except sqlite3.Error as exc:
            raise StoreUnavailableError(f"query tag store cannot be read: {exc}") from exc
        if row is None:
            return None
        tags: IndexTags = json.loads(row[0])
        return tags

    def put(self, seal_uuid: str, instance_id: str, tags: IndexTags) -> None:
        """Store (replace) the tags of a seal.

        Raises:
            StoreUnavailableError: the store cannot be written.
        """
        self.put_many([(seal_uuid, instance_id, tags)])

    def put_many(self, entries: Iterable[tuple[str, str, IndexTags]]) -> None:
        """Store (replace) the tags of several seals in one transaction (one commit, not one each).

        Raises:
            StoreUnavailableError: the store cannot be written (nothing of it is).
        """
        rows = [(seal_uuid, instance_id, json.dumps(tags, sort_keys=True)) for seal_uuid, instance_id, tags in entries]
        if not rows:
            return
        try:
            with self._lock:
                self._db.execute("BEGIN")
                try:
                    self._db.executemany(
                        "INSERT OR REPLACE INTO sealed_tags (seal_uuid, instance_id, tags) VALUES (?, ?, ?)", rows)
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise
        except sqlite3.Error as exc:
            raise StoreUnavailableError(f"query tag store cannot be written: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()
