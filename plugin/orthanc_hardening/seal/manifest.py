"""Signed study manifests: an RFC 6962 Merkle tree over the seals of a study's instances.

DESIGN.md §6. A manifest says "this study held exactly these instances, with these bytes":

* one **leaf** per instance, the instance's DICOM-file seal reduced to its identity and digest
  fields (``ManifestLeaf``); the leaves are sorted by SOP Instance UID (then attachment uuid);
* the leaf *input* is the canonical encoding of those fields: sorted-key compact ASCII JSON of
  ``{"index_tags_sha256", "patient_id", "series_uid", "sha256", "sop_instance_uid", "study_uid",
  "uuid"}`` (``leaf_bytes``);
* the **root** is the RFC 6962 §2.1 Merkle Tree Hash of the leaf inputs: ``leaf_hash(d) =
  SHA-256(0x00 || d)``, ``node_hash(l, r) = SHA-256(0x01 || l || r)``, the tree split at the
  largest power of two smaller than ``n``; the empty tree hashes to ``SHA-256("")``;
* per series, the same tree over that series' leaves (``SeriesRoot``), so a report can say
  which series changed;
* the record is signed over ``MANIFEST_CONTEXT`` + the canonical JSON of every field but the
  signature, with the same key ring as the seals (the context keeps a manifest signature from
  ever passing as a seal or an audit checkpoint).

``inspect_manifest`` compares a manifest with the study as it is now (the index's instances, their
seals, whether their files exist) and names every problem; ``verify_manifest`` raises on the first
report that is not clean. No I/O here: callers pass the seals, the current instances, the key ring
and ``now``.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from orthanc_hardening.canonical import canonical_json
from orthanc_hardening.errors import (
    IntegrityError,
    SealInvalidError,
    SealMismatchError,
    UnknownKeyError,
)
from orthanc_hardening.seal.keys import SigningKey, Verifier
from orthanc_hardening.seal.record import Seal
from orthanc_hardening.timefmt import format_time

VERSION = 1
MANIFEST_CONTEXT = b"orthanc-hardening/manifest/v1\x00"
LEAF_PREFIX = b"\x00"  # RFC 6962 §2.1: leaf hashes are SHA-256(0x00 || data)
NODE_PREFIX = b"\x01"  # RFC 6962 §2.1: interior nodes are SHA-256(0x01 || left || right)
DICOM_CONTENT_TYPE = 1
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_KEY_ID = re.compile(r"^[0-9a-f]{16}$")
_LEAF_FIELDS = ("sop_instance_uid", "series_uid", "study_uid", "patient_id", "uuid", "sha256", "index_tags_sha256")
_FIELDS = (
    "version", "key_id", "study_uid", "study_id", "patient_id", "instance_count", "root", "series", "leaves",
    "created_at", "signature",
)


# -- RFC 6962 Merkle tree hash ------------------------------------------------------------------


def leaf_hash(data: bytes) -> bytes:
    """RFC 6962 §2.1 leaf hash: ``SHA-256(0x00 || data)``."""
    return hashlib.sha256(LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 6962 §2.1 interior node hash: ``SHA-256(0x01 || left || right)``."""
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """The RFC 6962 Merkle Tree Hash of ``leaves`` (the leaf *inputs*, not their hashes).

    Computed bottom-up: each level pairs nodes left to right and carries an odd last node up
    unchanged. This equals the recursive definition (split at the largest power of two smaller
    than ``n``) because the left subtree of that split is always complete.

    Args:
        leaves: the leaf inputs in tree order.

    Returns:
        The 32-byte root; ``SHA-256(b"")`` for an empty list (RFC 6962 §2.1).
    """
    if not leaves:
        return hashlib.sha256(b"").digest()
    level = [leaf_hash(leaf) for leaf in leaves]
    while len(level) > 1:
        paired = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


# -- manifest records ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ManifestLeaf:
    """One instance in a manifest: the identity and digest fields of its DICOM-file seal."""

    sop_instance_uid: str
    series_uid: str
    study_uid: str
    patient_id: str
    uuid: str
    sha256: str
    index_tags_sha256: str

    @classmethod
    def of_seal(cls, seal: Seal) -> ManifestLeaf:
        """The leaf of an instance's DICOM-file seal."""
        return cls(**{name: getattr(seal, name) for name in _LEAF_FIELDS})

    def leaf_bytes(self) -> bytes:
        """The canonical leaf input: sorted-key compact ASCII JSON of the seven fields."""
        # The seven fields are strings: the same bytes as json.dumps(asdict(self), sort_keys=True, ...),
        # without asdict's deep copy (the scrub and every manifest check encode each leaf several times).
        return canonical_json({name: getattr(self, name) for name in _LEAF_FIELDS})

    @property
    def sort_key(self) -> tuple[str, str]:
        return (self.sop_instance_uid, self.uuid)

    @classmethod
    def from_dict(cls, raw: Any) -> ManifestLeaf:
        """Validate a leaf's dict form.

        Raises:
            SealInvalidError: a field is missing, extra or malformed.
        """
        if not isinstance(raw, dict) or set(raw) != set(_LEAF_FIELDS):
            raise SealInvalidError("a manifest leaf has exactly the fields " + ", ".join(_LEAF_FIELDS))
        if not all(isinstance(raw[name], str) for name in _LEAF_FIELDS):
            raise SealInvalidError("manifest leaf fields are strings")
        _expect(bool(_HEX64.match(raw["sha256"])), "manifest leaf sha256 must be 64 hex digits")
        _expect(bool(raw["sop_instance_uid"]) and bool(raw["uuid"]), "manifest leaf needs a SOP UID and a uuid")
        return cls(**raw)


@dataclass(frozen=True, slots=True)
class SeriesRoot:
    """The Merkle root of one series' leaves within a manifest."""

    series_uid: str
    instance_count: int
    root: str


@dataclass(frozen=True, slots=True)
class Manifest:
    """A signed study manifest (see module docstring)."""

    version: int
    key_id: str
    study_uid: str
    study_id: str
    patient_id: str
    instance_count: int
    root: str
    series: tuple[SeriesRoot, ...]
    leaves: tuple[ManifestLeaf, ...]
    created_at: str
    signature: str  # base64

    def to_dict(self) -> dict[str, Any]:
        body = asdict(self)
        body["series"] = [asdict(s) for s in self.series]
        body["leaves"] = [asdict(leaf) for leaf in self.leaves]
        return body

    def signed_bytes(self) -> bytes:
        """The exact bytes the signature covers: context + canonical JSON without ``signature``."""
        body = self.to_dict()
        del body["signature"]
        return MANIFEST_CONTEXT + _canonical(body)

    def to_bytes(self) -> bytes:
        """Canonical JSON of the whole record, signature included (for storage)."""
        return _canonical(self.to_dict())

    @property
    def signature_bytes(self) -> bytes:
        return base64.b64decode(self.signature)

    @classmethod
    def from_dict(cls, raw: Any) -> Manifest:
        """Build a manifest from its dict form, validating every field and the root.

        Raises:
            SealInvalidError: a field is missing, extra or malformed, or the roots, counts or leaf
                order do not follow from the leaves.
        """
        if not isinstance(raw, dict):
            raise SealInvalidError("a manifest is a JSON object")
        if set(raw) != set(_FIELDS):
            missing = sorted(set(_FIELDS) - set(raw))
            extra = sorted(set(raw) - set(_FIELDS))
            raise SealInvalidError(f"manifest fields wrong (missing {missing}, unexpected {extra})")
        _expect(type(raw["version"]) is int and raw["version"] == VERSION,
                f"unsupported manifest version {raw['version']!r}")
        for name in ("key_id", "study_uid", "study_id", "patient_id", "root", "created_at", "signature"):
            _expect(isinstance(raw[name], str), f"manifest field {name} must be a string")
        _expect(bool(_KEY_ID.match(raw["key_id"])), "manifest key_id must be 16 hex digits")
        _expect(bool(_HEX64.match(raw["root"])), "manifest root must be 64 hex digits")
        _expect(type(raw["instance_count"]) is int and raw["instance_count"] >= 0,
                "manifest instance_count must be a non-negative integer")
        _expect(isinstance(raw["leaves"], list) and isinstance(raw["series"], list),
                "manifest leaves and series are lists")
        try:
            datetime.strptime(raw["created_at"], "%Y-%m-%dT%H:%M:%S.%fZ")
            base64.b64decode(raw["signature"], validate=True)
        except (ValueError, binascii.Error) as exc:
            raise SealInvalidError("manifest created_at or signature is malformed") from exc
        leaves = tuple(ManifestLeaf.from_dict(leaf) for leaf in raw["leaves"])
        series = []
        for item in raw["series"]:
            _expect(isinstance(item, dict) and set(item) == {"series_uid", "instance_count", "root"},
                    "manifest series entries have series_uid, instance_count and root")
            series.append(SeriesRoot(str(item["series_uid"]), int(item["instance_count"]), str(item["root"])))
        manifest = cls(
            version=raw["version"], key_id=raw["key_id"], study_uid=raw["study_uid"], study_id=raw["study_id"],
            patient_id=raw["patient_id"], instance_count=raw["instance_count"], root=raw["root"],
            series=tuple(series), leaves=leaves, created_at=raw["created_at"], signature=raw["signature"],
        )
        check_structure(manifest)
        return manifest

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        """Parse a stored manifest.

        Raises:
            SealInvalidError: not JSON, or not a well-formed manifest.
        """
        try:
            raw = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise SealInvalidError("manifest is not JSON") from exc
        return cls.from_dict(raw)


def _canonical(body: Any) -> bytes:
    return canonical_json(body)


def _expect(condition: bool, problem: str) -> None:
    if not condition:
        raise SealInvalidError(problem)


def tree_root(leaves: Iterable[ManifestLeaf]) -> str:
    """Hex RFC 6962 root over ``leaves`` (already in tree order)."""
    return merkle_root([leaf.leaf_bytes() for leaf in leaves]).hex()


def series_roots(leaves: Sequence[ManifestLeaf]) -> tuple[SeriesRoot, ...]:
    """One ``SeriesRoot`` per series, sorted by series UID, leaves kept in manifest order."""
    by_series: dict[str, list[ManifestLeaf]] = {}
    for leaf in leaves:
        by_series.setdefault(leaf.series_uid, []).append(leaf)
    return tuple(SeriesRoot(uid, len(items), tree_root(items)) for uid, items in sorted(by_series.items()))


def check_structure(manifest: Manifest) -> None:
    """Check that the leaves are sorted and unique, and that counts and roots follow from them.

    Raises:
        SealInvalidError: the manifest is internally inconsistent.
    """
    keys = [leaf.sort_key for leaf in manifest.leaves]
    _expect(keys == sorted(keys) and len(set(keys)) == len(keys), "manifest leaves are not sorted and unique")
    _expect(manifest.instance_count == len(manifest.leaves), "manifest instance_count differs from its leaves")
    _expect(hmac.compare_digest(manifest.root, tree_root(manifest.leaves)), "manifest root does not match its leaves")
    _expect(manifest.series == series_roots(manifest.leaves), "manifest series roots do not match its leaves")


def build_manifest(study_uid: str, study_id: str, seals: Iterable[Seal], signer: SigningKey, now: datetime) -> Manifest:
    """Sign a manifest over the DICOM-file seals of a study's instances.

    Args:
        study_uid: the Study Instance UID.
        study_id: Orthanc's id of the study.
        seals: the seals of the instances' DICOM files (content type 1); other seals are ignored.
        signer: the current key.
        now: creation time (timezone-aware).

    Returns:
        The signed manifest.

    Raises:
        ValueError: two seals for one SOP Instance UID and uuid, or a naive ``now`` (caller bugs).
    """
    leaves = sorted(
        (ManifestLeaf.of_seal(s) for s in seals if s.content_type == DICOM_CONTENT_TYPE), key=lambda x: x.sort_key
    )
    if len({leaf.sort_key for leaf in leaves}) != len(leaves):
        raise ValueError("duplicate seals in a manifest")
    patients = sorted({leaf.patient_id for leaf in leaves})
    unsigned = Manifest(
        version=VERSION,
        key_id=signer.key_id,
        study_uid=study_uid,
        study_id=study_id,
        patient_id=patients[0] if len(patients) == 1 else "",
        instance_count=len(leaves),
        root=tree_root(leaves),
        series=series_roots(leaves),
        leaves=tuple(leaves),
        created_at=format_time(now),
        signature="",
    )
    signature = base64.b64encode(signer.sign(unsigned.signed_bytes())).decode("ascii")
    return Manifest(**{**{name: getattr(unsigned, name) for name in _FIELDS}, "signature": signature})


def verify_manifest_signature(manifest: Manifest, keyring: Verifier) -> None:
    """Verify the manifest's signature and internal consistency.

    Raises:
        UnknownKeyError: the key is neither current nor trusted.
        SealInvalidError: the signature does not verify, or the manifest is inconsistent.
    """
    check_structure(manifest)
    keyring.verify(manifest.key_id, manifest.signed_bytes(), manifest.signature_bytes)


# -- comparing a manifest with the study as it is now -------------------------------------------


class ProblemKind(enum.Enum):
    """What can be wrong between a manifest and the study it describes."""

    BAD_SIGNATURE = "bad-signature"
    UNKNOWN_KEY = "unknown-key"
    MISSING_FROM_INDEX = "missing-from-index"  # in the manifest, no longer in Orthanc's index
    MISSING_FROM_DISK = "missing-from-disk"  # in the index, but its file is gone
    NOT_IN_MANIFEST = "not-in-manifest"  # in the index, not in the manifest
    SWAPPED = "swapped"  # in this study's index, sealed as another study's instance
    CHANGED = "changed"  # same SOP Instance UID, other bytes or identity than the manifest says
    UNSEALED = "unsealed"  # in the index without a seal


@dataclass(frozen=True, slots=True)
class CurrentInstance:
    """One instance of the study as Orthanc's index lists it now.

    Attributes:
        instance_id: Orthanc's instance id.
        sop_instance_uid: the SOP Instance UID the index holds.
        series_uid: the Series Instance UID the index holds.
        uuid: the uuid of the DICOM attachment in the index.
        seal: the seal stored for that attachment, or ``None``.
        file_present: whether the attachment's file exists (``None``: not checked).
    """

    instance_id: str
    sop_instance_uid: str
    series_uid: str
    uuid: str
    seal: Seal | None
    file_present: bool | None = None


@dataclass(frozen=True, slots=True)
class ManifestProblem:
    """One problem, naming the instance it is about."""

    kind: ProblemKind
    sop_instance_uid: str = ""
    instance_id: str = ""
    series_uid: str = ""
    detail: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind.value, "sop_instance_uid": self.sop_instance_uid, "instance_id": self.instance_id,
                "series_uid": self.series_uid, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class ManifestReport:
    """The verification of a manifest against the study now; ``ok`` when nothing is wrong."""

    study_id: str
    study_uid: str
    root: str
    instance_count: int
    checked: int
    problems: tuple[ManifestProblem, ...]
    series: dict[str, str] = field(default_factory=dict)  # series UID -> "ok" or "problem"

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "study_id": self.study_id,
            "study_uid": self.study_uid,
            "root": self.root,
            "instance_count": self.instance_count,
            "checked": self.checked,
            "problems": [p.to_dict() for p in self.problems],
            "series": dict(self.series),
        }


def inspect_manifest(
    manifest: Manifest, current: Iterable[CurrentInstance], keyring: Verifier
) -> ManifestReport:
    """Compare a manifest with the study now and name every problem; never raises on bad data.

    Args:
        manifest: the stored manifest.
        current: the study's instances as the index lists them now, with their seals.
        keyring: the trusted keys.

    Returns:
        The report; ``report.ok`` when the signature verifies and the study is exactly as signed.
    """
    problems: list[ManifestProblem] = []
    try:
        verify_manifest_signature(manifest, keyring)
    except UnknownKeyError as exc:
        problems.append(ManifestProblem(ProblemKind.UNKNOWN_KEY, detail=str(exc)))
    except IntegrityError as exc:
        problems.append(ManifestProblem(ProblemKind.BAD_SIGNATURE, detail=str(exc)))

    signed = {leaf.sop_instance_uid: leaf for leaf in manifest.leaves}
    seen: set[str] = set()
    instances = sorted(current, key=lambda c: (c.sop_instance_uid, c.instance_id))
    for instance in instances:
        seen.add(instance.sop_instance_uid)
        problems.extend(_instance_problems(manifest, signed.get(instance.sop_instance_uid), instance))
    for uid, leaf in sorted(signed.items()):
        if uid not in seen:
            problems.append(ManifestProblem(ProblemKind.MISSING_FROM_INDEX, uid, "", leaf.series_uid,
                                            f"instance {uid} is in the signed manifest but not in Orthanc's index"))
    bad_series = {p.series_uid for p in problems if p.series_uid}
    all_series = {leaf.series_uid for leaf in manifest.leaves} | {c.series_uid for c in instances}
    series = {uid: ("problem" if uid in bad_series else "ok") for uid in sorted(all_series)}
    return ManifestReport(
        study_id=manifest.study_id, study_uid=manifest.study_uid, root=manifest.root,
        instance_count=manifest.instance_count, checked=len(instances), problems=tuple(problems), series=series,
    )


def _instance_problems(manifest: Manifest, leaf: ManifestLeaf | None, instance: CurrentInstance
                       ) -> list[ManifestProblem]:
    def problem(kind: ProblemKind, detail: str) -> ManifestProblem:
        return ManifestProblem(kind, instance.sop_instance_uid, instance.instance_id, instance.series_uid, detail)

    found: list[ManifestProblem] = []
    seal = instance.seal
    elsewhere = seal is not None and seal.study_uid != manifest.study_uid
    if seal is not None and (elsewhere or seal.sop_instance_uid != instance.sop_instance_uid):
        found.append(problem(ProblemKind.SWAPPED,
                             f"instance {instance.instance_id} is listed in study {manifest.study_uid} but its seal "
                             f"binds SOP {seal.sop_instance_uid} of study {seal.study_uid}"))
    if leaf is None:
        found.append(problem(ProblemKind.NOT_IN_MANIFEST,
                             f"instance {instance.sop_instance_uid} is in Orthanc's index but not in the "
                             "signed manifest"))
    elif seal is not None and ManifestLeaf.of_seal(seal) != leaf:
        found.append(problem(ProblemKind.CHANGED,
                             f"instance {instance.sop_instance_uid} has other bytes or identity than the manifest "
                             f"signed (sealed sha256 {seal.sha256[:16]}…, manifest {leaf.sha256[:16]}…)"))
    elif leaf is not None and instance.uuid and instance.uuid != leaf.uuid:
        found.append(problem(ProblemKind.CHANGED,
                             f"instance {instance.sop_instance_uid} points to attachment {instance.uuid}, "
                             f"the manifest signed {leaf.uuid}"))
    if seal is None:
        found.append(problem(ProblemKind.UNSEALED, f"instance {instance.sop_instance_uid} has no seal"))
    if instance.file_present is False:
        found.append(problem(ProblemKind.MISSING_FROM_DISK,
                             f"the file of instance {instance.sop_instance_uid} ({instance.uuid}) is missing"))
    return found


def verify_manifest(manifest: Manifest, current: Iterable[CurrentInstance], keyring: Verifier) -> None:
    """Verify a manifest against the study now.

    Raises:
        UnknownKeyError: the manifest was signed by a key that is neither current nor trusted.
        SealInvalidError: the signature does not verify or the manifest is inconsistent.
        SealMismatchError: the study differs from the manifest (the message names every problem).
    """
    report = inspect_manifest(manifest, current, keyring)
    if report.ok:
        return
    kinds = {p.kind for p in report.problems}
    message = "; ".join(p.detail for p in report.problems)
    if ProblemKind.UNKNOWN_KEY in kinds:
        raise UnknownKeyError(message)
    if ProblemKind.BAD_SIGNATURE in kinds:
        raise SealInvalidError(message)
    raise SealMismatchError(f"study {manifest.study_uid} differs from its signed manifest: {message}")


__all__ = [
    "MANIFEST_CONTEXT",
    "VERSION",
    "CurrentInstance",
    "Manifest",
    "ManifestLeaf",
    "ManifestProblem",
    "ManifestReport",
    "ProblemKind",
    "SeriesRoot",
    "build_manifest",
    "check_structure",
    "inspect_manifest",
    "leaf_hash",
    "merkle_root",
    "node_hash",
    "series_roots",
    "verify_manifest",
    "verify_manifest_signature",
]
