"""Signed study manifests and the resumable archive scrub, inside Orthanc.

``install(runtime, storage)``:

* **Manifests.** When a study becomes stable (OnChange ``STABLE_STUDY``) its manifest is signed
  over the seals of its instances (``seal/manifest.py``) and stored (``stores/manifest_store.py``).
  A legitimate change through Orthanc (``DELETED`` of an instance or series of a study that has a
  manifest) re-signs at once; new instances are re-signed when the study is stable again. A seal
  that does not verify or binds another instance is left out (and alerted), so a manifest never
  blesses tampered data. ``GET /hardening/studies/{id}/manifest`` (any user) returns the
  manifest and its verification against the study now.
* **Scrub.** ``POST /hardening/scrub`` / ``GET /hardening/scrub`` (administrators): a background
  thread (ours, not an Orthanc job) runs the scrub (``services/scrub_runner.py``) over Orthanc's
  index as the REST API shows it. What was read is persisted: after a restart the run resumes
  without reading finished files again. It yields to live traffic (``sleep`` between files,
  optional MB/s limit). Metrics ``hardening_scrub_*``.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import socket
import threading
import uuid
from pathlib import Path
from typing import Any

from orthanc_hardening.errors import BadRequestError, IntegrityError, NotFoundError, StoreUnavailableError
from orthanc_hardening.identity import ADMINISTRATOR
from orthanc_hardening.integrity.query import orthanc_id
from orthanc_hardening.integrity.scrub import IndexedInstance, Progress, ScrubOptions
from orthanc_hardening.request_body import parse_json_object
from orthanc_hardening.seal.keys import KeyRing, Verifier
from orthanc_hardening.seal.manifest import Manifest, build_manifest, inspect_manifest
from orthanc_hardening.seal.record import Seal
from orthanc_hardening.services.scrub_runner import ScrubRunner, current_instances
from orthanc_hardening.shell.guard import alert
from orthanc_hardening.shell.index import RestIndex
from orthanc_hardening.shell.requester import internal_requester
from orthanc_hardening.shell.rest import Reply, RestCall, register
from orthanc_hardening.shell.runtime import Runtime
from orthanc_hardening.shell.storage import SealedStorage
from orthanc_hardening.stores.manifest_store import ManifestStore
from orthanc_hardening.stores.scrub_state import ScrubLeaseLost, ScrubState
from orthanc_hardening.stores.seal_store import SealReader
from orthanc_hardening.stores.signature_cache import ResigningVerifier, SignatureCache
from orthanc_hardening.stores.sql import MANIFESTS_SCHEMA, SCRUB_SCHEMA, SEALS_SCHEMA, open_store_database

logger = logging.getLogger(__name__)

MANIFEST_ROUTE = "/hardening/studies/([^/]+)/manifest"
SCRUB_ROUTE = "/hardening/scrub"


def manifest_view(manifest: Manifest, instances: list[IndexedInstance], seals: SealReader, root: Path,
                  keyring: Verifier) -> dict[str, Any]:
    """The manifest with its verification now (the body of the manifest route)."""
    report = inspect_manifest(manifest, current_instances(instances, seals, root), keyring)
    return {"manifest": manifest.to_dict(), "verification": report.to_dict()}


class ManifestService:
    """Signs, re-signs and verifies study manifests inside Orthanc."""

    def __init__(self, runtime: Runtime, store: ManifestStore, seals: SealReader, root: Path,
                 keyring: KeyRing, cache: SignatureCache) -> None:
        self.runtime = runtime
        self.keyring = keyring
        self.verifier = cache.verifier_for(keyring)
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
        # The change types ``on_change`` acts on.
        changes = runtime.orthanc.ChangeType
        self._watched = frozenset((int(changes.STABLE_STUDY), int(changes.DELETED)))
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
        """OnChange observer: queue a change ``on_change`` acts on for the manifest thread, and return.

        Only stable studies and deletions are queued: an ingest's four changes per instance
        (new instance, new child instance of its series, study and patient) would each wake
        the thread for nothing.
        """
        if change_type in self._watched:
            self._changes.put((change_type, level, resource_id))

    def _drain(self) -> None:
        while True:
            change = self._changes.get()
            if change is None:
                return
            try:
                self.on_change(*change)
            except Exception:
                self.runtime.metrics.increment("observer_failures_total")
                logger.exception("manifest update after change %s failed", change)

    def sign(self, study_id: str) -> Manifest | None:
        """Sign (or re-sign) the manifest of a study from the seals that verify; ``None`` if it is gone.

        The index is read under the study's manifest lock (``ManifestStore.update``), so nodes
        re-signing one study at once are serialised and the last one signs what it saw last.
        """
        seen: list[IndexedInstance] = []

        def build() -> Manifest | None:
            instances = self.index.study_instances(study_id)
            if instances is None:
                return None
            seen.extend(instances)
            return self._build(study_id, instances)

        # Not while a stand-in's deletion or store runs: its storage callbacks wait for Python's
        # lock, which this thread keeps during its index reads on Python plugin 4.0.
        with self.runtime.index_writes:
            manifest = self.store.update(study_id, build)
        if manifest is None:
            return None
        with self._lock:
            for instance in seen:
                self._members[instance.instance_id] = study_id
        self.runtime.metrics.increment("manifests_signed_total")
        logger.info("manifest of study %s signed: %d instances, root %s", study_id, manifest.instance_count,
                    manifest.root[:16])
        return manifest

    def _build(self, study_id: str, instances: list[IndexedInstance]) -> Manifest:
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
                self.verifier.verify(seal.key_id, seal.signed_bytes(), seal.signature_bytes)
                if seal.sop_instance_uid != current.sop_instance_uid or seal.study_uid != study_uid:
                    raise IntegrityError(f"instance {current.instance_id} carries the seal of SOP "
                                         f"{seal.sop_instance_uid} of study {seal.study_uid}")
            except IntegrityError as exc:
                self._alert(f"manifest of study {study_id}: instance left out: {exc}", study_uid)
                continue
            good.append(seal)
        return build_manifest(study_uid, study_id, good, self.keyring.signer, self.runtime.clock())

    def _alert(self, detail: str, study_uid: str = "") -> None:
        alert(self.runtime, internal_requester(), "manifest", detail, study_uid=study_uid)

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
        body = manifest_view(manifest, instances, self.seals, self.root, self.verifier)
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


class ScrubService:
    """The scrub inside Orthanc: one background thread at a time, resumed after a restart."""

    def __init__(self, runtime: Runtime, state: ScrubState, seals: SealReader, manifests: ManifestStore,
                 root: Path, keyring: KeyRing, cache: SignatureCache) -> None:
        self.runtime = runtime
        self.state = state
        self.seals = seals
        self.manifests = manifests
        self.root = root
        self._thread: threading.Thread | None = None
        self._runner: ScrubRunner | None = None
        self._progress: Progress | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        # The plugin's one signature cache (cleared when the key ring changes); behind it, the
        # seals of the current key are checked by signing them again (``ResigningVerifier``).
        self._cache = cache
        self._verifier = cache.verifier_for(ResigningVerifier(keyring))

    def start(self, options: ScrubOptions, resume_run: int | None = None) -> int:
        """Start a scrub (or resume ``resume_run``); return its run id.

        Raises:
            BadRequestError: a scrub is already running.
        """
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                raise BadRequestError("scrub", "a scrub is already running; follow it with GET /hardening/scrub")
            if not self.state.take_lease(self.runtime.clock()):
                holder = self.state.lease_holder(self.runtime.clock())
                raise BadRequestError("scrub", f"a scrub is running on node {holder} (the archive is scrubbed by "
                                               "one node at a time; follow it with GET /hardening/scrub)")
            if resume_run is None:
                run_id = self.state.start_run(self.runtime.clock(), {"pause_seconds": options.pause_seconds,
                                                                     "max_mb_per_second": options.max_mb_per_second})
            else:
                run_id = resume_run
            runner = ScrubRunner(RestIndex(self.runtime.orthanc), self.seals, self.manifests, self.root,
                                 self._verifier, self.state, self.runtime.clock, options,
                                 self.runtime.metrics, on_progress=self._on_progress, cache=self._cache)
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
                    alert(self.runtime, internal_requester(), "scrub",
                          f"scrub {run_id} found: " + ", ".join(f"{k} {v}" for k, v in bad.items()))
        except ScrubLeaseLost as exc:
            self.runtime.metrics.set("scrub_running", 0)
            logger.warning("scrub %d handed over: %s", run_id, exc)
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
        """Resume the latest run if it is marked running and no live node holds the lease."""
        if self._thread is not None and self._thread.is_alive():
            return
        latest = self.state.latest()
        if latest is not None and latest["state"] == "running" and self.state.lease_holder(self.runtime.clock()) in (
                None, self.state.holder):
            options = json.loads(latest["options"] or "{}")
            logger.warning("resuming scrub %d", latest["id"])
            self.start(ScrubOptions(float(options.get("pause_seconds", 0)), float(options.get("max_mb_per_second", 0))),
                       resume_run=int(latest["id"]))

    def watch_lease(self) -> None:
        """With a shared database: take over a run whose node stopped renewing its lease (daemon thread)."""
        def watch() -> None:
            while not self._stopping.wait(self.state.lease_seconds / 2):
                try:
                    self.resume_if_interrupted()
                except Exception:  # the next round tries again
                    logger.exception("scrub lease check failed")

        threading.Thread(target=watch, name="hardening-scrub-lease", daemon=True).start()

    def shutdown(self) -> None:
        self._stopping.set()
        runner, thread = self._runner, self._thread
        if runner is not None:
            runner.stop.set()
        if thread is not None:
            thread.join(timeout=10)


def install(runtime: Runtime, storage: SealedStorage) -> tuple[ManifestService, ScrubService]:
    """Install manifests (signing, route) and the scrub (routes, resume after restart).

    Raises:
        StoreUnavailableError: a store cannot be opened.
    """
    root = storage.root
    data = runtime.config.data_directory
    shared = runtime.config.shared_database
    manifests = ManifestStore(open_store_database(shared, MANIFESTS_SCHEMA, data / "manifests.db",
                                                  runtime.config.sqlite_synchronous))
    seals = SealReader(open_store_database(shared, SEALS_SCHEMA, runtime.config.seal_database, readonly=True))
    try:
        # Shared database: the nodes take turns (a lease named after this node); SQLite: one node.
        holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}" if shared else None
        state = ScrubState(open_store_database(shared, SCRUB_SCHEMA, data / "scrub.db",
                                               runtime.config.sqlite_synchronous), holder=holder)
    except Exception as exc:
        raise StoreUnavailableError(f"scrub state cannot be opened: {exc}") from exc
    service = ManifestService(runtime, manifests, seals, root, storage.keyring, storage.cache)
    scrub = ScrubService(runtime, state, seals, manifests, root, storage.keyring, storage.cache)
    service.start_worker()
    runtime.change_observers.append(service.enqueue_change)
    runtime.stop_actions.append(service.stop_worker)

    started = runtime.orthanc.ChangeType.ORTHANC_STARTED

    def resume_on_start(change_type: int, _level: int, _resource: str) -> None:
        if change_type == started:
            scrub.resume_if_interrupted()
            if shared:
                scrub.watch_lease()

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
    return service, scrub
