"""Archives and media refused as a whole when an instance in them does not verify.

Orthanc answers a series or study archive whose storage read fails with 200 and the instance
silently missing (Orthanc 1.10 to 1.13). So the plugin overrides every archive and media route —
``/{patients,studies,series}/{id}/archive|media``, ``/tools/create-archive|create-media|
create-media-extended`` and ``/jobs/{id}/archive`` of the jobs started through them — checks
every instance first (``SealedStorage.check_instance``: seal, signature, identity, the file's
size), then has Orthanc build its own archive, and refuses with 409 JSON naming the instances
when a read failed while Orthanc built it or the archive lacks an instance. An archive the
plugin answers itself (every ``GET`` and synchronous ``POST``) leaves the bytes' digest to the
storage reads of Orthanc's build, which verify them anyway: one read and hash per file, and a
tampered file still refuses the archive as a whole, named. An asynchronous job started for the
client reads every file before it starts (the client gets its refusal instead of a job id). A ``GET`` is answered by
Orthanc's own synchronous ``GET`` where the Python plugin releases Python's lock while the
plugin waits (``Runtime.threads_released``); otherwise, and for every ``POST``, by an
asynchronous job (a synchronous one would wait for a job thread that waits for Python's lock).
"""

from __future__ import annotations

import json
import threading
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any
from urllib.parse import urlencode

from orthanc_hardening.errors import (
    IntegrityError,
    SealInvalidError,
    StoreUnavailableError,
)
from orthanc_hardening.request_body import parse_json_object, parse_json_value
from orthanc_hardening.shell.jobs import wait_for_job
from orthanc_hardening.shell.offload import Offloader
from orthanc_hardening.shell.orthanc_api import OrthancCoreError, core_call
from orthanc_hardening.shell.rest import Reply, RestCall, register
from orthanc_hardening.shell.runtime import Runtime
from orthanc_hardening.shell.storage import SealedStorage

ARCHIVE_ROUTE = "/(patients|studies|series)/([^/]+)/(archive|media)"
TOOLS_ARCHIVE_ROUTE = "/tools/(create-archive|create-media|create-media-extended)"
JOB_ARCHIVE_ROUTE = "/jobs/([^/]+)/archive"
JOB_TIMEOUT_SECONDS = 3600.0
JOBS_REMEMBERED = 10_000
LEVELS = ("patients", "studies", "series", "instances")


@dataclass
class Archives:
    """The archive jobs the overrides started, checked when their archive is fetched."""

    storage: SealedStorage
    _jobs: dict[str, ArchiveJob] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def remember(self, job_id: str, job: ArchiveJob) -> None:
        with self._lock:
            while len(self._jobs) >= JOBS_REMEMBERED:
                self._jobs.pop(next(iter(self._jobs)))
            self._jobs[job_id] = job

    def job(self, job_id: str) -> ArchiveJob | None:
        with self._lock:
            return self._jobs.get(job_id)

    def forget(self, job_id: str) -> None:
        with self._lock:
            self._jobs.pop(job_id, None)




def _instances_of(storage: SealedStorage, levels: tuple[str, ...], resource_id: str,
                  listed: dict[str, Any]) -> list[str] | None:
    """The instances below a resource of the first of ``levels`` that knows the id (``None``: none).

    Each instance object a listing answered goes into ``listed`` (``SealedStorage.list_instances``).
    """
    for level in levels:
        if level == "instances":
            try:
                listed[f"/instances/{resource_id}"] = json.loads(
                    storage.runtime.orthanc.RestApiGet(f"/instances/{resource_id}"))
            except Exception:
                continue
            return [resource_id]
        try:
            return storage.list_instances(f"/{level}/{resource_id}/instances", listed)
        except Exception:
            continue
    return None


def _resource_instances(storage: SealedStorage, level: str, resource_id: str,
                        listed: dict[str, Any]) -> list[str] | None:
    """The instances an archive of ``/{level}/{id}`` holds (``None``: no resource has this id).

    Orthanc 1.10 serves an id of any level under any level's archive route (a series id under
    ``/studies/{id}/archive``), so the id is looked up at its own level first, then at the others;
    later versions refuse it themselves when asked.
    """
    levels = (level, *(other for other in LEVELS if other != level))
    return _instances_of(storage, levels, resource_id, listed)


def _tools_instances(storage: SealedStorage, body: Any, listed: dict[str, Any]) -> list[str]:
    """The instances of ``/tools/create-archive|media`` (a list of ids, or ``{"Resources": [...]}``).

    Raises:
        OrthancCoreError: not a list of ids (Orthanc's "Bad file format"), or an unknown id.
    """
    resources = body if isinstance(body, list) else body.get("Resources") if isinstance(body, dict) else None
    if not isinstance(resources, list) or not all(isinstance(r, str) for r in resources):
        raise OrthancCoreError.of(15, "Expected a list of strings (Orthanc identifiers)")
    instances: list[str] = []
    for resource in resources:
        found = _instances_of(storage, LEVELS, resource, listed)
        if found is None:
            raise OrthancCoreError.of(17)
        instances.extend(found)
    return instances


def _job_body(body: Any) -> dict[str, Any]:
    """The archive job's body as an object (Orthanc reads a bare list as its ``Resources``)."""
    return {"Resources": body} if isinstance(body, list) else dict(body)


class ArchiveRefusedError(IntegrityError):
    """An archive or media was refused because instances in it do not verify."""

    def __init__(self, failures: dict[str, str], message: str = "") -> None:
        names = ", ".join(sorted(failures))
        super().__init__(message or f"{len(failures)} instance(s) failed verification: {names}")
        self.failures = failures


@dataclass(frozen=True, slots=True)
class ArchiveJob:
    """An archive job started by the override: what it must contain, and the failure mark."""

    owners: Mapping[str, str]
    instances: int
    failure_mark: int


def verify_instances(storage: SealedStorage, instances: list[str], files_read_next: bool = False,
                     listed: dict[str, Any] | None = None) -> tuple[dict[str, str], int]:
    """Verify every instance of an archive, before Orthanc reads it.

    Args:
        storage: the sealed storage.
        instances: the archive's instances.
        files_read_next: the caller checks the failures of Orthanc's reads (``check_archive``)
            before it answers: leave the bytes' digest to those reads (``check_instance``).
        listed: the index's answers for the instances, by URI, from the listing that found them
            (``SealedStorage.list_instances``): not asked again.

    Once every instance verified, the reads of Orthanc's build take the index facts read here
    (``SealedStorage.grant_index_reads``, as a C-MOVE's send does).

    Returns:
        The instance of each attachment uuid, and the mark of the last read failure so far (the
        reads that fail while Orthanc builds the archive come after it).

    Raises:
        ArchiveRefusedError: an instance failed verification (enforce mode).
    """
    failures: dict[str, str] = {}
    owners: dict[str, str] = {}
    parents: dict[str, Any] = dict(listed or {})
    bound: list[tuple[str, str, str]] = []
    mark = storage.store.last_failure_id()
    for instance_id in instances:
        try:
            known = parents.get(f"/instances/{instance_id}") or {}
            attachments = storage.attachments_of(instance_id, str(known.get("FileUuid", "") or ""))
            owners.update((uuid, instance_id) for _n, _t, uuid in attachments)
            storage.check_instance(instance_id, attachments, parents, files_read_next=files_read_next, bound=bound)
        except IntegrityError as exc:
            failures[instance_id] = str(exc)
    if failures and storage.runtime.config.is_enforcing:
        raise ArchiveRefusedError(failures)
    storage.grant_index_reads(bound)
    return owners, mark if files_read_next else storage.store.last_failure_id()


def check_archive(storage: SealedStorage, data: bytes, owners: Mapping[str, str], mark: int, instances: int) -> None:
    """Refuse an archive Orthanc built if a read of its instances failed meanwhile, or one is missing.

    Raises:
        ArchiveRefusedError: a read failed after ``mark``, or the archive lacks an instance (enforce mode).
    """
    refuse_late_failures(storage, owners, mark)
    refuse_incomplete(storage, data, instances)


def refuse_incomplete(storage: SealedStorage, data: bytes, instances: int) -> None:
    """Refuse (enforce mode) an archive that holds fewer than ``instances`` DICOM files.

    Raises:
        ArchiveRefusedError: an instance is missing from the archive.
    """
    if storage.runtime.config.is_enforcing:
        _check_archive_complete(data, instances)


def refuse_late_failures(storage: SealedStorage, owners: Mapping[str, str], mark: int) -> None:
    """Refuse (enforce mode) if a read of an attachment in ``owners`` failed after the failure ``mark``.

    Raises:
        ArchiveRefusedError: such a read failed; it names the instance of each failed attachment.
    """
    if not storage.runtime.config.is_enforcing:
        return
    late = [f for f in storage.store.failures_since(mark) if f.uuid in owners]
    if late:
        raise ArchiveRefusedError({owners[f.uuid]: f"instance {owners[f.uuid]}: {f.problem}" for f in late})


def fetch_archive(archives: Archives, uri: str, instances: list[str], listed: dict[str, Any] | None = None) -> bytes:
    """Verify every instance, then have Orthanc answer its own synchronous ``GET`` archive.

    Only where the Python plugin lets Orthanc's threads run while the plugin waits
    (``threads_released``): the archive job reads the files through the plugin on a job thread.
    Orthanc 1.12+ lays out a ``GET`` archive of a series or study with its patient and study
    folders, its ``POST`` archives (and their jobs) without them.

    Raises:
        ArchiveRefusedError: an instance failed verification (enforce mode), before or while
            Orthanc read it for the archive, or the archive lacks an instance.
    """
    storage = archives.storage
    owners, mark = verify_instances(storage, instances, files_read_next=True, listed=listed)
    try:
        data = core_call(storage.runtime.orthanc.RestApiGet, uri)
    except OrthancCoreError:
        refuse_late_failures(storage, owners, mark)  # a failed read is the reason, if there was one
        raise
    data = data if isinstance(data, bytes) else str(data).encode("latin-1")
    check_archive(storage, data, owners, mark, len(instances))
    return data


def start_archive(archives: Archives, uri: str, instances: list[str], job_body: dict[str, Any],
                  files_read_next: bool = False, listed: dict[str, Any] | None = None) -> tuple[str, Any]:
    """Verify every instance, then start Orthanc's archive job (asynchronous).

    ``files_read_next``: the caller fetches the archive through ``archive_of_job`` before it
    answers (``verify_instances``); a job id answered to the client has its files read here.

    Returns:
        The job id and Orthanc's answer to the job creation.

    Raises:
        ArchiveRefusedError: an instance failed verification (enforce mode).
    """
    runtime = archives.storage.runtime
    owners, mark = verify_instances(archives.storage, instances, files_read_next, listed)
    body = {**job_body, "Asynchronous": True}
    body.pop("Synchronous", None)
    answer = json.loads(core_call(runtime.orthanc.RestApiPost, uri, json.dumps(body)))
    job_id = str(answer["ID"])
    archives.remember(job_id, ArchiveJob(owners, len(instances), mark))
    return job_id, answer


def archive_of_job(archives: Archives, job_id: str) -> bytes:
    """The archive of a finished job, refused if a read failed while the job ran.

    Raises:
        ArchiveRefusedError: a read of the job's instances failed, or an instance is missing.
    """
    storage = archives.storage
    job = archives.job(job_id)
    # The job read the files while it ran: its failures are known before its archive is fetched.
    if job is not None:
        refuse_late_failures(storage, job.owners, job.failure_mark)
    data = storage.runtime.orthanc.RestApiGet(f"/jobs/{job_id}/archive")
    data = data if isinstance(data, bytes) else str(data).encode("latin-1")
    if job is not None:
        refuse_incomplete(storage, data, job.instances)
    return data


def make_archive(archives: Archives, uri: str, instances: list[str], job_body: dict[str, Any],
                 listed: dict[str, Any] | None = None) -> bytes:
    """Verify every instance, build the archive as an asynchronous job, wait, return its bytes.

    Raises:
        ArchiveRefusedError: an instance failed verification (enforce mode), before or while
            Orthanc read it for the archive, or the archive lacks an instance.
        StoreUnavailableError: the job failed.
    """
    job_id, _answer = start_archive(archives, uri, instances, job_body, files_read_next=True, listed=listed)
    try:
        state = wait_for_job(archives.storage.runtime, job_id, JOB_TIMEOUT_SECONDS)
        if state.get("State") != "Success":
            job = archives.job(job_id)
            if job is not None:  # a failed read is the reason, if there was one
                refuse_late_failures(archives.storage, job.owners, job.failure_mark)
            raise StoreUnavailableError(f"archive job {job_id} ended in state {state.get('State')}")
        return archive_of_job(archives, job_id)
    finally:
        archives.forget(job_id)


def _check_archive_complete(data: bytes, expected: int) -> None:
    try:
        with zipfile.ZipFile(BytesIO(data)) as archive:
            names = [n for n in archive.namelist() if not n.endswith("/") and not n.upper().endswith("DICOMDIR")]
    except zipfile.BadZipFile as exc:
        raise SealInvalidError("the archive Orthanc produced is not a ZIP file") from exc
    if len(names) != expected:
        raise ArchiveRefusedError({}, f"the archive holds {len(names)} of {expected} instances; refused as a whole")


def install(runtime: Runtime, storage: SealedStorage) -> Archives:
    """Register the archive and media overrides (refused as a whole when an instance fails)."""
    archives = Archives(storage)
    # Archives are started and fetched from a plugin thread, never from the HTTP thread
    # (Orthanc 1.13 crashes building a ZIP on a civetweb worker's stack: shell/offload.py).
    offloader = Offloader()
    runtime.stop_actions.append(offloader.stop)

    def offloaded(handler: Callable[[RestCall], Reply]) -> Callable[[RestCall], Reply]:
        def run(call: RestCall) -> Reply:
            return offloader.run(lambda: handler(call))

        return run

    def resource_archive(call: RestCall) -> Reply:
        level, resource_id, kind = call.groups
        body = parse_json_object(call.body, empty_ok=True) if call.method == "POST" else {}
        listed: dict[str, Any] = {}  # the index's answer for each instance, from the listing
        instances = _resource_instances(storage, level, resource_id, listed)
        uri = f"/{level}/{resource_id}/{kind}"
        if instances is None:
            # Orthanc's own answer to an unknown id is its error (which differs between versions).
            send = runtime.orthanc.RestApiGet if call.method == "GET" else runtime.orthanc.RestApiPost
            core_call(send, uri, *(() if call.method == "GET" else (json.dumps(body),)))
            raise OrthancCoreError.of(17)
        if call.method == "GET" and runtime.threads_released():
            query = "?" + urlencode(call.query, safe=";,") if call.query else ""
            filename = call.query.get("filename") if runtime.capabilities.resource_finder else None
            return Reply(raw=fetch_archive(archives, uri + query, instances, listed), content_type="application/zip",
                         headers={"Content-Disposition": f'filename="{filename or resource_id + ".zip"}"'})
        if call.method == "GET" and call.query.get("transcode"):
            body["Transcode"] = call.query["transcode"]
        if call.method == "GET" and kind == "media" and "extended" in call.query:
            body["Extended"] = True
        if body.get("Asynchronous") is True:
            return Reply(start_archive(archives, uri, instances, body, listed=listed)[1])
        return Reply(raw=make_archive(archives, uri, instances, body, listed), content_type="application/zip",
                     headers={"Content-Disposition": f'filename="{resource_id}.zip"'})

    def tools_archive(call: RestCall) -> Reply:
        body = parse_json_value(call.body)
        listed: dict[str, Any] = {}
        instances = _tools_instances(storage, body, listed)
        job = _job_body(body)
        uri = f"/tools/{call.groups[0]}"
        if job.get("Asynchronous") is True:
            return Reply(start_archive(archives, uri, instances, job, listed=listed)[1])
        return Reply(raw=make_archive(archives, uri, instances, job, listed), content_type="application/zip",
                     headers={"Content-Disposition": 'filename="Archive.zip"'})

    def job_archive(call: RestCall) -> Reply:
        return Reply(raw=archive_of_job(archives, call.groups[0]), content_type="application/zip",
                     headers={"Content-Disposition": 'filename="Archive.zip"'})

    register(runtime, ARCHIVE_ROUTE, {"GET": offloaded(resource_archive), "POST": offloaded(resource_archive)},
             name="archive", like_orthanc=True)
    register(runtime, TOOLS_ARCHIVE_ROUTE, {"POST": offloaded(tools_archive)}, name="create-archive",
             like_orthanc=True)
    register(runtime, JOB_ARCHIVE_ROUTE, {"GET": offloaded(job_archive)}, name="job-archive", like_orthanc=True)
    return archives
