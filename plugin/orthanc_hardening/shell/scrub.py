"""Signed study manifests and the resumable archive scrub.

``install(runtime)``:

* **Manifests.** When a study becomes stable (OnChange ``STABLE_STUDY``) its manifest is signed
  over the seals of its instances (``seal/manifest.py``) and stored in
  ``DataDirectory/manifests.db``. A legitimate change through Orthanc (``DELETED`` of an instance
  or series of a study that has a manifest) re-signs at once; new instances are re-signed when the
  study is stable again. A seal that does not verify or binds another instance is left out (and
  alerted), so a manifest never blesses tampered data. ``GET /hardening/studies/{id}/manifest``
  (any user) returns the manifest and its verification against the study now.
* **Scrub.** ``POST /hardening/scrub`` / ``GET /hardening/scrub`` (administrators): a background
  thread (ours, not an Orthanc job) that hashes every stored file and checks it against its seal,
  checks every manifest, and compares the index with the storage directory and the seal store
  (``integrity/scrub.py``). What was read is persisted in ``DataDirectory/scrub.db``: after a
  restart the run resumes without reading finished files again. It yields to live traffic
  (``sleep`` between files, optional MB/s limit). Metrics ``hardening_scrub_*``.

``ScrubRunner`` does not use Orthanc itself; it takes an ``IndexSource`` (here Orthanc's REST API,
in ``commands/scrub.py`` the index SQLite file of a stopped Orthanc).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import os
import queue
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from orthanc_hardening.audit.event import Transport
from orthanc_hardening.errors import (
    BadRequestError,
    HardeningError,
    IntegrityError,
    NotFoundError,
    StoreUnavailableError,
)
from orthanc_hardening.identity import ADMINISTRATOR, Requester
from orthanc_hardening.integrity.query import orthanc_id
from orthanc_hardening.integrity.scrub import (
    Finding,
    FindingKind,
    IndexedAttachment,
    Progress,
    check_file,
    count_by_kind,
    manifest_findings,
    plan_scrub,
)
from orthanc_hardening.request_body import parse_json_object
from orthanc_hardening.seal.layout import attachment_path
from orthanc_hardening.seal.manifest import (
    CurrentInstance,
    Manifest,
    build_manifest,
    inspect_manifest,
)
from orthanc_hardening.seal.record import Seal, Verifier, format_time, verify_seal_signature
from orthanc_hardening.shell.guard import security_alert
from orthanc_hardening.shell.rest import Reply, RestCall, register
from orthanc_hardening.shell.runtime import Runtime

logger = logging.getLogger(__name__)

DICOM = 1
MANIFEST_ROUTE = "/hardening/studies/([^/]+)/manifest"
SCRUB_ROUTE = "/hardening/scrub"
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


# -- stores ---------------------------------------------------------------------------------


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


class SealReader:
    """Read-only access to the seal store's rows (for the scrub and offline tools)."""

    def __init__(self, path: Path) -> None:
        try:
            self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False, timeout=30)
        except sqlite3.Error as exc:
            raise StoreUnavailableError(f"seal store {path} cannot be opened: {exc}") from exc
        self._lock = threading.Lock()

    def stored_keys(self) -> list[tuple[str, int]]:
        with self._lock:
            return [(str(u), int(t)) for u, t in
                    self._db.execute("SELECT uuid, content_type FROM seals WHERE state = 'stored'")]

    def get(self, uuid: str, content_type: int) -> Seal | None:
        """The stored seal of an attachment (state ``stored``), or ``None``.

        Raises:
            SealInvalidError: the row is malformed.
        """
        return self.get_with_record(uuid, content_type)[0]

    def get_with_record(self, uuid: str, content_type: int) -> tuple[Seal | None, bytes]:
        """Like ``get``, with the stored record's exact bytes (``b""`` when there is none).

        Raises:
            SealInvalidError: the row is malformed.
        """
        with self._lock:
            row = self._db.execute("SELECT record FROM seals WHERE uuid = ? AND content_type = ? AND state = 'stored'",
                                   (uuid, content_type)).fetchone()
        if row is None:
            return None, b""
        record = bytes(row[0])
        return Seal.from_bytes(record), record


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


# -- index sources ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IndexedInstance:
    """One instance as the index lists it, with its attachments."""

    instance_id: str
    study_id: str
    series_uid: str
    sop_instance_uid: str
    attachments: dict[int, str]  # content type -> uuid


class IndexSource(Protocol):
    """Where the scrub learns what Orthanc's index holds."""

    def instances(self) -> Iterator[IndexedInstance]: ...
    def study_instances(self, study_id: str) -> list[IndexedInstance] | None: ...


class RestIndex:
    """Orthanc's index through the plugin's ``orthanc.RestApiGet`` (index queries only)."""

    def __init__(self, orthanc: Any) -> None:
        self.orthanc = orthanc

    def _get(self, uri: str) -> Any:
        return json.loads(self.orthanc.RestApiGet(uri))

    def _instance(self, item: dict[str, Any], study_id: str, series_uid: str) -> IndexedInstance:
        instance_id = str(item["ID"])
        attachments: dict[int, str] = {}
        if item.get("FileUuid"):
            attachments[DICOM] = str(item["FileUuid"])
        listed = self._get(f"/instances/{instance_id}/attachments?full")
        for name, content_type in listed.items():
            if int(content_type) == DICOM and DICOM in attachments:
                continue
            attachments[int(content_type)] = str(self._get(f"/instances/{instance_id}/attachments/{name}/info")["Uuid"])
        sop = str((item.get("MainDicomTags") or {}).get("SOPInstanceUID", ""))
        return IndexedInstance(instance_id, study_id, series_uid, sop, attachments)

    def study_instances(self, study_id: str) -> list[IndexedInstance] | None:
        try:
            series_list = self._get(f"/studies/{study_id}/series")
        except Exception:
            return None
        found = []
        for series in series_list:
            series_uid = str((series.get("MainDicomTags") or {}).get("SeriesInstanceUID", ""))
            for item in self._get(f"/series/{series['ID']}/instances"):
                found.append(self._instance(item, study_id, series_uid))
        return found

    def instances(self) -> Iterator[IndexedInstance]:
        for study_id in self._get("/studies"):
            yield from self.study_instances(str(study_id)) or []


class SQLiteIndex:
    """The index SQLite file of a (stopped) Orthanc 1.x, read only."""

    def __init__(self, path: Path) -> None:
        if not Path(path).is_file():
            raise NotFoundError(f"Orthanc index {path} does not exist")
        self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False, timeout=30)

    # Orthanc's SQLite schema numbers resource types from 1 (patient) to 4 (instance).
    _STUDY, _INSTANCE = 2, 4

    def _tag(self, internal: int, group: int, element: int) -> str:
        for table in ("MainDicomTags", "DicomIdentifiers"):
            row = self._db.execute(f"SELECT value FROM {table} WHERE id = ? AND tagGroup = ? AND tagElement = ?",
                                   (internal, group, element)).fetchone()
            if row is not None:
                return str(row[0])
        return ""

    def _rows(self, study_filter: str = "", args: tuple[Any, ...] = ()) -> list[IndexedInstance]:
        query = f"""
            SELECT i.internalId, i.publicId, st.publicId, se.internalId
            FROM Resources i JOIN Resources se ON i.parentId = se.internalId
                             JOIN Resources st ON se.parentId = st.internalId
            WHERE i.resourceType = {self._INSTANCE} {study_filter} ORDER BY i.publicId"""
        result = []
        for internal, public, study, series in self._db.execute(query, args).fetchall():
            attachments = {int(t): str(u) for t, u in
                           self._db.execute("SELECT fileType, uuid FROM AttachedFiles WHERE id = ?", (internal,))}
            result.append(IndexedInstance(str(public), str(study), self._tag(series, 0x0020, 0x000E),
                                          self._tag(internal, 0x0008, 0x0018), attachments))
        return result

    def instances(self) -> Iterator[IndexedInstance]:
        yield from self._rows()

    def study_instances(self, study_id: str) -> list[IndexedInstance] | None:
        exists = self._db.execute("SELECT 1 FROM Resources WHERE publicId = ? AND resourceType = ?",
                                  (study_id, self._STUDY)).fetchone()
        if exists is None:
            return None
        return self._rows("AND st.publicId = ?", (study_id,))


# -- manifests ------------------------------------------------------------------------------


def current_instances(instances: list[IndexedInstance], seals: SealReader, root: Path) -> list[CurrentInstance]:
    """The study's instances now, with their DICOM-file seals and whether the files exist."""
    current = []
    for instance in instances:
        uuid = instance.attachments.get(DICOM, "")
        seal = seals.get(uuid, DICOM) if uuid else None
        present = bool(uuid) and _UUID.match(uuid) is not None and attachment_path(root, uuid).is_file()
        current.append(CurrentInstance(instance.instance_id, instance.sop_instance_uid, instance.series_uid, uuid,
                                       seal, present))
    return current


def manifest_view(manifest: Manifest, instances: list[IndexedInstance], seals: SealReader, root: Path,
                  keyring: Verifier) -> dict[str, Any]:
    """The manifest with its verification now (the body of the manifest route)."""
    report = inspect_manifest(manifest, current_instances(instances, seals, root), keyring)
    return {"manifest": manifest.to_dict(), "verification": report.to_dict()}


class ManifestService:
    """Signs, re-signs and verifies study manifests inside Orthanc."""

    def __init__(self, runtime: Runtime, store: ManifestStore, seals: SealReader, root: Path) -> None:
        self.runtime = runtime
        self.store = store
        self.seals = seals
        self.root = root
        self.index = RestIndex(runtime.orthanc)
        self._lock = threading.Lock()
        # Orthanc id of an instance or series -> study id, for the studies that have a manifest.
        self._members: dict[str, str] = {}
        # Changes are handled on our own thread, never on Orthanc's change thread: a change
        # callback that calls back into Orthanc's index (RestApiGet) while a deletion holds the
        # index and waits for Python deadlocked Orthanc (seen under load: DELETE /patients/{id}
        # during a manifest re-signing).
        self._changes: queue.Queue[tuple[int, int, str] | None] = queue.Queue()
        self._worker: threading.Thread | None = None

    def start_worker(self) -> None:
        """Start the thread that handles queued changes (idempotent)."""
        if self._worker is None:
            self._worker = threading.Thread(target=self._drain, name="hardening-manifests", daemon=True)
            self._worker.start()

    def stop_worker(self) -> None:
        """Stop the change thread once it has handled what is queued, and wait for it."""
        self._changes.put(None)
        if self._worker is not None and self._worker.is_alive():
            self._worker.join(30)

    def enqueue_change(self, change_type: int, level: int, resource_id: str) -> None:
        """OnChange observer: queue the change for the manifest thread and return at once."""
        self._changes.put((change_type, level, resource_id))

    def _drain(self) -> None:
        while True:
            change = self._changes.get()
            if change is None:
                return
            try:
                self.on_change(*change)
            except Exception:
                logger.exception("manifest update after change %s failed", change)

    @property
    def keyring(self) -> Any:
        return self.runtime.services["keyring"]

    def sign(self, study_id: str) -> Manifest | None:
        """Sign (or re-sign) the manifest of a study from the seals that verify; ``None`` if it is gone."""
        instances = self.index.study_instances(study_id)
        if instances is None:
            self.store.delete(study_id)
            return None
        study = json.loads(self.runtime.orthanc.RestApiGet(f"/studies/{study_id}"))
        study_uid = str((study.get("MainDicomTags") or {}).get("StudyInstanceUID", ""))
        good: list[Seal] = []
        for current in current_instances(instances, self.seals, self.root):
            seal = current.seal
            if seal is None:
                logger.warning("manifest of study %s: instance %s is unsealed, left out", study_id,
                               current.instance_id)
                continue
            try:
                verify_seal_signature(seal, self.keyring)
                if seal.sop_instance_uid != current.sop_instance_uid or seal.study_uid != study_uid:
                    raise IntegrityError(f"instance {current.instance_id} carries the seal of SOP "
                                         f"{seal.sop_instance_uid} of study {seal.study_uid}")
            except IntegrityError as exc:
                self._alert(f"manifest of study {study_id}: instance left out: {exc}", study_uid)
                continue
            good.append(seal)
        manifest = build_manifest(study_uid, study_id, good, self.keyring.signer, self.runtime.clock())
        self.store.put(manifest)
        with self._lock:
            for instance in instances:
                self._members[instance.instance_id] = study_id
        self.runtime.metrics.increment("manifests_signed_total")
        logger.info("manifest of study %s signed: %d instances, root %s", study_id, manifest.instance_count,
                    manifest.root[:16])
        return manifest

    def _alert(self, detail: str, study_uid: str = "") -> None:
        try:
            security_alert(self.runtime, Requester(transport=Transport.INTERNAL), "manifest", detail,
                           study_uid=study_uid)
        except HardeningError:
            logger.error("could not audit: %s", detail)

    def view(self, study_id: str) -> dict[str, Any]:
        """The manifest of a study and its verification now.

        Raises:
            NotFoundError: unknown study, or no manifest signed yet.
        """
        instances = self.index.study_instances(study_id)
        if instances is None:
            raise NotFoundError(f"study {study_id} is unknown")
        manifest = self.store.get(study_id)
        if manifest is None:
            raise NotFoundError(f"study {study_id} has no manifest yet: it is signed when the study becomes stable")
        body = manifest_view(manifest, instances, self.seals, self.root, self.keyring)
        if not body["verification"]["ok"]:
            kinds = sorted({p["kind"] for p in body["verification"]["problems"]})
            self._alert(f"study {study_id} differs from its signed manifest: {', '.join(kinds)}", manifest.study_uid)
        return body

    def on_change(self, change_type: int, level: int, resource_id: str) -> None:
        """OnChange observer: sign stable studies, re-sign after deletions inside a signed study."""
        orthanc = self.runtime.orthanc
        if change_type == orthanc.ChangeType.STABLE_STUDY:
            self.sign(resource_id)
        elif change_type == orthanc.ChangeType.DELETED:
            if level == orthanc.ResourceType.STUDY:
                self.store.delete(resource_id)
                return
            with self._lock:
                study_id = self._members.pop(resource_id, None)
            if study_id is None and level in (orthanc.ResourceType.INSTANCE, orthanc.ResourceType.SERIES):
                study_id = self._study_of_deleted(resource_id)
            if study_id is not None:
                self.sign(study_id)

    def _study_of_deleted(self, resource_id: str) -> str | None:
        # The resource is gone from the index: find the manifest whose leaves hash to its id.
        for study_id in self.store.study_ids():
            manifest = self.store.get(study_id)
            if manifest is None:
                continue
            for leaf in manifest.leaves:
                parts = (leaf.patient_id, leaf.study_uid, leaf.series_uid, leaf.sop_instance_uid)
                if resource_id in (orthanc_id(*parts), orthanc_id(*parts[:3])):
                    return study_id
        return None


# -- scrub ----------------------------------------------------------------------------------


def list_storage(root: Path) -> list[str]:
    """The attachment uuids present in Orthanc's storage layout (``xx/yy/uuid``)."""
    found: list[str] = []
    if not root.is_dir():
        return found
    for first in os.scandir(root):
        if not first.is_dir() or len(first.name) != 2:
            continue
        for second in os.scandir(first.path):
            if not second.is_dir() or len(second.name) != 2:
                continue
            for entry in os.scandir(second.path):
                if entry.is_file() and _UUID.match(entry.name) and entry.name.startswith(first.name + second.name):
                    found.append(entry.name)
    return found


class CachingVerifier:
    """A key ring whose successful verifications are remembered (exact key id, bytes and signature).

    A scrub run again over an unchanged archive then only hashes files. Bounded: cleared when full.
    """

    def __init__(self, keyring: Verifier, limit: int = 1_000_000) -> None:
        self._keyring = keyring
        self._limit = limit
        self._verified: set[bytes] = set()
        self._lock = threading.Lock()

    def verify(self, kid: str, data: bytes, signature: bytes) -> None:
        """Verify like the key ring, unless these exact bytes verified before.

        Raises:
            UnknownKeyError: the key is neither current nor trusted.
            SealInvalidError: the signature does not verify.
        """
        key = hashlib.sha256(kid.encode() + b"\x00" + signature + b"\x00" + data).digest()
        with self._lock:
            if key in self._verified:
                return
        self._keyring.verify(kid, data, signature)
        with self._lock:
            if len(self._verified) >= self._limit:
                self._verified.clear()
            self._verified.add(key)

    def clear(self) -> None:
        with self._lock:
            self._verified.clear()


class _AlreadyVerified:
    """The verifier for a seal record whose exact bytes verified before (see ``ScrubRunner``)."""

    def verify(self, kid: str, data: bytes, signature: bytes) -> None:
        return None


_TRUSTED = _AlreadyVerified()


@dataclass
class ScrubOptions:
    """How hard a scrub may push: a pause after each file and an optional MB/s ceiling."""

    pause_seconds: float = 0.0
    max_mb_per_second: float = 0.0

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> ScrubOptions:
        """Parse ``{"PauseMilliseconds": n, "MaxMegabytesPerSecond": x}``.

        Raises:
            BadRequestError: a value is not a number within its bounds.
        """
        pause = body.get("PauseMilliseconds", 0)
        limit = body.get("MaxMegabytesPerSecond", 0)
        for name, value in (("PauseMilliseconds", pause), ("MaxMegabytesPerSecond", limit)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= _OPTION_MAXIMUM[name]:
                raise BadRequestError(name, f"must be a number between 0 and {_OPTION_MAXIMUM[name]}")
        return cls(float(pause) / 1000.0, float(limit))


# Bounds of the scrub options: a pause of at most 10 s between files, at most 100 GB/s.
_OPTION_MAXIMUM = {"PauseMilliseconds": 10_000, "MaxMegabytesPerSecond": 100_000}


@dataclass
class ScrubRunner:
    """Runs (or resumes) one scrub over the archive; callable from a thread or the CLI."""

    index: IndexSource
    seals: SealReader
    manifests: ManifestStore | None
    root: Path
    keyring: Verifier
    state: ScrubState
    clock: Callable[[], datetime]
    options: ScrubOptions = field(default_factory=ScrubOptions)
    metrics: Any = None
    on_progress: Callable[[Progress], None] | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    batch_seconds: float = 0.5
    readers: int = 1  # threads reading and hashing ahead of the checks
    verified_records: set[bytes] = field(default_factory=set)  # seal records whose signature verified
    files_read: int = 0  # files read by this process (not by earlier, interrupted ones)

    def run(self, run_id: int) -> dict[str, Any]:
        """Scrub, resuming ``run_id`` where it stopped; return the final report (or the partial one if stopped)."""
        previous = self.state.latest()
        elapsed_before = float(previous["elapsed"]) if previous and previous["id"] == run_id else 0.0
        bytes_before = int(previous["bytes"]) if previous and previous["id"] == run_id else 0
        instances = list(self.index.instances())
        attachments = [IndexedAttachment(uuid, content_type, i.instance_id, i.study_id, i.sop_instance_uid)
                       for i in instances for content_type, uuid in i.attachments.items()]
        done = self.state.done(run_id)
        plan = plan_scrub(attachments, self.seals.stored_keys(), list_storage(self.root), done)
        started = time.monotonic()
        bytes_done = bytes_before
        done_count = plan.total - plan.remaining
        pending: list[tuple[str, int]] = []
        pending_findings: list[Finding] = []
        last_flush = time.monotonic()

        def elapsed() -> float:
            return elapsed_before + time.monotonic() - started

        def flush() -> None:
            nonlocal pending, pending_findings, last_flush
            self.state.record(run_id, pending, pending_findings, elapsed(), bytes_done, plan.total)
            pending, pending_findings, last_flush = [], [], time.monotonic()

        for attachment, hashed in self._hashed(plan.to_read):
            if self.stop.is_set():
                break
            finding, size = self._check(attachment, hashed)
            self.files_read += 1
            bytes_done += size
            done_count += 1
            pending.append(attachment.key)
            if finding is not None:
                pending_findings.append(finding)
            progress = Progress(done_count, plan.total, bytes_done, elapsed())
            if time.monotonic() - last_flush >= self.batch_seconds:
                self._report(progress)
                flush()
            elif self.on_progress is not None:
                self.on_progress(progress)
            self._yield(size, progress)
        flush()
        self._report(Progress(done_count, plan.total, bytes_done, elapsed()))
        if self.stop.is_set():
            return {"state": "interrupted", "run_id": run_id}
        findings = [*plan.findings, *self.state.findings(run_id), *self._manifest_findings(instances)]
        progress = Progress(done_count, plan.total, bytes_done, elapsed())
        report = {
            "run_id": run_id,
            "state": "finished",
            "finished_at": format_time(self.clock()),
            "progress": progress.to_dict(),
            "instances": len(instances),
            "manifests_checked": len(self.manifests.study_ids()) if self.manifests else 0,
            "counts": count_by_kind(findings),
            "findings": [f.to_dict() for f in findings],
        }
        self.state.finish(run_id, "finished", self.clock(), report)
        if self.metrics is not None:
            self.metrics.set("scrub_running", 0)
            self.metrics.set("scrub_findings", len(findings))
            self.metrics.increment("scrub_runs_total")
        return report

    def _hash(self, attachment: IndexedAttachment) -> tuple[str, int] | Exception:
        try:
            digest = hashlib.sha256()
            size = 0
            with open(attachment_path(self.root, attachment.uuid), "rb") as handle:
                while chunk := handle.read(1 << 20):
                    digest.update(chunk)
                    size += len(chunk)
            return digest.hexdigest(), size
        except (OSError, ValueError) as exc:
            return exc

    def _hashed(self, to_read: tuple[IndexedAttachment, ...]
                ) -> Iterator[tuple[IndexedAttachment, tuple[str, int] | Exception]]:
        # Reading and hashing release the GIL: one helper thread reads ahead (a small window)
        # while this thread checks seals and signatures, so the two overlap.
        window = 16
        with concurrent.futures.ThreadPoolExecutor(max_workers=self.readers,
                                                   thread_name_prefix="hardening-scrub-read") as pool:
            for start in range(0, len(to_read), window):
                if self.stop.is_set():
                    return
                batch = to_read[start:start + window]
                yield from zip(batch, pool.map(self._hash, batch), strict=True)

    def _check(self, attachment: IndexedAttachment, hashed: tuple[str, int] | Exception
               ) -> tuple[Finding | None, int]:
        if isinstance(hashed, Exception):
            exc = hashed
            return Finding(FindingKind.MISSING_FILE, f"attachment {attachment.uuid} cannot be read: {exc}",
                           uuid=attachment.uuid, content_type=attachment.content_type,
                           instance_id=attachment.instance_id, study_id=attachment.study_id), 0
        try:
            seal, record = self.seals.get_with_record(attachment.uuid, attachment.content_type)
        except IntegrityError as exc:
            return Finding(FindingKind.TAMPERED, f"seal row of {attachment.uuid} is malformed: {exc}",
                           uuid=attachment.uuid, content_type=attachment.content_type,
                           instance_id=attachment.instance_id, study_id=attachment.study_id), hashed[1]
        digest, size = hashed
        # A seal record whose exact bytes verified in an earlier run needs no new signature check.
        known = record in self.verified_records
        finding = check_file(attachment, digest, size, seal, _TRUSTED if known else self.keyring)
        if finding is None and not known and record:
            if len(self.verified_records) >= 1_000_000:
                self.verified_records.clear()
            self.verified_records.add(record)
        return finding, size

    def _manifest_findings(self, instances: list[IndexedInstance]) -> list[Finding]:
        if self.manifests is None:
            return []
        by_study: dict[str, list[IndexedInstance]] = {}
        for instance in instances:
            by_study.setdefault(instance.study_id, []).append(instance)
        findings: list[Finding] = []
        for study_id in self.manifests.study_ids():
            try:
                manifest = self.manifests.get(study_id)
            except IntegrityError as exc:
                findings.append(Finding(FindingKind.MANIFEST_MISMATCH, f"manifest of {study_id} malformed: {exc}",
                                        study_id=study_id))
                continue
            if manifest is None:
                continue
            current = current_instances(by_study.get(study_id, []), self.seals, self.root)
            findings.extend(manifest_findings(inspect_manifest(manifest, current, self.keyring)))
        return findings

    def _report(self, progress: Progress) -> None:
        if self.metrics is not None:
            self.metrics.set("scrub_files_done", progress.done)
            self.metrics.set("scrub_files_total", progress.total)
            self.metrics.set("scrub_bytes_done", progress.bytes_done)
            self.metrics.set("scrub_files_per_second", round(progress.rate, 2))
        if self.on_progress is not None:
            self.on_progress(progress)

    def _yield(self, size: int, progress: Progress) -> None:
        pause = self.options.pause_seconds
        if self.options.max_mb_per_second > 0 and progress.elapsed_seconds > 0:
            ahead = progress.bytes_done / (self.options.max_mb_per_second * 1e6) - progress.elapsed_seconds
            pause = max(pause, min(ahead, 1.0))
        # Without a pause, the GIL is still handed over while files are read and hashed.
        if pause > 0:
            self.stop.wait(pause)


class ScrubService:
    """The scrub inside Orthanc: one background thread at a time, resumed after a restart."""

    def __init__(self, runtime: Runtime, state: ScrubState, seals: SealReader, manifests: ManifestStore,
                 root: Path) -> None:
        self.runtime = runtime
        self.state = state
        self.seals = seals
        self.manifests = manifests
        self.root = root
        self._thread: threading.Thread | None = None
        self._runner: ScrubRunner | None = None
        self._progress: Progress | None = None
        self._lock = threading.Lock()
        self._verifier = CachingVerifier(runtime.services["keyring"])
        self._verified_records: set[bytes] = set()
        add_listener = getattr(runtime.services["keyring"], "add_listener", None)
        if callable(add_listener):
            # A key-ring change may withdraw trust: verify every record again.
            add_listener(self._forget_verifications)

    def _forget_verifications(self, _signer: Any) -> None:
        self._verifier.clear()
        self._verified_records.clear()

    def start(self, options: ScrubOptions, resume_run: int | None = None) -> int:
        """Start a scrub (or resume ``resume_run``); return its run id.

        Raises:
            BadRequestError: a scrub is already running.
        """
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                raise BadRequestError("scrub", "a scrub is already running; follow it with GET /hardening/scrub")
            if resume_run is None:
                run_id = self.state.start_run(self.runtime.clock(), {"pause_seconds": options.pause_seconds,
                                                                     "max_mb_per_second": options.max_mb_per_second})
            else:
                run_id = resume_run
            runner = ScrubRunner(RestIndex(self.runtime.orthanc), self.seals, self.manifests, self.root,
                                 self._verifier, self.state, self.runtime.clock, options,
                                 self.runtime.metrics, on_progress=self._on_progress,
                                 verified_records=self._verified_records)
            self._runner = runner
            self._progress = None
            self.runtime.metrics.set("scrub_running", 1)
            self._thread = threading.Thread(target=self._run, args=(runner, run_id), name="hardening-scrub",
                                            daemon=True)
            self._thread.start()
            return run_id

    def _on_progress(self, progress: Progress) -> None:
        self._progress = progress

    def _run(self, runner: ScrubRunner, run_id: int) -> None:
        try:
            report = runner.run(run_id)
            if report.get("state") == "finished":
                counts = report["counts"]
                bad = {k: v for k, v in counts.items() if v}
                logger.warning("scrub %d finished: %d files, findings %s", run_id, report["progress"]["done"],
                               bad or "none")
                if bad:
                    try:
                        security_alert(self.runtime, Requester(transport=Transport.INTERNAL), "scrub",
                                       f"scrub {run_id} found: " + ", ".join(f"{k} {v}" for k, v in bad.items()))
                    except HardeningError:
                        logger.error("could not audit the scrub findings")
        except Exception as exc:  # our own thread: record and stop, never crash Orthanc
            self.runtime.metrics.set("scrub_running", 0)
            if runner.stop.is_set():
                # Orthanc is stopping: the run stays "running" and resumes at the next start.
                logger.warning("scrub %d interrupted by shutdown", run_id)
                return
            logger.exception("scrub %d failed", run_id)
            self.state.finish(run_id, "failed", self.runtime.clock(), {"error": str(exc)[:500]})

    def status(self) -> dict[str, Any]:
        latest = self.state.latest()
        if latest is None:
            return {"state": "never-run"}
        running = self._thread is not None and self._thread.is_alive()
        body: dict[str, Any] = {"run_id": latest["id"], "started_at": latest["started_at"],
                                "state": "running" if running else latest["state"],
                                "finished_at": latest["finished_at"]}
        if running and self._progress is not None:
            body["progress"] = self._progress.to_dict()
            body["files_read_since_start"] = self._runner.files_read if self._runner else 0
        elif latest["state"] == "running":
            body["state"] = "interrupted"
            body["progress"] = Progress(len(self.state.done(int(latest["id"]))), int(latest["total"]),
                                        int(latest["bytes"]), float(latest["elapsed"])).to_dict()
        if latest["report"]:
            body["report"] = json.loads(latest["report"])
        if self._runner is not None:
            body["files_read_since_start"] = self._runner.files_read
        return body

    def resume_if_interrupted(self) -> None:
        latest = self.state.latest()
        if latest is not None and latest["state"] == "running":
            options = json.loads(latest["options"] or "{}")
            logger.warning("resuming scrub %d", latest["id"])
            self.start(ScrubOptions(float(options.get("pause_seconds", 0)), float(options.get("max_mb_per_second", 0))),
                       resume_run=int(latest["id"]))

    def shutdown(self) -> None:
        runner, thread = self._runner, self._thread
        if runner is not None:
            runner.stop.set()
        if thread is not None:
            thread.join(timeout=10)


def install(runtime: Runtime) -> None:
    """Install manifests (signing, route) and the scrub (routes, resume after restart).

    Raises:
        StoreUnavailableError: a store cannot be opened.
    """
    storage = runtime.services.get("sealed_storage")
    if storage is None or "keyring" not in runtime.services:
        logger.error("manifests and scrub need the sealed storage; not installed")
        return
    root = Path(storage.root)
    data = runtime.config.data_directory
    manifests = ManifestStore(data / "manifests.db", synchronous=runtime.config.sqlite_synchronous)
    seals = SealReader(runtime.config.seal_database)
    try:
        state = ScrubState(data / "scrub.db", synchronous=runtime.config.sqlite_synchronous)
    except sqlite3.Error as exc:
        raise StoreUnavailableError(f"scrub state cannot be opened: {exc}") from exc
    service = ManifestService(runtime, manifests, seals, root)
    scrub = ScrubService(runtime, state, seals, manifests, root)
    runtime.services["manifests"] = service
    runtime.services["scrub"] = scrub
    service.start_worker()
    runtime.change_observers.append(service.enqueue_change)
    runtime.stop_actions.append(service.stop_worker)

    started = runtime.orthanc.ChangeType.ORTHANC_STARTED

    def resume_on_start(change_type: int, _level: int, _resource: str) -> None:
        if change_type == started:
            scrub.resume_if_interrupted()

    runtime.change_observers.append(resume_on_start)
    runtime.stop_actions.append(scrub.shutdown)

    def get_manifest(call: RestCall) -> Reply:
        return Reply(service.view(call.groups[0]))

    def post_scrub(call: RestCall) -> Reply:
        body = parse_json_object(call.body, empty_ok=True)
        run_id = scrub.start(ScrubOptions.from_body(body))
        return Reply({"run_id": run_id, "state": "running", "follow": SCRUB_ROUTE}, status=200)

    def get_scrub(call: RestCall) -> Reply:
        return Reply(scrub.status())

    register(runtime, MANIFEST_ROUTE, {"GET": get_manifest}, name="manifest")
    register(runtime, SCRUB_ROUTE, {"GET": get_scrub, "POST": post_scrub}, role=ADMINISTRATOR, name="scrub")


__all__ = [
    "IndexSource",
    "ManifestService",
    "ManifestStore",
    "RestIndex",
    "SQLiteIndex",
    "ScrubOptions",
    "ScrubRunner",
    "ScrubService",
    "ScrubState",
    "SealReader",
    "install",
    "list_storage",
]
