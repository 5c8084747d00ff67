"""Signed study manifests: their own SQLite file (WAL; ``synchronous`` from ``Hardening.Durability``)
or their PostgreSQL schema (``Hardening.Database``), through ``stores/sql.py``.

One owner of the ``manifests`` table. The records are signed (``seal/manifest.py``); this store
only keeps them. ``update`` re-signs a study under a per-study lock held from the read of the
index to the write (``pg_advisory_xact_lock`` on PostgreSQL, the file's write lock on SQLite), so
two nodes re-signing the same study one after the other never leave the older view in place.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from orthanc_hardening.seal.manifest import Manifest
from orthanc_hardening.stores.sql import Database, Transaction, sqlite_url

SCHEMA = ("CREATE TABLE IF NOT EXISTS manifests (study_id TEXT PRIMARY KEY, study_uid TEXT NOT NULL, "
          "record {blob} NOT NULL, created_at TEXT NOT NULL)")


def _put(tx: Transaction, manifest: Manifest) -> None:
    tx.execute("INSERT INTO manifests (study_id, study_uid, record, created_at) VALUES (?, ?, ?, ?) "
               "ON CONFLICT (study_id) DO UPDATE SET study_uid = excluded.study_uid, record = excluded.record, "
               "created_at = excluded.created_at",
               (manifest.study_id, manifest.study_uid, manifest.to_bytes(), manifest.created_at))


class ManifestStore:
    """Study manifests by Orthanc study id."""

    def __init__(self, source: Path | Database, readonly: bool = False, synchronous: str = "FULL") -> None:
        """Open the store at ``source`` (a SQLite file or a ``Database``) and create its table.

        Raises:
            StoreUnavailableError: it cannot be opened.
        """
        if isinstance(source, Database):
            self.database = source
        else:
            self.database = Database(sqlite_url(Path(source)), readonly=readonly,
                                     synchronous="NORMAL" if synchronous == "NORMAL" else "FULL")
        if not readonly:
            self.database.create_schema(SCHEMA)

    def put(self, manifest: Manifest) -> None:
        with self.database.transaction(action="write") as tx:
            _put(tx, manifest)

    def update(self, study_id: str, build: Callable[[], Manifest | None]) -> Manifest | None:
        """Replace the manifest of ``study_id`` by ``build()`` (``None``: delete it), under the study's lock.

        ``build`` reads the current state (Orthanc's index, the seals) *after* the lock is taken,
        so concurrent re-signings of one study are serialised and the last one sees every change
        committed before it.

        Raises:
            StoreUnavailableError: the store cannot be written (nothing changed).
        """
        with self.database.transaction(serialise=f"orthanc-hardening:manifest:{study_id}", action="write") as tx:
            manifest = build()
            if manifest is None:
                tx.execute("DELETE FROM manifests WHERE study_id = ?", (study_id,))
            else:
                _put(tx, manifest)
        return manifest

    def get(self, study_id: str) -> Manifest | None:
        """The stored manifest of a study.

        Raises:
            SealInvalidError: the stored record is malformed.
        """
        row = self.database.read_one("SELECT record FROM manifests WHERE study_id = ?", (study_id,))
        return None if row is None else Manifest.from_bytes(row[0])

    def delete(self, study_id: str) -> None:
        self.database.write("DELETE FROM manifests WHERE study_id = ?", (study_id,))

    def study_ids(self) -> list[str]:
        return [str(r[0]) for r in self.database.read("SELECT study_id FROM manifests ORDER BY study_id")]

    def close(self) -> None:
        self.database.close()
