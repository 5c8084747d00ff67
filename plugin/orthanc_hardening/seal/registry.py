"""The key registry that signs itself: a hash-chained log of signed key statements.

The model is python-tuf's root rotation (TUF specification §5.3.4: a new root is signed by the
root it replaces and by itself) and a signed tree head (RFC 6962 §3.5) for the head:

* ``genesis`` (entry 0): the first signing key, signed by itself.
* ``rotate``: a new key replaces the current one; signed by the key it replaces **and** by the
  new key (proof of possession, so that no one can chain a key of their own in front of it).
* ``revoke``: a retired key stops being trusted; signed by the key current at that moment.

Every entry carries ``prev_hash`` (SHA-256 of the previous entry, signatures included), so the
log cannot be reordered or edited in the middle without breaking a signature or a hash. The
**anchor** (``RegistryAnchor``) is the head of the log (entry count and hash) signed by the
current key; it lives beside the signing key, outside ``DataDirectory``, so that cutting off
the end of the log (un-revoking a key) is seen as well. What the root of trust is: the current
signing key (a file outside ``DataDirectory``, encrypted) and the anchor beside it; the
registry in ``DataDirectory`` is only believed where they vouch for it.

No I/O here: ``stores/key_files.py`` reads and writes the files; callers pass ``now``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from orthanc_hardening.canonical import canonical_json
from orthanc_hardening.errors import IntegrityError, KeyRegistryError
from orthanc_hardening.seal.keys import PublicKey, SigningKey, algorithm_of, key_id, parse_public_key, public_pem
from orthanc_hardening.seal.keys import verify_signature as _verify_signature
from orthanc_hardening.timefmt import format_time

VERSION = 2
ENTRY_CONTEXT = b"orthanc-hardening/key-registry/v2\x00"
ANCHOR_CONTEXT = b"orthanc-hardening/key-registry-anchor/v2\x00"
GENESIS_HASH = "0" * 64
KINDS = ("genesis", "rotate", "revoke")
_KEY_ID = re.compile(r"^[0-9a-f]{16}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_ENTRY_FIELDS = ("version", "seq", "kind", "key_id", "algorithm", "public_key", "replaces", "at", "prev_hash",
                 "signatures")


def _canonical(fields: Mapping[str, Any]) -> bytes:
    return canonical_json(fields)


@dataclass(frozen=True, slots=True)
class RegistryEntry:
    """One signed statement of the registry (see the module docstring for the kinds)."""

    version: int
    seq: int
    kind: str
    key_id: str  # the key added (genesis, rotate) or revoked (revoke)
    algorithm: str  # of the key added; "" for a revocation
    public_key: str  # PEM of the key added; "" for a revocation
    replaces: str  # rotate: the key id it replaces; "" otherwise
    at: str  # UTC time of the statement
    prev_hash: str
    signatures: Mapping[str, str] = field(default_factory=dict)  # key id -> base64 signature

    def signed_bytes(self) -> bytes:
        """The exact bytes every signature of this entry covers (context prefix + canonical JSON)."""
        fields = self.as_dict()
        del fields["signatures"]
        return ENTRY_CONTEXT + _canonical(fields)

    def entry_hash(self) -> str:
        """SHA-256 (hex) of the whole entry, signatures included: the next entry's ``prev_hash``."""
        return hashlib.sha256(_canonical(self.as_dict())).hexdigest()

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": self.version, "seq": self.seq, "kind": self.kind, "key_id": self.key_id,
            "algorithm": self.algorithm, "public_key": self.public_key, "replaces": self.replaces, "at": self.at,
            "prev_hash": self.prev_hash, "signatures": dict(sorted(self.signatures.items())),
        }

    @classmethod
    def from_dict(cls, raw: Any) -> RegistryEntry:
        """Validate one entry read from the registry file.

        Raises:
            KeyRegistryError: not an entry of this format.
        """
        if not isinstance(raw, dict) or set(raw) != set(_ENTRY_FIELDS):
            raise KeyRegistryError("a registry entry has missing or unknown fields")
        if raw["version"] != VERSION or type(raw["seq"]) is not int or raw["kind"] not in KINDS:
            raise KeyRegistryError(f"registry entry {raw.get('seq')!r} has an unknown version or kind")
        for name in ("key_id", "algorithm", "public_key", "replaces", "at", "prev_hash"):
            if not isinstance(raw[name], str):
                raise KeyRegistryError(f"registry entry {raw['seq']}: {name} is not a string")
        if not _KEY_ID.match(raw["key_id"]) or not _HEX64.match(raw["prev_hash"]):
            raise KeyRegistryError(f"registry entry {raw['seq']}: malformed key id or prev_hash")
        signatures = raw["signatures"]
        if not isinstance(signatures, dict) or not all(
                isinstance(k, str) and _KEY_ID.match(k) and isinstance(v, str) for k, v in signatures.items()):
            raise KeyRegistryError(f"registry entry {raw['seq']}: malformed signatures")
        return cls(**{**raw, "signatures": dict(signatures)})


@dataclass(frozen=True, slots=True)
class RegisteredKey:
    """A key as the verified registry knows it."""

    key_id: str
    algorithm: str
    public_key: PublicKey
    created_at: str
    retired_at: str = ""
    revoked_at: str = ""

    @property
    def is_revoked(self) -> bool:
        return bool(self.revoked_at)

    def as_dict(self) -> dict[str, str]:
        return {"key_id": self.key_id, "algorithm": self.algorithm, "created_at": self.created_at,
                "retired_at": self.retired_at, "revoked_at": self.revoked_at}


@dataclass(frozen=True, slots=True)
class RegistryState:
    """What a verified registry says: the current key, every key it knows, and its head."""

    current: str
    keys: Mapping[str, RegisteredKey]
    count: int
    head: str

    def trusted(self) -> dict[str, PublicKey]:
        """Every unrevoked key id with its public key (the current one included)."""
        return {kid: k.public_key for kid, k in self.keys.items() if not k.is_revoked}

    def revoked(self) -> list[str]:
        return sorted(kid for kid, k in self.keys.items() if k.is_revoked)


@dataclass(frozen=True, slots=True)
class RegistryAnchor:
    """The registry's head signed by the current key (kept outside ``DataDirectory``)."""

    version: int
    key_id: str
    count: int
    head: str
    at: str
    signature: str

    def signed_bytes(self) -> bytes:
        fields = self.as_dict()
        del fields["signature"]
        return ANCHOR_CONTEXT + _canonical(fields)

    def as_dict(self) -> dict[str, Any]:
        return {"version": self.version, "key_id": self.key_id, "count": self.count, "head": self.head,
                "at": self.at, "signature": self.signature}

    @classmethod
    def from_dict(cls, raw: Any) -> RegistryAnchor:
        """Validate an anchor read from its file.

        Raises:
            KeyRegistryError: not an anchor of this format.
        """
        names = ("version", "key_id", "count", "head", "at", "signature")
        if not isinstance(raw, dict) or set(raw) != set(names) or raw["version"] != VERSION:
            raise KeyRegistryError("the registry anchor has missing or unknown fields")
        if type(raw["count"]) is not int or not all(isinstance(raw[n], str) for n in names if n not in (
                "version", "count")):
            raise KeyRegistryError("the registry anchor has fields of the wrong type")
        return cls(**raw)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _signature(entry: RegistryEntry, kid: str) -> bytes:
    encoded = entry.signatures.get(kid)
    if encoded is None:
        raise KeyRegistryError(f"registry entry {entry.seq} ({entry.kind} {entry.key_id}) lacks the signature "
                               f"of key {kid}")
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise KeyRegistryError(f"registry entry {entry.seq}: signature of {kid} is not base64") from exc


def _verify_by(entry: RegistryEntry, kid: str, public_key: PublicKey) -> None:
    try:
        _verify_signature(public_key, entry.signed_bytes(), _signature(entry, kid))
    except KeyRegistryError:
        raise
    except IntegrityError as exc:
        raise KeyRegistryError(f"registry entry {entry.seq} ({entry.kind} {entry.key_id}): the signature of "
                               f"key {kid} does not verify") from exc


def _added_key(entry: RegistryEntry) -> PublicKey:
    try:
        public_key = parse_public_key(entry.public_key.encode("ascii"), f"registry entry {entry.seq}")
    except Exception as exc:  # ConfigError, UnicodeEncodeError: bad data in the file
        raise KeyRegistryError(f"registry entry {entry.seq}: the public key does not parse") from exc
    if key_id(public_key) != entry.key_id or algorithm_of(public_key) != entry.algorithm:
        raise KeyRegistryError(f"registry entry {entry.seq}: the public key is not key {entry.key_id}")
    return public_key


def inspect_registry(entries: Sequence[RegistryEntry]) -> RegistryState:
    """Replay and verify the whole log from its genesis.

    Args:
        entries: the registry's entries, in file order.

    Returns:
        The state the log leads to.

    Raises:
        KeyRegistryError: the log is empty, out of order, has a broken hash link, a missing or
            bad signature, or a statement that its state does not allow (rotating from a key
            that is not current, revoking the current key or an unknown one, adding a key twice).
    """
    if not entries:
        raise KeyRegistryError("the key registry is empty")
    keys: dict[str, RegisteredKey] = {}
    current = ""
    previous = GENESIS_HASH
    for index, entry in enumerate(entries):
        if entry.seq != index:
            raise KeyRegistryError(f"registry entry {index} has seq {entry.seq}: entries removed or reordered")
        if not hmac.compare_digest(entry.prev_hash, previous):
            raise KeyRegistryError(f"registry entry {index} does not follow entry {index - 1} (hash chain broken)")
        if (entry.kind == "genesis") != (index == 0):
            raise KeyRegistryError(f"registry entry {index}: a genesis entry must be the first and only one")
        if entry.kind == "revoke":
            target = keys.get(entry.key_id)
            if target is None:
                raise KeyRegistryError(f"registry entry {index} revokes unknown key {entry.key_id}")
            if entry.key_id == current:
                raise KeyRegistryError(f"registry entry {index} revokes the current key {entry.key_id}")
            _verify_by(entry, current, keys[current].public_key)
            keys[entry.key_id] = replace(target, revoked_at=target.revoked_at or entry.at)
        else:
            if entry.key_id in keys:
                raise KeyRegistryError(f"registry entry {index} adds key {entry.key_id} a second time")
            added = _added_key(entry)
            if entry.kind == "rotate":
                if entry.replaces != current:
                    raise KeyRegistryError(f"registry entry {index} rotates from {entry.replaces or 'nothing'}, "
                                           f"but the current key is {current}")
                # TUF §5.3.4: signed by the key it replaces and by the new key.
                _verify_by(entry, current, keys[current].public_key)
                keys[current] = replace(keys[current], retired_at=entry.at)
            elif entry.replaces:
                raise KeyRegistryError("the genesis entry replaces no key")
            _verify_by(entry, entry.key_id, added)
            keys[entry.key_id] = RegisteredKey(entry.key_id, entry.algorithm, added, entry.at)
            current = entry.key_id
        previous = entry.entry_hash()
    return RegistryState(current=current, keys=keys, count=len(entries), head=previous)


def verify_registry(entries: Sequence[RegistryEntry], signing_key_id: str) -> RegistryState:
    """Verify the log and that it leads to the key the plugin signs with.

    Raises:
        KeyRegistryError: the log does not verify (``inspect_registry``), or its current key is
            not ``signing_key_id`` (the registry names a key of someone else's, or the key file
            was replaced).
    """
    state = inspect_registry(entries)
    if state.current != signing_key_id:
        raise KeyRegistryError(f"the key registry's current key is {state.current}, but the signing key is "
                               f"{signing_key_id}")
    return state


def verify_anchor(state: RegistryState, entries: Sequence[RegistryEntry], anchor: RegistryAnchor) -> None:
    """Check that the verified log is the one the anchor vouches for, or extends it.

    The log may be longer than the anchor (a rotation or revocation that crashed before the
    anchor was rewritten): its extra entries are signed like every other one.

    Raises:
        KeyRegistryError: the anchor's signature does not verify with the key it names, the log
            is shorter than the anchor (entries cut off), or entry ``count - 1`` is not the
            anchor's head (the log was rewritten).
    """
    signer = state.keys.get(anchor.key_id)
    if signer is None:
        raise KeyRegistryError(f"the registry anchor is signed by key {anchor.key_id}, which the registry "
                               f"does not hold")
    try:
        _verify_signature(signer.public_key, anchor.signed_bytes(), base64.b64decode(anchor.signature, validate=True))
    except (IntegrityError, binascii.Error, ValueError) as exc:
        raise KeyRegistryError("the registry anchor's signature does not verify") from exc
    if anchor.count < 1 or anchor.count > len(entries):
        raise KeyRegistryError(f"the key registry has {len(entries)} entries, but its anchor vouches for "
                               f"{anchor.count}: entries were removed")
    if not hmac.compare_digest(entries[anchor.count - 1].entry_hash(), anchor.head):
        raise KeyRegistryError(f"registry entry {anchor.count - 1} is not the one its anchor vouches for: the "
                               f"registry was rewritten")


# -- making entries (the signing side) ------------------------------------------------------


def _sign(entry: RegistryEntry, signers: Sequence[SigningKey]) -> RegistryEntry:
    data = entry.signed_bytes()
    return replace(entry, signatures={s.key_id: _b64(s.sign(data)) for s in signers})


def genesis(signer: SigningKey, public_key: PublicKey, now: datetime) -> RegistryEntry:
    """Entry 0: the first key, signed by itself."""
    entry = RegistryEntry(VERSION, 0, "genesis", signer.key_id, algorithm_of(public_key),
                          public_pem(public_key).decode("ascii"), "", format_time(now), GENESIS_HASH)
    return _sign(entry, [signer])


def rotation(entries: Sequence[RegistryEntry], old: SigningKey, new: SigningKey, new_public: PublicKey,
             now: datetime) -> RegistryEntry:
    """The entry that makes ``new`` current, signed by ``old`` (the current key) and ``new``.

    Raises:
        ValueError: ``entries`` is empty (a caller bug: write the genesis first).
    """
    if not entries:
        raise ValueError("a rotation needs a registry with its genesis entry")
    entry = RegistryEntry(VERSION, len(entries), "rotate", new.key_id, algorithm_of(new_public),
                          public_pem(new_public).decode("ascii"), old.key_id, format_time(now),
                          entries[-1].entry_hash())
    return _sign(entry, [old, new])


def revocation(entries: Sequence[RegistryEntry], current: SigningKey, kid: str, now: datetime) -> RegistryEntry:
    """The entry that revokes ``kid``, signed by the current key.

    Raises:
        ValueError: ``entries`` is empty (a caller bug).
    """
    if not entries:
        raise ValueError("a revocation needs a registry with its genesis entry")
    entry = RegistryEntry(VERSION, len(entries), "revoke", kid, "", "", "", format_time(now),
                          entries[-1].entry_hash())
    return _sign(entry, [current])


def anchor_of(state: RegistryState, signer: SigningKey, now: datetime) -> RegistryAnchor:
    """The anchor of a verified state, signed by its current key.

    Raises:
        ValueError: ``signer`` is not the state's current key (a caller bug).
    """
    if signer.key_id != state.current:
        raise ValueError("the anchor is signed by the registry's current key")
    unsigned = RegistryAnchor(VERSION, signer.key_id, state.count, state.head, format_time(now), "")
    return replace(unsigned, signature=_b64(signer.sign(unsigned.signed_bytes())))
