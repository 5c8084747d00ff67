"""``python -m orthanc_hardening audit …``: review and verify the audit trail offline.

Works on the database file alone, without Orthanc (an auditor's copy is enough):

* ``audit query --db PATH [--series UID] [--study UID] [--patient ID] [--user NAME] [--action R]
  [--event 110103] [--outcome 0] [--since T] [--until T] [--limit N] [--after SEQ]
  [--format table|json|csv|ndjson]`` — newest first; a readable table on a terminal.
* ``audit verify --db PATH --trusted-key PEM [--trusted-key PEM …]`` (or ``--config orthanc.json``
  to take the database and the accepted keys from the configuration: the key registry in
  ``DataDirectory/keys`` and ``TrustedKeys``). Exit code 0 when the chain and its checkpoints
  verify, 1 naming the first broken sequence number otherwise. Pin the key with
  ``--trusted-key`` from a copy kept off the server. ``--witness FILE`` (repeatable; with
  ``--config``, ``Hardening.Audit.WitnessFile`` by default) also checks the log against the
  witnessed checkpoints held outside the database: any rewrite of the part a witness saw
  fails, even one whose checkpoints were re-signed or deleted.
* ``audit export --db PATH --format csv|json|ndjson [--output FILE] [filters]`` — every matching
  row in ascending order (CSV cells neutralised against formula injection).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

from orthanc_hardening.audit.chain import StoredEvent, inspect_chain
from orthanc_hardening.audit.query import COLUMNS, AuditQuery, neutralise, parse_query, render
from orthanc_hardening.audit.witness import WitnessedCheckpoint, inspect_witness
from orthanc_hardening.config import load_config, sqlite_path
from orthanc_hardening.errors import ConfigError
from orthanc_hardening.seal.keys import PublicKeyRing
from orthanc_hardening.stores import key_files
from orthanc_hardening.stores.audit_store import SQLiteAuditStore
from orthanc_hardening.stores.witness_file import WitnessFile

_FILTERS = ("series", "study", "patient", "user", "action", "event", "outcome", "since", "until", "limit", "after")


def _config_of(path: str) -> Any:
    from orthanc_hardening.commands.posture import load_orthanc_configuration

    raw, _base = load_orthanc_configuration(Path(path), os.environ)
    return load_config(raw)


def _database(args: argparse.Namespace) -> Path:
    if args.db:
        return Path(args.db)
    if getattr(args, "config", None):
        url = _config_of(args.config).audit.database
        if not url.startswith("sqlite:"):
            raise ConfigError("Hardening.Audit.Database", "the offline commands read SQLite audit databases only")
        return sqlite_path(url)
    raise ConfigError("--db", "give the audit database file (or --config)")


def _open(args: argparse.Namespace) -> SQLiteAuditStore:
    return SQLiteAuditStore(_database(args), create=False)


def _query_of(args: argparse.Namespace, fmt: str, max_limit: int) -> AuditQuery:
    params = {name: str(getattr(args, name)) for name in _FILTERS if getattr(args, name, None) not in (None, "")}
    params["format"] = fmt
    return parse_query(params, max_limit)


def render_table(events: list[StoredEvent], width: int) -> str:
    """A terminal table: one line per event, the detail cut to the terminal width."""
    header = ("SEQ", "TIME (UTC)", "EVENT", "A", "OUT", "WHO", "FROM", "SERIES", "N", "DETAIL")
    lines = []
    for stored in events:
        event = stored.event
        who = event.user or event.calling_aet or "-"
        origin = event.source_ip or (f"{event.calling_aet}->{event.called_aet}" if event.calling_aet else "-")
        lines.append((
            str(stored.seq), event.time.strftime("%Y-%m-%d %H:%M:%S"),
            f"{event.event.code} {event.event.display_name}", event.action.value, str(event.outcome.value),
            who, origin, event.series_uid or "-", str(event.instance_count), event.detail or event.route,
        ))
    widths = [max(len(h), *(len(_clean(row[i])) for row in lines)) if lines else len(h)
              for i, h in enumerate(header)]
    widths = [min(w, 44) for w in widths]
    out = []
    for row in [header, *lines]:
        cells = [_clean(cell)[:widths[i]].ljust(widths[i]) for i, cell in enumerate(row)]
        line = "  ".join(cells).rstrip()
        out.append(line[:width] if width > 0 else line)
    out.append(f"({len(events)} events)")
    return "\n".join(out)


def _clean(text: str) -> str:
    # Control characters from user-controlled values must not drive the terminal.
    return "".join(c if c.isprintable() else "?" for c in text)


def query(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """``audit query``."""
    out = out or sys.stdout
    fmt = args.format or ("table" if out.isatty() else "json")
    store = _open(args)
    try:
        audit_query = _query_of(args, "json" if fmt == "table" else fmt, max_limit=1_000_000)
        events = store.query(audit_query)
    finally:
        store.close()
    if fmt == "table":
        out.write(render_table(events, shutil.get_terminal_size().columns if out.isatty() else 0) + "\n")
    else:
        out.write(render(events, audit_query)[0])
        if fmt == "json":
            out.write("\n")
    return 0


def _verifier(args: argparse.Namespace) -> PublicKeyRing:
    if args.trusted_key:
        return key_files.load_public_keys([Path(p) for p in args.trusted_key], "--trusted-key")
    if args.config:
        config = _config_of(args.config)
        return key_files.load_public_key_ring(config.signing_key, config.key_directory, config.trusted_keys,
                                              config.key_registry_anchor)
    raise ConfigError("--trusted-key", "give the public key(s) that sign checkpoints (or --config)")


def _witness_lines(args: argparse.Namespace) -> list[tuple[str, list[WitnessedCheckpoint]]]:
    paths = list(args.witness)
    if not paths and getattr(args, "config", None):
        configured = _config_of(args.config).audit.witness_file
        paths = [str(configured)] if configured is not None else []
    return [(path, WitnessFile(Path(path)).lines()) for path in paths]


def verify(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """``audit verify``: exit 0 when the chain (and every witness given) verifies, 1 otherwise."""
    out = out or sys.stdout
    verifier = _verifier(args)
    witnesses = _witness_lines(args)
    wanted = {line.seq for _path, lines in witnesses for line in lines}
    hash_at: dict[int, str] = {}

    def rows(store: SQLiteAuditStore) -> Iterator[StoredEvent]:
        for row in store.iter_rows():
            if row.seq in wanted:
                hash_at[row.seq] = row.hash
            yield row

    store = _open(args)
    try:
        report = inspect_chain(rows(store), store.checkpoints(), verifier)
    finally:
        store.close()
    witnessed: list[dict[str, Any]] = []
    problems = list(report.problems)
    for path, lines in witnesses:
        found = inspect_witness(lines, hash_at, report.last_seq, verifier)
        witnessed.append({"witness": path, "lines": len(lines), "last_seq": lines[-1].seq if lines else 0,
                          "problems": found})
        problems += [f"witness {path}: {problem}" for problem in found]
    ok = report.ok and not any(w["problems"] for w in witnessed)
    if args.json:
        out.write(json.dumps({**report.as_dict(), "ok": ok, "problems": problems, "witnesses": witnessed},
                             indent=2, sort_keys=True) + "\n")
    elif ok:
        seen = max((w["last_seq"] for w in witnessed), default=0)
        out.write(f"OK: {report.rows} events, chain verified through seq {report.last_seq}; "
                  f"last signed checkpoint at seq {report.last_checkpoint_seq} "
                  f"(keys {', '.join(report.key_ids)}); {report.unsigned_tail} events after it not yet signed")
        out.write(f"; consistent with {len(witnessed)} witness(es) through seq {seen}\n" if witnessed else
                  "; NO WITNESS given: a log rewritten together with its checkpoints would pass\n")
    else:
        broken = report.first_broken_seq if not report.ok else "a witnessed seq"
        out.write(f"FAILED: audit chain broken at seq {broken}\n")
        for problem in problems:
            out.write(f"  - {problem}\n")
    return 0 if ok else 1


def _all(store: SQLiteAuditStore, audit_query: AuditQuery) -> Iterator[StoredEvent]:
    after = None
    while True:
        page = store.query(replace(audit_query, limit=5000, after=after))
        if not page:
            return
        yield from page
        after = page[-1].seq


def export(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """``audit export``: every matching event, oldest first."""
    out = out or sys.stdout
    store = _open(args)
    try:
        audit_query = _query_of(args, args.format, max_limit=1_000_000)
        events = list(_all(store, audit_query))
    finally:
        store.close()
    events.reverse()
    target: TextIO = open(args.output, "w", encoding="utf-8", newline="") if args.output else out  # noqa: SIM115
    try:
        if args.format == "json":
            target.write(json.dumps([e.as_dict() for e in events], indent=1, sort_keys=True) + "\n")
        elif args.format == "csv":
            import csv

            writer = csv.writer(target, lineterminator="\r\n")
            writer.writerow(COLUMNS)
            for event in events:
                row = event.as_dict()
                writer.writerow([neutralise(row.get(c, "")) for c in COLUMNS])
        else:
            for event in events:
                target.write(json.dumps(event.as_dict(), sort_keys=True) + "\n")
    finally:
        if target is not out:
            target.close()
    return 0


def _filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", help="audit database file (SQLite)")
    parser.add_argument("--config", help="Orthanc configuration: take the database from Hardening.Audit.Database")
    for name in _FILTERS:
        parser.add_argument(f"--{name}")


def register(subparsers: Any) -> None:
    """Add the ``audit`` command group."""
    group = subparsers.add_parser("audit", help="review and verify the audit trail (offline)")
    commands = group.add_subparsers(dest="audit_command", required=True)

    q = commands.add_parser("query", help="audit events, newest first")
    _filters(q)
    q.add_argument("--format", choices=("table", "json", "csv", "ndjson"))
    q.set_defaults(handler=query)

    v = commands.add_parser("verify", help="verify the hash chain and the signed checkpoints")
    v.add_argument("--db", help="audit database file (SQLite)")
    v.add_argument("--config", help="Orthanc configuration: database and accepted keys")
    v.add_argument("--trusted-key", action="append", default=[], help="PEM public key that signs checkpoints")
    v.add_argument("--witness", action="append", default=[],
                   help="witness file (witnessed checkpoints) the log must be consistent with; with --config, "
                        "Hardening.Audit.WitnessFile by default")
    v.add_argument("--json", action="store_true", help="print the report as JSON")
    v.set_defaults(handler=verify)

    e = commands.add_parser("export", help="export events, oldest first")
    _filters(e)
    e.add_argument("--format", choices=("csv", "json", "ndjson"), default="csv")
    e.add_argument("--output", help="file to write (default: standard output)")
    e.set_defaults(handler=export)
