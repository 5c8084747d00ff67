"""``python -m orthanc_hardening scrub``: check the whole archive, offline or through a running Orthanc.

* Offline (``scrub orthanc.json --report report.json``): Orthanc must be stopped (it keeps its
  SQLite index locked). Reads the index, the storage directory, the seal store and the study
  manifests named by the configuration, hashes every stored file and checks it against its seal,
  with the public keys only (key registry + ``TrustedKeys``; no passphrase needed). Progress is
  kept in ``DataDirectory/scrub-cli.db``: run it again after an interruption and it resumes.
* Online (``scrub --url https://pacs:8042 --report report.json``): starts the scrub inside Orthanc
  (``POST /hardening/scrub``, administrators) and follows it.

A progress bar is drawn on a terminal. Exit code 0: no finding; 1: findings (see the report);
2: the scrub could not run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from orthanc_hardening.config import load_config
from orthanc_hardening.errors import ConfigError, HardeningError, StoreUnavailableError
from orthanc_hardening.integrity.scrub import Progress, ScrubOptions
from orthanc_hardening.services.scrub_runner import ScrubRunner
from orthanc_hardening.stores import key_files
from orthanc_hardening.stores.manifest_store import ManifestStore
from orthanc_hardening.stores.orthanc_index import SQLiteIndex
from orthanc_hardening.stores.scrub_state import ScrubState
from orthanc_hardening.stores.seal_store import SealReader
from orthanc_hardening.stores.sql import MANIFESTS_SCHEMA, SEALS_SCHEMA, open_store_database


def progress_line(progress: Progress, width: int = 30) -> str:
    """One line of progress bar: ``[#####-----]  50.0%  10/20 files  12.3 MB/s  ETA 4s``."""
    filled = int(width * progress.percent / 100)
    eta = progress.eta_seconds
    eta_text = "?" if eta is None else f"{eta:.0f}s"
    return (f"[{'#' * filled}{'-' * (width - filled)}] {progress.percent:5.1f}%  {progress.done}/{progress.total} "
            f"files  {progress.bytes_rate / 1e6:.1f} MB/s  ETA {eta_text}")


class Bar:
    """Draws the progress bar on a terminal, at most ten times a second."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.enabled = stream.isatty()
        self._last = 0.0

    def __call__(self, progress: Progress) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self._last < 0.1 and progress.done < progress.total):
            return
        self._last = now
        self.stream.write("\r" + progress_line(progress))
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")


def scrub_offline(config_path: Path, options: ScrubOptions, stream: TextIO, restart: bool) -> dict[str, Any]:
    """Scrub a stopped Orthanc's archive from its files.

    Raises:
        ConfigError: the configuration is invalid.
        StoreUnavailableError: the index is locked (Orthanc runs) or a store cannot be read.
    """
    from orthanc_hardening.commands.posture import load_orthanc_configuration

    orthanc_config, base = load_orthanc_configuration(config_path, dict(os.environ))
    config = load_config(orthanc_config)
    storage = Path(str(orthanc_config.get("StorageDirectory", "OrthancStorage")))
    storage = storage if storage.is_absolute() else base / storage
    index_dir = Path(str(orthanc_config.get("IndexDirectory", storage)))
    index_dir = index_dir if index_dir.is_absolute() else base / index_dir
    index = SQLiteIndex(index_dir / "index")
    try:
        list(index.study_instances("probe") or [])
    except Exception as exc:
        raise StoreUnavailableError(f"Orthanc's index {index_dir / 'index'} cannot be read ({exc}): stop Orthanc, "
                                    "or scrub through it with --url") from exc
    keyring = key_files.load_public_key_ring(config.signing_key, config.key_directory, config.trusted_keys,
                                             config.key_registry_anchor)
    manifests_path = config.data_directory / "manifests.db"
    shared = config.shared_database
    manifests = (ManifestStore(open_store_database(shared, MANIFESTS_SCHEMA, manifests_path)) if shared
                 else ManifestStore(manifests_path, readonly=True) if manifests_path.is_file() else None)
    state = ScrubState(config.data_directory / "scrub-cli.db")
    latest = state.latest()
    if latest is not None and latest["state"] == "running" and not restart:
        run_id = int(latest["id"])
        stream.write(f"resuming scrub {run_id}\n")
    else:
        run_id = state.start_run(datetime.now(UTC), {})
    bar = Bar(stream)
    seals = SealReader(open_store_database(shared, SEALS_SCHEMA, config.seal_database, readonly=True))
    runner = ScrubRunner(index, seals, manifests, storage, keyring, state,
                         lambda: datetime.now(UTC), options, on_progress=bar)
    try:
        return runner.run(run_id)
    finally:
        bar.close()


def scrub_online(url: str, user: str, password: str, ca: str | None, options: dict[str, Any],
                 stream: TextIO) -> dict[str, Any]:
    """Run the scrub inside a running Orthanc and follow it.

    Raises:
        StoreUnavailableError: the server refused or cannot be reached.
    """
    import requests

    session = requests.Session()
    session.auth = (user, password)
    verify: Any = ca if ca else True
    base = url.rstrip("/")
    try:
        started = session.post(f"{base}/hardening/scrub", json=options, verify=verify, timeout=30)
        if started.status_code != 200:
            raise StoreUnavailableError(f"POST /hardening/scrub answered {started.status_code}: {started.text[:300]}")
        run_id = started.json()["run_id"]
        bar = Bar(stream)
        while True:
            body = session.get(f"{base}/hardening/scrub", verify=verify, timeout=30).json()
            progress = body.get("progress")
            if progress:
                bar(Progress(int(progress["done"]), int(progress["total"]), int(progress["bytes"]),
                             float(progress["elapsed_seconds"])))
            if body.get("run_id") == run_id and body.get("state") in ("finished", "failed"):
                bar.close()
                return dict(body.get("report") or {"state": body.get("state")})
            time.sleep(0.5)
    except requests.RequestException as exc:
        raise StoreUnavailableError(f"cannot reach {base}: {exc}") from exc


def run(args: argparse.Namespace) -> int:
    """Handler of ``scrub``."""
    options = ScrubOptions(args.pause_ms / 1000.0, args.max_mb_per_second)
    try:
        if args.url:
            password = os.environ.get(args.password_env, "")
            report = scrub_online(args.url, args.user, password, args.ca,
                                  {"PauseMilliseconds": args.pause_ms, "MaxMegabytesPerSecond": args.max_mb_per_second},
                                  sys.stderr)
        elif args.config:
            report = scrub_offline(Path(args.config), options, sys.stderr, args.restart)
        else:
            raise ConfigError("config", "give an Orthanc configuration (offline) or --url (online)")
    except HardeningError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(report, indent=2, sort_keys=True)
    if args.report:
        Path(args.report).write_text(text + "\n")
    else:
        print(text)
    counts = report.get("counts", {})
    summary = ", ".join(f"{kind} {count}" for kind, count in sorted(counts.items()) if count) or "no findings"
    print(f"scrub: {report.get('progress', {}).get('done', 0)} files checked; {summary}", file=sys.stderr)
    if report.get("state") != "finished":
        return 2
    return 1 if any(counts.values()) else 0


def register(subparsers: Any) -> None:
    """Add the ``scrub`` command."""
    parser = subparsers.add_parser("scrub", help="check every stored file, seal and manifest of the archive",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", help="configuration of a stopped Orthanc (offline scrub)")
    parser.add_argument("--url", help="a running Orthanc: scrub through its REST API")
    parser.add_argument("--user", default="admin")
    parser.add_argument("--password-env", default="ORTHANC_PASSWORD", help="env var holding the password")
    parser.add_argument("--ca", default=None, help="CA certificate of the server (HTTPS)")
    parser.add_argument("--report", help="write the JSON report here (default: stdout)")
    parser.add_argument("--pause-ms", type=float, default=0.0, help="pause after each file (milliseconds)")
    parser.add_argument("--max-mb-per-second", type=float, default=0.0, help="read at most this fast (0: no limit)")
    parser.add_argument("--restart", action="store_true", help="start a new offline run instead of resuming")
    parser.set_defaults(handler=run)
