"""The persisted state of scrub runs: status, which files were read, findings, the final report.

One owner of the ``runs``, ``done`` and ``findings`` tables (``DataDirectory/scrub.db``). A run
interrupted by a stop resumes from it without reading finished files again.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

from orthanc_hardening.integrity.scrub import Finding
from orthanc_hardening.timefmt import format_time


class ScrubState:
    """The persisted state of scrub runs: status, what was read, findings, final report."""

    def __init__(self, path: Path, synchronous: str = "FULL") -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=" + ("NORMAL" if synchronous == "NORMAL" else "FULL"))
        self._db.executescript("""
            CREATE TABLE IF NOT EXISTS runs (id INTEGER PRIMARY KEY AUTOINCREMENT, started_at TEXT NOT NULL,
                finished_at TEXT NOT NULL DEFAULT '', state TEXT NOT NULL, elapsed REAL NOT NULL DEFAULT 0,
                bytes INTEGER NOT NULL DEFAULT 0, total INTEGER NOT NULL DEFAULT 0, report TEXT NOT NULL DEFAULT '',
                options TEXT NOT NULL DEFAULT '{}');
            CREATE TABLE IF NOT EXISTS done (run_id INTEGER NOT NULL, uuid TEXT NOT NULL, content_type INTEGER NOT NULL,
                PRIMARY KEY (run_id, uuid, content_type));
            CREATE TABLE IF NOT EXISTS findings (run_id INTEGER NOT NULL, body TEXT NOT NULL);
        """)
        self._lock = threading.Lock()

    def start_run(self, now: datetime, options: dict[str, Any]) -> int:
        with self._lock:
            cursor = self._db.execute("INSERT INTO runs (started_at, state, options) VALUES (?, 'running', ?)",
                                      (format_time(now), json.dumps(options)))
            return int(cursor.lastrowid or 0)

    def latest(self) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT id, started_at, finished_at, state, elapsed, bytes, total, report, options "
                                   "FROM runs ORDER BY id DESC LIMIT 1").fetchone()
        if row is None:
            return None
        keys = ("id", "started_at", "finished_at", "state", "elapsed", "bytes", "total", "report", "options")
        return dict(zip(keys, row, strict=True))

    def done(self, run_id: int) -> set[tuple[str, int]]:
        with self._lock:
            return {(str(u), int(t)) for u, t in
                    self._db.execute("SELECT uuid, content_type FROM done WHERE run_id = ?", (run_id,))}

    def record(self, run_id: int, done: list[tuple[str, int]], findings: list[Finding], elapsed: float,
               bytes_done: int, total: int) -> None:
        """Persist a batch of read files and their findings in one transaction."""
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR IGNORE INTO done (run_id, uuid, content_type) VALUES (?, ?, ?)",
                                 [(run_id, u, t) for u, t in done])
            self._db.executemany("INSERT INTO findings (run_id, body) VALUES (?, ?)",
                                 [(run_id, json.dumps(f.to_dict())) for f in findings])
            self._db.execute("UPDATE runs SET elapsed = ?, bytes = ?, total = ? WHERE id = ?",
                             (elapsed, bytes_done, total, run_id))
            self._db.execute("COMMIT")

    def findings(self, run_id: int) -> list[Finding]:
        with self._lock:
            rows = self._db.execute("SELECT body FROM findings WHERE run_id = ? ORDER BY rowid", (run_id,)).fetchall()
        return [Finding.from_dict(json.loads(r[0])) for r in rows]

    def finish(self, run_id: int, state: str, now: datetime, report: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute("UPDATE runs SET state = ?, finished_at = ?, report = ? WHERE id = ?",
                             (state, format_time(now), json.dumps(report), run_id))
