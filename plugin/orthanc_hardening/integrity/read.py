"""Verification of stored bytes on read: hash, seal, signature, and the unsealed policy.

``check_read`` is what the storage read runs on every attachment it serves; ``check_unsealed``
decides what an attachment without a seal means. Both raise; neither does I/O — the shell
reads the file, the seal row and (for an unsealed attachment) when Orthanc received the
instance, and passes them in.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass

from orthanc_hardening.config import UnsealedPolicy
from orthanc_hardening.errors import SealMissingError
from orthanc_hardening.seal.record import Seal, Verifier, check_seal_matches, verify_seal_signature


class SignatureCache:
    """Seal records whose signature already verified, so that a hot read only hashes.

    Keyed by the exact stored record bytes (fields and signature), so a changed row is parsed
    and verified again; the value is the seal parsed from those bytes, so a hot read neither
    parses JSON nor re-encodes the record. Cleared when the key ring changes. Bounded: the
    least recently used records are dropped beyond ``limit`` (about 1.5 KB each).
    """

    def __init__(self, limit: int = 32_768) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        self._verified: OrderedDict[bytes, Seal] = OrderedDict()

    def parse(self, record: bytes) -> Seal:
        """The seal stored as ``record``: the cached one if it verified before, else parsed now.

        Raises:
            SealInvalidError: the record is not a well-formed seal.
        """
        with self._lock:
            seal = self._verified.get(record)
            if seal is not None:
                self._verified.move_to_end(record)
                return seal
        return Seal.from_bytes(record)

    def verify(self, seal: Seal, keyring: Verifier, record: bytes | None = None) -> None:
        """Verify ``seal``'s signature unless this exact record verified before.

        Args:
            seal: the seal.
            keyring: the trusted keys.
            record: the stored bytes ``seal`` was parsed from (defaults to its canonical encoding).

        Raises:
            UnknownKeyError: the key is neither current nor trusted.
            SealInvalidError: the signature does not verify.
        """
        key = seal.to_bytes() if record is None else record
        with self._lock:
            if key in self._verified:
                return
        verify_seal_signature(seal, keyring)
        self._add(key, seal)

    def remember(self, record: bytes, seal: Seal) -> None:
        """Add a seal this process has just signed, as the store holds it (``record``).

        Its first read then needs no signature verification; a row changed in the store has
        other bytes and is verified as usual.
        """
        self._add(record, seal)

    def _add(self, record: bytes, seal: Seal) -> None:
        with self._lock:
            self._verified[record] = seal
            while len(self._verified) > self._limit:
                self._verified.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._verified)

    def clear(self) -> None:
        with self._lock:
            self._verified.clear()


@dataclass(frozen=True, slots=True)
class ReadCheck:
    """What a verified read found: the seal (``None`` when unsealed) and the bytes' SHA-256."""

    seal: Seal | None
    sha256: str

    @property
    def is_sealed(self) -> bool:
        return self.seal is not None


def check_read(
    uuid: str,
    content_type: int,
    data: bytes,
    seal: Seal | None,
    keyring: Verifier,
    cache: SignatureCache | None = None,
    record: bytes | None = None,
) -> ReadCheck:
    """Check bytes read from storage against their seal.

    Args:
        uuid: the attachment uuid read.
        content_type: its content type.
        data: the bytes read.
        seal: its seal row, or ``None`` when there is none (the caller then applies
            ``check_unsealed``).
        keyring: the trusted keys.
        cache: signatures already verified.
        record: the stored bytes ``seal`` was parsed from (the cache key), when known.

    Returns:
        The seal and the bytes' SHA-256.

    Raises:
        SealMismatchError: the bytes, their size or their place differ from the seal.
        UnknownKeyError: the seal's key is neither current nor trusted.
        SealInvalidError: the seal's signature does not verify.
    """
    digest = hashlib.sha256(data).hexdigest()
    if seal is None:
        return ReadCheck(None, digest)
    check_seal_matches(seal, uuid, content_type, digest, len(data))
    if cache is not None:
        cache.verify(seal, keyring, record)
    else:
        verify_seal_signature(seal, keyring)
    return ReadCheck(seal, digest)


def received_before(received_at: str | None, sealing_since: str) -> bool:
    """Whether Orthanc received an instance before sealing began.

    Args:
        received_at: Orthanc's ``ReceptionDate`` metadata (``YYYYMMDDTHHMMSS``, UTC), or ``None``
            when unknown.
        sealing_since: when this plugin first sealed, in the same format.

    Returns:
        True only when both are known and the instance is older than sealing.
    """
    if not received_at or not sealing_since:
        return False
    return received_at[:15] < sealing_since[:15]


def check_unsealed(uuid: str, content_type: int, policy: UnsealedPolicy, is_legacy: bool) -> None:
    """Decide whether an attachment without a seal may be served (enforce mode).

    Args:
        uuid: the attachment.
        content_type: its content type.
        policy: ``Hardening.UnsealedPolicy``.
        is_legacy: the instance was received before sealing began (see ``received_before``).

    Raises:
        SealMissingError: the instance arrived after sealing began (its seal was removed), or
            the policy is ``refuse``.
    """
    if not is_legacy:
        raise SealMissingError(
            f"attachment {uuid} (type {content_type}) has no seal although it was stored after sealing began"
        )
    if policy is UnsealedPolicy.REFUSE:
        raise SealMissingError(
            f"attachment {uuid} (type {content_type}) is unsealed and Hardening.UnsealedPolicy is refuse"
        )
