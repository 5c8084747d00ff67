"""The signed legacy inventory: one SQLite file (``legacy.db`` next to the seal database) or schema
``hardening_legacy`` of ``Hardening.Database`` (shared by the nodes, taken once for the archive).

Rows ``(uuid, content_type, instance_id, signature)`` written once, when the inventory is taken
(``integrity/legacy.py``), and a ``meta`` row saying it was taken and by which rule. Entries
are verified by the caller on every use (``check_legacy_entry``); a row added by hand fails
its signature, a row deleted only makes fewer attachments legacy (fail closed).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from orthanc_hardening.integrity.legacy import LegacyEntry
from orthanc_hardening.stores.sql import Database, sqlite_url

_SCHEMA = """
CREATE TABLE IF NOT EXISTS legacy (uuid TEXT NOT NULL, content_type INTEGER NOT NULL, instance_id TEXT NOT NULL,
                                   signature TEXT NOT NULL, PRIMARY KEY (uuid, content_type));
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
TAKEN = "taken"


class SQLLegacyInventory:
    """The legacy inventory (see the module docstring) on the SQL layer. Thread-safe."""

    def __init__(self, database: Database) -> None:
        """Use ``database`` and create the tables.

        Raises:
            StoreUnavailableError: it cannot be opened.
        """
        self.database = database
        self.path = database.path
        database.create_schema(_SCHEMA)

    def taken(self) -> str | None:
        """The rule the inventory was taken by, or ``None`` when it was never taken."""
        row = self.database.read_one("SELECT value FROM meta WHERE name = ?", (TAKEN,))
        return None if row is None else str(row[0])

    def take(self, entries: Iterable[tuple[LegacyEntry, str]], rule: str) -> int:
        """Write every entry with its signature and mark the inventory taken, in one transaction.

        Serialised between nodes: the first node takes it; a node that finds it taken while
        waiting writes nothing (returns 0), so a node joining later never widens it.
        """
        count = 0
        with self.database.transaction(serialise="orthanc-hardening:legacy-inventory", action="write") as tx:
            if tx.one("SELECT value FROM meta WHERE name = ?", (TAKEN,)) is not None:
                return 0
            for entry, signature in entries:
                tx.execute("INSERT INTO legacy (uuid, content_type, instance_id, signature) VALUES (?, ?, ?, ?) "
                           "ON CONFLICT (uuid, content_type) DO UPDATE SET instance_id = excluded.instance_id, "
                           "signature = excluded.signature",
                           (entry.uuid, int(entry.content_type), entry.instance_id, signature))
                count += 1
            tx.execute("INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET "
                       "value = excluded.value", (TAKEN, rule))
        return count

    def get(self, uuid: str, content_type: int) -> tuple[LegacyEntry, str] | None:
        """The entry of an attachment and its stored signature, or ``None``."""
        row = self.database.read_one("SELECT uuid, content_type, instance_id, signature FROM legacy "
                                     "WHERE uuid = ? AND content_type = ?", (uuid, int(content_type)))
        if row is None:
            return None
        return LegacyEntry(str(row[0]), int(row[1]), str(row[2])), str(row[3])

    def attachments(self) -> list[tuple[str, int]]:
        """``(uuid, content type)`` of every entry."""
        return [(str(u), int(t)) for u, t in self.database.read("SELECT uuid, content_type FROM legacy")]

    def count(self) -> int:
        row = self.database.read_one("SELECT COUNT(*) FROM legacy")
        return int(row[0]) if row else 0

    def close(self) -> None:
        self.database.close()


class SQLiteLegacyInventory(SQLLegacyInventory):
    """The legacy inventory in its SQLite file (``legacy.db`` next to ``seals.db``)."""

    def __init__(self, path: Path) -> None:
        super().__init__(Database(sqlite_url(Path(path))))


def inventory_path(seal_database: Path) -> Path:
    """Where the inventory lives: ``legacy.db`` next to the seal database."""
    return Path(seal_database).with_name("legacy.db")
