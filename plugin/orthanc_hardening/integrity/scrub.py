"""The archive scrub: what to check, how each check ends, and how far it got.

A scrub compares three views of the archive and names every disagreement:

* Orthanc's **index** (which attachments each instance has),
* the **storage** directory (which files exist, and their bytes),
* the **seal store** (which attachments were sealed, with which digest) and the signed study
  **manifests**.

``plan_scrub`` turns the three listings into the files to hash and the findings that need no
read (missing file, unsealed, orphan file, orphan seal); ``inspect_file`` judges one hashed file
against its seal (tampered or fine); ``manifest_findings`` turns a manifest report into findings;
``progress`` gives done/total/rate/ETA. No I/O here: the shell lists, reads, hashes and persists.
"""

from __future__ import annotations

import enum
import hmac
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from orthanc_hardening.errors import BadRequestError, IntegrityError, UnknownKeyError
from orthanc_hardening.seal.keys import Verifier
from orthanc_hardening.seal.manifest import ManifestReport
from orthanc_hardening.seal.record import Seal, check_seal_matches, verify_seal_signature


class FindingKind(enum.Enum):
    """What a scrub can find."""

    TAMPERED = "tampered"  # the file's bytes, or its seal, do not verify
    MISSING_FILE = "missing-file"  # in the index, no file on disk
    UNSEALED = "unsealed"  # in the index and on disk, no seal
    ORPHAN_FILE = "orphan-file"  # on disk, not in the index
    ORPHAN_SEAL = "orphan-seal"  # a stored seal whose attachment is not in the index
    MANIFEST_MISMATCH = "manifest-mismatch"  # a study differs from its signed manifest


@dataclass(frozen=True, slots=True)
class Finding:
    """One finding, naming the attachment, instance or study it is about (never patient data)."""

    kind: FindingKind
    detail: str
    uuid: str = ""
    content_type: int = 0
    instance_id: str = ""
    study_id: str = ""
    sop_instance_uid: str = ""

    def to_dict(self) -> dict[str, Any]:
        body = asdict(self)
        body["kind"] = self.kind.value
        return body

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Finding:
        """Rebuild a persisted finding.

        Raises:
            ValueError: not a finding (the scrub state is corrupt).
        """
        try:
            return cls(kind=FindingKind(raw["kind"]), detail=str(raw["detail"]), uuid=str(raw.get("uuid", "")),
                       content_type=int(raw.get("content_type", 0)), instance_id=str(raw.get("instance_id", "")),
                       study_id=str(raw.get("study_id", "")), sop_instance_uid=str(raw.get("sop_instance_uid", "")))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a scrub finding: {exc}") from exc


@dataclass(frozen=True, slots=True)
class IndexedAttachment:
    """One attachment as Orthanc's index lists it."""

    uuid: str
    content_type: int
    instance_id: str
    study_id: str = ""
    sop_instance_uid: str = ""

    @property
    def key(self) -> tuple[str, int]:
        return (self.uuid, self.content_type)


def _about(attachment: IndexedAttachment, kind: FindingKind, detail: str) -> Finding:
    return Finding(kind, detail, uuid=attachment.uuid, content_type=attachment.content_type,
                   instance_id=attachment.instance_id, study_id=attachment.study_id,
                   sop_instance_uid=attachment.sop_instance_uid)


@dataclass(frozen=True, slots=True)
class ScrubPlan:
    """The files to read (in order) and the findings that need no read."""

    to_read: tuple[IndexedAttachment, ...]
    findings: tuple[Finding, ...]
    total: int  # every attachment of the index with a seal and a file, read before or not

    @property
    def remaining(self) -> int:
        return len(self.to_read)


def plan_scrub(
    attachments: Iterable[IndexedAttachment],
    sealed: Iterable[tuple[str, int]],
    on_disk: Iterable[str],
    done: Iterable[tuple[str, int]] = (),
) -> ScrubPlan:
    """Compare index, seals and disk; list what must still be read.

    Args:
        attachments: every attachment of Orthanc's index.
        sealed: ``(uuid, content type)`` of every seal in state ``stored``.
        on_disk: the attachment uuids found in the storage directory.
        done: attachments already read in this scrub run (a resumed run skips them).

    Returns:
        The plan; ``to_read`` is sorted by uuid so that a resumed run goes on in the same order.
    """
    indexed = {a.key: a for a in attachments}
    sealed_keys = set(sealed)
    disk = set(on_disk)
    finished = set(done)
    indexed_uuids = {uuid for uuid, _type in indexed}
    findings: list[Finding] = []
    to_read: list[IndexedAttachment] = []
    total = 0
    for key in sorted(indexed):
        attachment = indexed[key]
        if attachment.uuid not in disk:
            findings.append(_about(attachment, FindingKind.MISSING_FILE,
                                   f"instance {attachment.instance_id}: attachment {attachment.uuid} "
                                   f"(type {attachment.content_type}) is in the index but its file is missing"))
            continue
        if key not in sealed_keys:
            findings.append(_about(attachment, FindingKind.UNSEALED,
                                   f"instance {attachment.instance_id}: attachment {attachment.uuid} "
                                   f"(type {attachment.content_type}) has no seal"))
            continue
        total += 1
        if key not in finished:
            to_read.append(attachment)
    for uuid in sorted(disk - indexed_uuids):
        findings.append(Finding(FindingKind.ORPHAN_FILE, f"file {uuid} is in the storage directory but not in "
                                "Orthanc's index", uuid=uuid))
    for uuid, content_type in sorted(sealed_keys):
        if uuid not in indexed_uuids and uuid not in disk:
            findings.append(Finding(FindingKind.ORPHAN_SEAL, f"seal of attachment {uuid} (type {content_type}): "
                                    "no such attachment in the index nor on disk", uuid=uuid,
                                    content_type=content_type))
        elif uuid not in indexed_uuids:
            findings.append(Finding(FindingKind.ORPHAN_SEAL, f"seal of attachment {uuid} (type {content_type}): "
                                    "the attachment is not in Orthanc's index", uuid=uuid, content_type=content_type))
    return ScrubPlan(tuple(to_read), tuple(findings), total)


def inspect_file(attachment: IndexedAttachment, sha256: str, size: int, seal: Seal | None,
                 keyring: Verifier, signature_known: bool = False) -> Finding | None:
    """Judge one file read from disk against its seal; never raises (a report needs every finding).

    Args:
        attachment: the attachment as the index lists it.
        sha256: hex SHA-256 of the file's bytes.
        size: the file's size.
        seal: its seal (``None`` when the seal disappeared since planning).
        keyring: the trusted keys.
        signature_known: the seal's exact record verified before (the signature cache says so):
            its signature is not checked again; size, digest, place and identity still are.

    Returns:
        ``None`` when the file verifies, else a ``tampered`` (or ``unsealed``) finding.
    """
    if seal is None:
        return _about(attachment, FindingKind.UNSEALED, f"attachment {attachment.uuid} has no seal")
    try:
        check_seal_matches(seal, attachment.uuid, attachment.content_type, sha256, size)
        if not signature_known:
            verify_seal_signature(seal, keyring)
    except UnknownKeyError as exc:
        return _about(attachment, FindingKind.TAMPERED, f"seal signed by an untrusted key: {exc}")
    except IntegrityError as exc:
        return _about(attachment, FindingKind.TAMPERED, str(exc))
    if (attachment.sop_instance_uid and seal.sop_instance_uid
            and not hmac.compare_digest(attachment.sop_instance_uid.encode(), seal.sop_instance_uid.encode())):
        return _about(attachment, FindingKind.TAMPERED, f"instance {attachment.instance_id}: the index says SOP "
                      f"{attachment.sop_instance_uid}, its seal binds SOP {seal.sop_instance_uid}")
    return None


def manifest_findings(report: ManifestReport) -> list[Finding]:
    """One ``manifest-mismatch`` finding per problem of a manifest report."""
    return [
        Finding(FindingKind.MANIFEST_MISMATCH, f"study {report.study_id}: {problem.kind.value}: {problem.detail}",
                instance_id=problem.instance_id, study_id=report.study_id, sop_instance_uid=problem.sop_instance_uid)
        for problem in report.problems
    ]


@dataclass(frozen=True, slots=True)
class Progress:
    """How far a scrub got: files and bytes, rate and estimated time left."""

    done: int
    total: int
    bytes_done: int
    elapsed_seconds: float

    @property
    def rate(self) -> float:
        """Files per second (0 before any time passed)."""
        return self.done / self.elapsed_seconds if self.elapsed_seconds > 0 else 0.0

    @property
    def bytes_rate(self) -> float:
        return self.bytes_done / self.elapsed_seconds if self.elapsed_seconds > 0 else 0.0

    @property
    def eta_seconds(self) -> float | None:
        """Seconds left at the current rate; ``None`` when unknown; 0 when finished."""
        if self.done >= self.total:
            return 0.0
        if self.rate <= 0:
            return None
        return (self.total - self.done) / self.rate

    @property
    def percent(self) -> float:
        return 100.0 if self.total == 0 else round(100.0 * self.done / self.total, 1)

    def to_dict(self) -> dict[str, Any]:
        eta = self.eta_seconds
        return {"done": self.done, "total": self.total, "percent": self.percent, "bytes": self.bytes_done,
                "elapsed_seconds": round(self.elapsed_seconds, 3), "rate_files_per_second": round(self.rate, 2),
                "rate_mb_per_second": round(self.bytes_rate / 1e6, 2),
                "eta_seconds": None if eta is None else round(eta, 1)}


def count_by_kind(findings: Sequence[Finding]) -> dict[str, int]:
    """Number of findings of each kind (every kind listed, zeros included)."""
    counts = {kind.value: 0 for kind in FindingKind}
    for finding in findings:
        counts[finding.kind.value] += 1
    return counts


__all__ = [
    "Finding",
    "FindingKind",
    "IndexedAttachment",
    "Progress",
    "ScrubPlan",
    "count_by_kind",
    "inspect_file",
    "manifest_findings",
    "plan_scrub",
]


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
