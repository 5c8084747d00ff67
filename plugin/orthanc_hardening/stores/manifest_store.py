"""Signed study manifests in their own SQLite file (WAL; ``synchronous`` from ``Hardening.Durability``).

One owner of the ``manifests`` table. The records are signed (``seal/manifest.py``); this store
only keeps them.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from orthanc_hardening.errors import StoreUnavailableError
from orthanc_hardening.seal.manifest import Manifest


class ManifestStore:
    """Study manifests in their own SQLite file (WAL; ``synchronous`` from ``Hardening.Durability``)."""

    def __init__(self, path: Path, readonly: bool = False, synchronous: str = "FULL") -> None:
        try:
            if readonly:
                self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False, timeout=30)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=" + ("NORMAL" if synchronous == "NORMAL" else "FULL"))
                self._db.execute("CREATE TABLE IF NOT EXISTS manifests (study_id TEXT PRIMARY KEY, "
                                 "study_uid TEXT NOT NULL, record BLOB NOT NULL, created_at TEXT NOT NULL)")
        except sqlite3.Error as exc:
            raise StoreUnavailableError(f"manifest store {path} cannot be opened: {exc}") from exc
        self._lock = threading.Lock()

    def put(self, manifest: Manifest) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO manifests (study_id, study_uid, record, created_at) "
                             "VALUES (?, ?, ?, ?)",
                             (manifest.study_id, manifest.study_uid, manifest.to_bytes(), manifest.created_at))

    def get(self, study_id: str) -> Manifest | None:
        """The stored manifest of a study.

        Raises:
            SealInvalidError: the stored record is malformed.
        """
        with self._lock:
            row = self._db.execute("SELECT record FROM manifests WHERE study_id = ?", (study_id,)).fetchone()
        return None if row is None else Manifest.from_bytes(row[0])

    def delete(self, study_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM manifests WHERE study_id = ?", (study_id,))

    def study_ids(self) -> list[str]:
        with self._lock:
            return [str(r[0]) for r in self._db.execute("SELECT study_id FROM manifests ORDER BY study_id")]
