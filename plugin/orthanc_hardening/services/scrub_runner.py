"""The archive scrub: hash every stored file, check it against its seal, check every manifest,
compare the index with the storage directory and the seal store (``integrity/scrub.py``).

``ScrubRunner`` does not use Orthanc: it takes an ``IndexSource`` (Orthanc's REST API inside the
plugin, the index SQLite file of a stopped Orthanc in the offline command), the seal reader,
the manifest store and the persisted state, so a run resumes where it stopped. Signatures that
verified in an earlier run are in the plugin's one ``SignatureCache``: a scrub run again over an
unchanged archive only hashes files.
"""

from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from orthanc_hardening.errors import IntegrityError
from orthanc_hardening.integrity.scrub import (
    Finding,
    FindingKind,
    IndexedAttachment,
    IndexedInstance,
    IndexSource,
    Progress,
    ScrubOptions,
    count_by_kind,
    inspect_file,
    manifest_findings,
    plan_scrub,
)
from orthanc_hardening.seal.keys import Verifier
from orthanc_hardening.seal.layout import attachment_path
from orthanc_hardening.seal.manifest import CurrentInstance, inspect_manifest
from orthanc_hardening.stores.attachment_files import list_storage
from orthanc_hardening.stores.manifest_store import ManifestStore
from orthanc_hardening.stores.scrub_state import ScrubState
from orthanc_hardening.stores.seal_store import SealReader
from orthanc_hardening.stores.signature_cache import SignatureCache
from orthanc_hardening.timefmt import format_time

DICOM = 1


def current_instances(instances: list[IndexedInstance], seals: SealReader, root: Path) -> list[CurrentInstance]:
    """The study's instances now, with their DICOM-file seals and whether the files exist."""
    current = []
    for instance in instances:
        uuid = instance.attachments.get(DICOM, "")
        seal = seals.get(uuid, DICOM) if uuid else None
        present = bool(uuid) and attachment_path(root, uuid).is_file()
        current.append(CurrentInstance(instance.instance_id, instance.sop_instance_uid, instance.series_uid, uuid,
                                       seal, present))
    return current


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
    cache: SignatureCache = field(default_factory=SignatureCache)  # seal records whose signature verified
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
            self.state.record(run_id, pending, pending_findings, elapsed(), bytes_done, plan.total, self.clock())
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
        # Reading and hashing release the GIL: the reader threads keep up to ``window`` files read
        # ahead (topped up as each result is taken, so they never wait for a whole batch to be
        # checked) while this thread checks seals and signatures, so the two overlap.
        window = 16
        with concurrent.futures.ThreadPoolExecutor(max_workers=self.readers,
                                                   thread_name_prefix="hardening-scrub-read") as pool:
            ahead: collections.deque[tuple[IndexedAttachment, concurrent.futures.Future[tuple[str, int] | Exception]]]
            ahead = collections.deque()
            upcoming = iter(to_read)
            for attachment in itertools.islice(upcoming, window):
                ahead.append((attachment, pool.submit(self._hash, attachment)))
            while ahead:
                if self.stop.is_set():
                    for _attachment, future in ahead:
                        future.cancel()
                    return
                attachment, future = ahead.popleft()
                following = next(upcoming, None)
                if following is not None:
                    ahead.append((following, pool.submit(self._hash, following)))
                yield attachment, future.result()

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
        # A seal record whose exact bytes verified before needs no new signature check.
        known = bool(record) and self.cache.is_verified_seal(record)
        finding = inspect_file(attachment, digest, size, seal, self.keyring, signature_known=known)
        if finding is None and not known and record and seal is not None:
            self.cache.remember_seal(record, seal)
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
