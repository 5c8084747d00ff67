"""The one cache of signatures that verified, so that a hot path only hashes bytes.

Every signed record the plugin checks again and again — a seal on each read, the seals and
manifests the scrub re-reads, the records the sealed-tag catalogue loads — goes through one
``SignatureCache``:

* ``verify(verifier, key_id, data, signature)`` verifies a signature unless these exact bytes
  (key id, signed data, signature) verified before; ``verifier_for(keyring)`` is the same as a
  ``Verifier`` for code that takes one;
* ``parse_seal(record)`` returns the seal parsed from stored record bytes that verified before
  (no JSON parsing, no re-encoding on a hot read); ``verify_seal`` verifies and remembers it.

Keyed by the exact bytes, so a changed row or record is verified again. Bounded (least recently
used entries are dropped). Cleared when the key ring changes: a withdrawn key must fail at once.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from collections import OrderedDict

from cryptography.hazmat.primitives.asymmetric import ed25519

from orthanc_hardening.seal.keys import KeyRing, Signer, Verifier
from orthanc_hardening.seal.record import Seal, verify_seal_signature

DEFAULT_LIMIT = 262_144


class SignatureCache:
    """Signatures that verified (see the module docstring). Thread-safe."""

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        self._signatures: OrderedDict[bytes, None] = OrderedDict()
        self._seals: OrderedDict[bytes, Seal] = OrderedDict()

    # -- any signature --------------------------------------------------------------------

    def verify(self, verifier: Verifier, key_id: str, data: bytes, signature: bytes) -> None:
        """Verify ``signature`` over ``data`` by ``key_id``, unless these exact bytes verified before.

        Raises:
            UnknownKeyError: the key is neither current nor trusted.
            SealInvalidError: the signature does not verify.
        """
        digest = _signature_key(key_id, data, signature)
        with self._lock:
            if digest in self._signatures:
                self._signatures.move_to_end(digest)
                return
        verifier.verify(key_id, data, signature)
        self._remember_signature(digest)

    def _remember_signature(self, digest: bytes) -> None:
        with self._lock:
            self._signatures[digest] = None
            while len(self._signatures) > self._limit:
                self._signatures.popitem(last=False)

    def verifier_for(self, verifier: Verifier) -> Verifier:
        """``verifier`` with this cache in front of it."""
        return _CachedVerifier(self, verifier)

    # -- seal records -----------------------------------------------------------------------

    def parse_seal(self, record: bytes) -> Seal:
        """The seal stored as ``record``: the one that verified before, else parsed now (unverified).

        Raises:
            SealInvalidError: the record is not a well-formed seal.
        """
        with self._lock:
            seal = self._seals.get(record)
            if seal is not None:
                self._seals.move_to_end(record)
                return seal
        return Seal.from_bytes(record)

    def is_verified_seal(self, record: bytes) -> bool:
        """Whether the seal stored as ``record`` verified before."""
        with self._lock:
            return record in self._seals

    def verify_seal(self, seal: Seal, verifier: Verifier, record: bytes | None = None) -> None:
        """Verify ``seal``'s signature unless this exact record verified before; remember it.

        Args:
            seal: the seal.
            verifier: the trusted keys.
            record: the stored bytes ``seal`` was parsed from (defaults to its canonical encoding).

        Raises:
            UnknownKeyError: the key is neither current nor trusted.
            SealInvalidError: the signature does not verify.
        """
        key = seal.to_bytes() if record is None else record
        if self.is_verified_seal(key):
            return
        verify_seal_signature(seal, verifier)
        self.remember_seal(key, seal)

    def remember_seal(self, record: bytes, seal: Seal, signed_here: bool = False,
                      signed: tuple[bytes, bytes] | None = None) -> None:
        """Add a seal that verified, as the store holds it (``record``).

        ``signed_here``: this process has just signed it, so its signature is remembered too and
        the manifest of its study, which checks the signature of every seal, does not verify it again.
        ``signed``: ``(seal.signed_bytes(), seal.signature_bytes)`` when the signer has them at hand.
        """
        if signed_here:
            data, signature = signed if signed is not None else (seal.signed_bytes(), seal.signature_bytes)
            self._remember_signature(_signature_key(seal.key_id, data, signature))
        with self._lock:
            self._seals[record] = seal
            self._seals.move_to_end(record)
            while len(self._seals) > self._limit:
                self._seals.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._seals) + len(self._signatures)

    def clear(self) -> None:
        """Forget everything (the key ring changed)."""
        with self._lock:
            self._seals.clear()
            self._signatures.clear()


def _signature_key(key_id: str, data: bytes, signature: bytes) -> bytes:
    return hashlib.sha256(key_id.encode("ascii", "replace") + b"\x00" + signature + b"\x00" + data).digest()


class _CachedVerifier:
    def __init__(self, cache: SignatureCache, verifier: Verifier) -> None:
        self._cache = cache
        self._verifier = verifier

    def verify(self, kid: str, data: bytes, signature: bytes) -> None:
        self._cache.verify(self._verifier, kid, data, signature)


class ResigningVerifier:
    """``keyring`` as a ``Verifier`` that checks a signature of its current key by signing again.

    Ed25519 signing is deterministic (RFC 8032 §5.1.6: the nonce is derived from the key and the
    message), so a key has one signature of its own for given bytes. When the ring's current key
    is an Ed25519 key held in this process (``Signer``, not a token) and ``kid`` names it, the
    bytes are signed again (≈ 40 % of the cost of one verification) and compared with the stored
    signature in constant time: equal, the stored signature is the key's own and verifies; not
    equal, it is verified as usual (a valid signature made otherwise still passes, an invalid one
    raises exactly as ``keyring.verify`` does). Every other key is verified as usual. It accepts
    exactly what ``keyring.verify`` accepts, never more: the current key is read from the ring at
    each call, so a replaced key is not used after the ring changed.
    """

    def __init__(self, keyring: KeyRing) -> None:
        self._keyring = keyring

    def verify(self, kid: str, data: bytes, signature: bytes) -> None:
        """Verify ``signature`` over ``data`` by ``kid``.

        Raises:
            UnknownKeyError: the key is neither current nor trusted.
            SealInvalidError: the signature does not verify.
        """
        current = self._keyring.signer
        if (kid == current.key_id and isinstance(current, Signer)
                and isinstance(current.private_key, ed25519.Ed25519PrivateKey)
                and hmac.compare_digest(current.private_key.sign(data), signature)):
            return
        self._keyring.verify(kid, data, signature)
