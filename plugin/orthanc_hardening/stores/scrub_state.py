"""The persisted state of scrub runs: status, which files were read, findings, the final report.

One owner of the ``runs``, ``done``, ``findings`` and ``leases`` tables (``DataDirectory/scrub.db``,
or schema ``hardening_scrub`` of ``Hardening.Database``). A run interrupted by a stop resumes from
it without reading finished files again, on this node or, with a shared PostgreSQL database, on
another one.

Between nodes the scrub runs on one node at a time: it holds the ``scrub`` lease (a row naming the
holder and an expiry in wall-clock seconds), renewed with every batch it records. A node that
dies stops renewing; once the lease expired another node takes it and resumes the same run from
the files already recorded. Taking and renewing are serialised transactions (``stores/sql.py``).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from orthanc_hardening.integrity.scrub import Finding
from orthanc_hardening.stores.sql import Database, sqlite_url
from orthanc_hardening.timefmt import format_time

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (id {id}, started_at TEXT NOT NULL,
    finished_at TEXT NOT NULL DEFAULT '', state TEXT NOT NULL, elapsed {real} NOT NULL DEFAULT 0,
    bytes {bigint} NOT NULL DEFAULT 0, total {bigint} NOT NULL DEFAULT 0, report TEXT NOT NULL DEFAULT '',
    options TEXT NOT NULL DEFAULT '{{}}');
CREATE TABLE IF NOT EXISTS done (run_id {bigint} NOT NULL, uuid TEXT NOT NULL, content_type INTEGER NOT NULL,
    PRIMARY KEY (run_id, uuid, content_type));
CREATE TABLE IF NOT EXISTS findings ({rowid} run_id {bigint} NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires_at {real} NOT NULL)
"""
LEASE = "scrub"
LEASE_LOCK = "orthanc-hardening:scrub-lease"


class ScrubLeaseLost(Exception):
    """Another node holds the scrub lease (this node's lease expired): stop without touching the run."""


class ScrubState:
    """The persisted state of scrub runs: status, what was read, findings, final report, the lease."""

    def __init__(self, source: Path | Database, synchronous: str = "FULL", holder: str | None = None) -> None:
        """Open the state at ``source`` (a SQLite file or a ``Database``).

        Args:
            holder: this node's name for the lease; ``None``: no lease is kept (one node, the CLI).

        Raises:
            StoreUnavailableError: it cannot be opened.
        """
        if isinstance(source, Database):
            self.database = source
        else:
            self.database = Database(sqlite_url(Path(source)),
                                     synchronous="NORMAL" if synchronous == "NORMAL" else "FULL")
        self.database.create_schema(SCHEMA)
        self.holder = holder
        self.lease_seconds = 60.0

    # -- the lease between nodes -----------------------------------------------------------

    def take_lease(self, now: datetime) -> bool:
        """Take (or renew) the scrub lease for ``holder``; ``False`` when another live holder has it."""
        if self.holder is None:
            return True
        stamp = now.timestamp()
        with self.database.transaction(serialise=LEASE_LOCK, action="write") as tx:
            row = tx.one("SELECT holder, expires_at FROM leases WHERE name = ?", (LEASE,))
            if row is not None and row[0] != self.holder and float(row[1]) > stamp:
                return False
            tx.execute("INSERT INTO leases (name, holder, expires_at) VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE "
                       "SET holder = excluded.holder, expires_at = excluded.expires_at",
                       (LEASE, self.holder, stamp + self.lease_seconds))
        return True

    def lease_holder(self, now: datetime) -> str | None:
        """Who holds a live scrub lease, or ``None``."""
        row = self.database.read_one("SELECT holder, expires_at FROM leases WHERE name = ?", (LEASE,))
        return str(row[0]) if row is not None and float(row[1]) > now.timestamp() else None

    def release_lease(self) -> None:
        if self.holder is not None:
            self.database.write("DELETE FROM leases WHERE name = ? AND holder = ?", (LEASE, self.holder))

    # -- runs -------------------------------------------------------------------------------

    def start_run(self, now: datetime, options: dict[str, Any]) -> int:
        with self.database.transaction(action="write") as tx:
            return tx.insert_id("INSERT INTO runs (started_at, state, options) VALUES (?, 'running', ?)",
                                (format_time(now), json.dumps(options)))

    def latest(self) -> dict[str, Any] | None:
        row = self.database.read_one("SELECT id, started_at, finished_at, state, elapsed, bytes, total, report, "
                                     "options FROM runs ORDER BY id DESC LIMIT 1")
        if row is None:
            return None
        keys = ("id", "started_at", "finished_at", "state", "elapsed", "bytes", "total", "report", "options")
        return dict(zip(keys, row, strict=True))

    def done(self, run_id: int) -> set[tuple[str, int]]:
        return {(str(u), int(t)) for u, t in
                self.database.read("SELECT uuid, content_type FROM done WHERE run_id = ?", (run_id,))}

    def record(self, run_id: int, done: list[tuple[str, int]], findings: list[Finding], elapsed: float,
               bytes_done: int, total: int, now: datetime | None = None) -> None:
        """Persist a batch of read files and their findings in one transaction (renewing the lease).

        Raises:
            ScrubLeaseLost: another node took the lease (nothing of this batch was written).
        """
        with self.database.transaction(serialise=LEASE_LOCK if self.holder else None, action="write") as tx:
            if self.holder is not None:
                stamp = (now or datetime.now().astimezone()).timestamp()
                changed = tx.execute("UPDATE leases SET expires_at = ? WHERE name = ? AND holder = ?",
                                     (stamp + self.lease_seconds, LEASE, self.holder)).rowcount
                if changed != 1:
                    raise ScrubLeaseLost(f"the scrub lease is no longer held by {self.holder}")
            tx.executemany("INSERT INTO done (run_id, uuid, content_type) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                           [(run_id, u, t) for u, t in done])
            tx.executemany("INSERT INTO findings (run_id, body) VALUES (?, ?)",
                           [(run_id, json.dumps(f.to_dict())) for f in findings])
            tx.execute("UPDATE runs SET elapsed = ?, bytes = ?, total = ? WHERE id = ?",
                       (elapsed, bytes_done, total, run_id))

    def findings(self, run_id: int) -> list[Finding]:
        rows = self.database.read("SELECT body FROM findings WHERE run_id = ? ORDER BY rowid", (run_id,))
        return [Finding.from_dict(json.loads(r[0])) for r in rows]

    def finish(self, run_id: int, state: str, now: datetime, report: dict[str, Any]) -> None:
        self.database.write("UPDATE runs SET state = ?, finished_at = ?, report = ? WHERE id = ?",
                            (state, format_time(now), json.dumps(report), run_id))
        self.release_lease()
