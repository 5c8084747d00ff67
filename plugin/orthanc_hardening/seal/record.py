"""The seal record: a signed statement over one stored attachment's exact bytes and identity.

DESIGN.md §6. The signed bytes are ``SEAL_CONTEXT`` followed by the canonical encoding of
every field except ``signature`` (sorted-key compact JSON, ASCII). The context prefix keeps a
seal signature from ever being accepted as another kind of record signed by the same key
(audit checkpoints, study manifests). Changing any field or the encoding changes ``version``.
No I/O here: callers pass bytes, the key ring and ``now``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple, ParamSpec

from orthanc_hardening.canonical import canonical_json
from orthanc_hardening.errors import SealInvalidError, SealMismatchError
from orthanc_hardening.seal.identity import NO_IDENTITY, InstanceIdentity
from orthanc_hardening.seal.keys import SigningKey, Verifier
from orthanc_hardening.timefmt import format_time

_P = ParamSpec("_P")

VERSION = 1
SEAL_CONTEXT = b"orthanc-hardening/seal/v1\x00"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_KEY_ID = re.compile(r"^[0-9a-f]{16}$")
_SEALED_AT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{1,6}Z$")
_FIELDS = (
    "version", "key_id", "uuid", "content_type", "sha256", "size", "study_uid", "series_uid",
    "sop_instance_uid", "patient_id", "index_tags_sha256", "sealed_at", "sealed_after_ingest", "signature",
)


@dataclass(frozen=True, slots=True)
class Seal:
    """One signed seal (DESIGN.md §6)."""

    version: int
    key_id: str
    uuid: str
    content_type: int
    sha256: str
    size: int
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    patient_id: str
    index_tags_sha256: str
    sealed_at: str
    sealed_after_ingest: bool
    signature: str  # base64

    def signed_bytes(self) -> bytes:
        """The exact bytes the signature covers."""
        return SEAL_CONTEXT + canonical(self)

    def to_dict(self) -> dict[str, Any]:
        # Every field is a scalar: no need for dataclasses.asdict's recursive deep copy.
        return {name: getattr(self, name) for name in _FIELDS}

    def to_bytes(self) -> bytes:
        """Canonical JSON of the whole record, signature included (for storage)."""
        return canonical_json(self.to_dict())

    @property
    def identity(self) -> InstanceIdentity:
        return InstanceIdentity(self.study_uid, self.series_uid, self.sop_instance_uid, self.patient_id,
                                self.index_tags_sha256)

    @classmethod
    def from_dict(cls, raw: Any) -> Seal:
        """Build a seal from its dict form, validating every field.

        Raises:
            SealInvalidError: a field is missing, extra, of the wrong type or malformed.
        """
        if not isinstance(raw, dict):
            raise SealInvalidError("a seal is a JSON object")
        if set(raw) != set(_FIELDS):
            missing = sorted(set(_FIELDS) - set(raw))
            extra = sorted(set(raw) - set(_FIELDS))
            raise SealInvalidError(f"seal fields wrong (missing {missing}, unexpected {extra})")
        _expect(type(raw["version"]) is int and raw["version"] == VERSION,
                f"unsupported seal version {raw['version']!r}")
        for name in ("key_id", "uuid", "sha256", "study_uid", "series_uid", "sop_instance_uid", "patient_id",
                     "index_tags_sha256", "sealed_at", "signature"):
            _expect(isinstance(raw[name], str), f"seal field {name} must be a string")
        for name in ("content_type", "size"):
            _expect(type(raw[name]) is int and raw[name] >= 0, f"seal field {name} must be a non-negative integer")
        _expect(type(raw["sealed_after_ingest"]) is bool, "seal field sealed_after_ingest must be a boolean")
        _expect(bool(_KEY_ID.match(raw["key_id"])), "seal key_id must be 16 hex digits")
        _expect(bool(_HEX64.match(raw["sha256"])), "seal sha256 must be 64 hex digits")
        _expect(raw["index_tags_sha256"] == "" or bool(_HEX64.match(raw["index_tags_sha256"])),
                "seal index_tags_sha256 must be 64 hex digits or empty")
        _expect(bool(raw["uuid"]), "seal uuid must not be empty")
        sealed_at = raw["sealed_at"]
        try:
            if not _SEALED_AT.match(sealed_at):
                raise ValueError(sealed_at)
            parsed = datetime.fromisoformat(sealed_at[:-1])
        except ValueError as exc:
            raise SealInvalidError("seal sealed_at must be UTC like 2026-01-01T00:00:00.000000Z") from exc
        _expect(parsed.year >= 2000, "seal sealed_at is implausible")
        try:
            base64.b64decode(raw["signature"], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise SealInvalidError("seal signature must be base64") from exc
        return cls(**{name: raw[name] for name in _FIELDS})

    @classmethod
    def from_bytes(cls, data: bytes) -> Seal:
        """Parse a stored seal.

        Raises:
            SealInvalidError: not JSON or not a well-formed seal.
        """
        try:
            raw = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise SealInvalidError("seal record is not JSON") from exc
        return cls.from_dict(raw)

    @property
    def signature_bytes(self) -> bytes:
        return base64.b64decode(self.signature)


_UNSIGNED_FIELDS = tuple(name for name in _FIELDS if name != "signature")


def _expect(condition: bool, problem: str) -> None:
    if not condition:
        raise SealInvalidError(problem)


def canonical(seal: Seal) -> bytes:
    """Sorted-key compact ASCII JSON of every field but ``signature``."""
    body = {name: getattr(seal, name) for name in _UNSIGNED_FIELDS}
    return canonical_json(body)


class SignedSeal(NamedTuple):
    """A seal just signed, with the bytes made on the way (so that nobody encodes them again)."""

    seal: Seal
    signed: bytes  # ``seal.signed_bytes()``: what the signature covers
    signature: bytes  # ``seal.signature_bytes``: the raw signature
    record: bytes  # ``seal.to_bytes()``: the record as the seal store keeps it


def sign_attachment(
    uuid: str,
    content_type: int,
    data: bytes,
    identity: InstanceIdentity,
    signer: SigningKey,
    now: datetime,
    sealed_after_ingest: bool = False,
    sha256: str | None = None,
) -> SignedSeal:
    """Seal one attachment's bytes: the seal, with the signed bytes, the raw signature and the record.

    The fields are encoded once: the signed bytes are the canonical encoding of every field but
    ``signature``, the record that of every field (exactly ``Seal.signed_bytes`` and
    ``Seal.to_bytes`` of the returned seal).

    Args:
        uuid: Orthanc's attachment uuid (where the bytes are stored).
        content_type: Orthanc's content type (1 DICOM, 3 DICOM until pixel data, …).
        data: the exact stored bytes.
        identity: the instance identity parsed from those bytes (``NO_IDENTITY`` if not DICOM).
        signer: the current key.
        now: the sealing time (UTC).
        sealed_after_ingest: true when sealing data that was stored before the plugin sealed.
        sha256: the hex SHA-256 of ``data`` when the caller already computed it.

    Raises:
        ValueError: an empty uuid, a negative content type or a naive ``now`` (caller bugs).
    """
    if not uuid or content_type < 0:
        raise ValueError("uuid and content_type are required")
    fields: dict[str, Any] = {
        "version": VERSION,
        "key_id": signer.key_id,
        "uuid": uuid,
        "content_type": int(content_type),
        "sha256": sha256 or hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "study_uid": identity.study_uid,
        "series_uid": identity.series_uid,
        "sop_instance_uid": identity.sop_instance_uid,
        "patient_id": identity.patient_id,
        "index_tags_sha256": identity.index_tags_sha256,
        "sealed_at": format_time(now),
        "sealed_after_ingest": sealed_after_ingest,
    }
    signed = SEAL_CONTEXT + canonical_json(fields)
    signature = signer.sign(signed)
    fields["signature"] = base64.b64encode(signature).decode("ascii")
    return SignedSeal(Seal(**fields), signed, signature, canonical_json(fields))


def _seal_only(sign: Callable[_P, SignedSeal]) -> Callable[_P, Seal]:
    def seal(*args: _P.args, **kwargs: _P.kwargs) -> Seal:
        return sign(*args, **kwargs).seal

    return seal


seal_attachment = _seal_only(sign_attachment)
"""``sign_attachment``'s seal alone (same arguments)."""

def verify_seal_signature(seal: Seal, keyring: Verifier) -> None:
    """Verify only the seal's signature (not the bytes it covers).

    Raises:
        UnknownKeyError: the key is neither current nor trusted.
        SealInvalidError: the signature does not verify.
    """
    keyring.verify(seal.key_id, seal.signed_bytes(), seal.signature_bytes)


def check_seal_place(seal: Seal, uuid: str, content_type: int, size: int) -> None:
    """Check that a seal is about this attachment and its size (not yet its bytes).

    Raises:
        SealMismatchError: the seal belongs to another attachment, or the size differs.
    """
    if seal.uuid != uuid or seal.content_type != content_type:
        raise SealMismatchError(
            f"attachment {uuid} (type {content_type}) carries the seal of {seal.uuid} (type {seal.content_type})"
        )
    if size != seal.size:
        raise SealMismatchError(f"attachment {uuid}: {size} bytes stored, {seal.size} sealed")


def check_seal_matches(seal: Seal, uuid: str, content_type: int, sha256: str, size: int) -> None:
    """Check that a seal is about these bytes at this place.

    Raises:
        SealMismatchError: the seal belongs to another attachment, or the bytes differ.
    """
    check_seal_place(seal, uuid, content_type, size)
    if not hmac.compare_digest(sha256, seal.sha256):
        raise SealMismatchError(f"attachment {uuid}: stored bytes do not match the seal (SHA-256 differs)")


def verify_seal(seal: Seal, data: bytes, uuid: str, keyring: Verifier, content_type: int | None = None,
                sha256: str | None = None) -> None:
    """Verify that ``seal`` is a valid, trusted seal over ``data`` stored as ``uuid``.

    Args:
        seal: the stored seal.
        data: the bytes read from storage.
        uuid: where they were read from.
        keyring: the trusted keys.
        content_type: the content type read (defaults to the seal's).
        sha256: hex SHA-256 of ``data`` when already computed.

    Raises:
        SealMismatchError: the bytes or the place differ from the seal.
        UnknownKeyError: the seal's key is neither current nor trusted.
        SealInvalidError: the signature does not verify.
    """
    digest = sha256 or hashlib.sha256(data).hexdigest()
    check_seal_matches(seal, uuid, seal.content_type if content_type is None else content_type, digest, len(data))
    verify_seal_signature(seal, keyring)


def check_identity(seal: Seal, expected: InstanceIdentity) -> None:
    """Check that a seal's identity fields are those ``expected`` (e.g. from Orthanc's index).

    Empty expected fields are not compared.

    Raises:
        SealMismatchError: a UID, the patient id or the index-tag digest differs.
    """
    for name in ("sop_instance_uid", "series_uid", "study_uid", "patient_id", "index_tags_sha256"):
        want = getattr(expected, name)
        got = getattr(seal, name)
        if want and not hmac.compare_digest(want.encode(), got.encode()):
            raise SealMismatchError(f"attachment {seal.uuid}: sealed {name} differs from what Orthanc's index holds")


__all__ = [
    "NO_IDENTITY",
    "SEAL_CONTEXT",
    "VERSION",
    "InstanceIdentity",
    "Seal",
    "SignedSeal",
    "canonical",
    "check_identity",
    "check_seal_matches",
    "check_seal_place",
    "format_time",
    "seal_attachment",
    "sign_attachment",
    "verify_seal",
    "verify_seal_signature",
]
