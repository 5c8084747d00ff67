"""The signed legacy inventory in one SQLite file (``legacy.db`` next to the seal database).

Rows ``(uuid, content_type, instance_id, signature)`` written once, when the inventory is taken
(``integrity/legacy.py``), and a ``meta`` row saying it was taken and by which rule. Entries
are verified by the caller on every use (``check_legacy_entry``); a row added by hand fails
its signature, a row deleted only makes fewer attachments legacy (fail closed).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path

from orthanc_hardening.errors import StoreUnavailableError
from orthanc_hardening.integrity.legacy import LegacyEntry

_SCHEMA = """
CREATE TABLE IF NOT EXISTS legacy (uuid TEXT NOT NULL, content_type INTEGER NOT NULL, instance_id TEXT NOT NULL,
                                   signature TEXT NOT NULL, PRIMARY KEY (uuid, content_type));
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
TAKEN = "taken"


class SQLiteLegacyInventory:
    """The legacy inventory (see the module docstring). Thread-safe."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=30)
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StoreUnavailableError(f"cannot open the legacy inventory {self.path}: {exc}") from exc
        self._lock = threading.Lock()

    def taken(self) -> str | None:
        """The rule the inventory was taken by, or ``None`` when it was never taken."""
        try:
            with self._lock:
                row = self._db.execute("SELECT value FROM meta WHERE name = ?", (TAKEN,)).fetchone()
        except sqlite3.Error as exc:
            raise StoreUnavailableError(f"cannot read the legacy inventory: {exc}") from exc
        return None if row is None else str(row[0])

    def take(self, entries: Iterable[tuple[LegacyEntry, str]], rule: str) -> int:
        """Write every entry with its signature and mark the inventory taken, in one transaction."""
        count = 0
        try:
            with self._lock:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    for entry, signature in entries:
                        self._db.execute("INSERT OR REPLACE INTO legacy VALUES (?, ?, ?, ?)",
                                         (entry.uuid, int(entry.content_type), entry.instance_id, signature))
                        count += 1
                    self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (TAKEN, rule))
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
        except sqlite3.Error as exc:
            raise StoreUnavailableError(f"cannot write the legacy inventory: {exc}") from exc
        return count

    def get(self, uuid: str, content_type: int) -> tuple[LegacyEntry, str] | None:
        """The entry of an attachment and its stored signature, or ``None``."""
        try:
            with self._lock:
                row = self._db.execute("SELECT uuid, content_type, instance_id, signature FROM legacy "
                                       "WHERE uuid = ? AND content_type = ?", (uuid, int(content_type))).fetchone()
        except sqlite3.Error as exc:
            raise StoreUnavailableError(f"cannot read the legacy inventory: {exc}") from exc
        if row is None:
            return None
        return LegacyEntry(str(row[0]), int(row[1]), str(row[2])), str(row[3])

    def attachments(self) -> list[tuple[str, int]]:
        """``(uuid, content type)`` of every entry."""
        with self._lock:
            return [(str(u), int(t)) for u, t in self._db.execute("SELECT uuid, content_type FROM legacy")]

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM legacy").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


def inventory_path(seal_database: Path) -> Path:
    """Where the inventory lives: ``legacy.db`` next to the seal database."""
    return Path(seal_database).with_name("legacy.db")
