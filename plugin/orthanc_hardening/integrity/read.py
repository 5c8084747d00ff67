"""Verification of stored bytes on read: hash, seal, signature and the unsealed policy, in one call.

``verify_read`` is what the storage read runs on every attachment it serves: it takes everything
it checks (the bytes, their seal or none, the trusted keys, the unsealed policy and whether the
instance predates sealing) and **raises** on any failure; it returns only a verified result.
No I/O: the shell reads the file, the seal row and, for an unsealed attachment only, what the
index says of the instance (``is_legacy``).

``verify_before_read`` is the part of it that needs no bytes (the seal's place, size and
signature, or the unsealed policy): ``verify_read`` is the bytes' digest and then it, and a
caller whose storage reads of the same attachment follow calls it alone (a synchronous
archive, ``shell/archives.py``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from orthanc_hardening.config import UnsealedPolicy
from orthanc_hardening.integrity.legacy import check_unsealed
from orthanc_hardening.seal.keys import Verifier
from orthanc_hardening.seal.record import Seal, check_seal_matches, check_seal_place, verify_seal_signature


class SealCache(Protocol):
    """Seal records whose signature verified (``stores.signature_cache.SignatureCache``)."""

    def verify_seal(self, seal: Seal, verifier: Verifier, record: bytes | None = None) -> None: ...


@dataclass(frozen=True, slots=True)
class ReadCheck:
    """A verified read: the seal (``None``: legacy data served under ``serve-and-flag``) and SHA-256."""

    seal: Seal | None
    sha256: str

    @property
    def is_sealed(self) -> bool:
        return self.seal is not None


def verify_read(
    uuid: str,
    content_type: int,
    data: bytes,
    seal: Seal | None,
    keyring: Verifier,
    policy: UnsealedPolicy,
    is_legacy: Callable[[], bool],
    cache: SealCache | None = None,
    record: bytes | None = None,
) -> ReadCheck:
    """Verify bytes read from storage; return only when they may be served.

    Args:
        uuid: the attachment uuid read.
        content_type: its content type.
        data: the bytes read.
        seal: its seal, or ``None`` when the store has none.
        keyring: the trusted keys.
        policy: ``Hardening.UnsealedPolicy`` (for an attachment without a seal).
        is_legacy: whether the instance was received before sealing began; asked only for an
            attachment without a seal (it costs an index lookup).
        cache: signatures already verified.
        record: the stored bytes ``seal`` was parsed from (the cache key), when known.

    Returns:
        The seal (or ``None`` for legacy data the policy serves) and the bytes' SHA-256.

    Raises:
        SealMismatchError: the bytes, their size or their place differ from the seal.
        UnknownKeyError: the seal's key is neither current nor trusted.
        SealInvalidError: the seal's signature does not verify.
        SealMissingError: no seal, and the data is not legacy or the policy refuses it.
    """
    digest = hashlib.sha256(data).hexdigest()
    if seal is not None:
        check_seal_matches(seal, uuid, content_type, digest, len(data))  # the bytes, before the signature
    return ReadCheck(verify_before_read(uuid, content_type, len(data), seal, keyring, policy, is_legacy, cache,
                                        record), digest)


def verify_before_read(
    uuid: str,
    content_type: int,
    size: int,
    seal: Seal | None,
    keyring: Verifier,
    policy: UnsealedPolicy,
    is_legacy: Callable[[], bool],
    cache: SealCache | None = None,
    record: bytes | None = None,
) -> Seal | None:
    """Everything ``verify_read`` checks but the bytes' digest: place, size, signature, policy.

    It passes no byte: the read that serves them still runs ``verify_read``.

    Args:
        uuid: the attachment uuid.
        content_type: its content type.
        size: the size of its file now.
        seal, keyring, policy, is_legacy, cache, record: as for ``verify_read``.

    Returns:
        The seal, or ``None`` for legacy data the policy serves.

    Raises:
        SealMismatchError: the seal belongs to another attachment, or the file's size differs.
        UnknownKeyError: the seal's key is neither current nor trusted.
        SealInvalidError: the seal's signature does not verify.
        SealMissingError: no seal, and the data is not legacy or the policy refuses it.
    """
    if seal is None:
        check_unsealed(uuid, content_type, policy, is_legacy())
        return None
    check_seal_place(seal, uuid, content_type, size)
    if cache is not None:
        cache.verify_seal(seal, keyring, record)
    else:
        verify_seal_signature(seal, keyring)
    return seal
