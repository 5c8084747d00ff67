"""The audit rewrite an intruder without any key can make (issue 16): drop some events, renumber
the rest, recompute the hash chain and delete the checkpoints after the first change.

It uses only what the README documents (the chain's hashing) and the database file; the
checkpoints before the change stay valid, so the log verifies with an unsigned tail.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

from orthanc_hardening.audit.chain import StoredEvent, link
from orthanc_hardening.stores.audit_store import SQLiteAuditStore


def rewrite_audit_log(path: Path, drop: Callable[[StoredEvent], bool], pad: bool = False) -> int:
    """Remove the rows for which ``drop`` is true and rebuild the chain; return the first changed seq.

    With ``pad``, as many copies of the last kept event are appended as rows were removed, so
    that the log is as long as before.
    """
    store = SQLiteAuditStore(path, create=False)
    try:
        rows = list(store.iter_rows())
    finally:
        store.close()
    kept = [row for row in rows if not drop(row)]
    if pad:
        kept += [kept[-1]] * (len(rows) - len(kept))
    first_changed = next((row.seq for row in rows if drop(row)), 0)
    if not first_changed:
        raise ValueError("nothing to drop")
    rebuilt: list[StoredEvent] = []
    previous: StoredEvent | None = None
    for row in kept:
        previous = link(previous, row.event)
        rebuilt.append(previous)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("DELETE FROM events")
        conn.execute("DELETE FROM checkpoints WHERE seq >= ?", (first_changed,))
    finally:
        conn.close()
    store = SQLiteAuditStore(path, create=False)
    try:
        store.append(rebuilt)
    finally:
        store.close()
    return first_changed
