"""Signing keys: loading, key ids, the key ring that verifies, the key registry and rotation.

* ``load_signing_key`` reads the passphrase-protected PKCS#8 PEM named by
  ``Hardening.SigningKey``: Ed25519 (default), ECDSA P-256 or RSA (signed with RSA-PSS).
* ``key_id`` is the first 16 hex digits of SHA-256 of the DER SubjectPublicKeyInfo (DESIGN.md §6).
* ``KeyRing`` signs with the current key and verifies with the current key, the retired keys
  of the registry that are not revoked, and the ``TrustedKeys`` files. Any other key id fails
  with ``UnknownKeyError``; a bad signature with ``SealInvalidError``.
* The registry (``registry.json`` under ``HardeningConfig.key_directory``) remembers every key
  that ever signed: its public key file, when it became current, when it retired, and whether
  it was revoked. ``rotate_key`` makes a new key current: the old public key stays trusted
  until revoked, and the configured signing-key file is replaced by the new key, encrypted with
  the same passphrase.

File I/O happens here (keys are files); the caller passes ``now`` and the passphrase.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from orthanc_hardening.errors import ConfigError, SealInvalidError, UnknownKeyError

SIGNING_KEY = "Hardening.SigningKey"
TRUSTED_KEYS = "Hardening.TrustedKeys"
REGISTRY_FILE = "registry.json"
ALGORITHMS = ("ed25519", "ecdsa-p256", "rsa-pss")

PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey


def _pss() -> padding.PSS:
    return padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)


def algorithm_of(key: PrivateKey | PublicKey) -> str:
    """Return our name of a key's signature algorithm.

    Raises:
        ValueError: the key is of a kind we do not sign with (a caller bug).
    """
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return "ed25519"
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise ValueError(f"unsupported curve {key.curve.name}")
        return "ecdsa-p256"
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise ValueError(f"RSA key of {key.key_size} bits is too short (2048 at least)")
        return "rsa-pss"
    raise ValueError(f"unsupported key type {type(key).__name__}")


def public_der(public_key: PublicKey) -> bytes:
    """The DER SubjectPublicKeyInfo of a public key."""
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def public_pem(public_key: PublicKey) -> bytes:
    """The PEM SubjectPublicKeyInfo of a public key."""
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_id(public_key: PublicKey) -> str:
    """DESIGN.md §6: the first 16 hex digits of SHA-256 of the DER SubjectPublicKeyInfo."""
    return hashlib.sha256(public_der(public_key)).hexdigest()[:16]


def verify_signature(public_key: PublicKey, data: bytes, signature: bytes) -> None:
    """Verify ``signature`` over ``data`` with ``public_key``.

    Raises:
        SealInvalidError: the signature does not verify.
    """
    try:
        if isinstance(public_key, ed25519.Ed25519PublicKey):
            public_key.verify(signature, data)
        elif isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        else:
            public_key.verify(signature, data, _pss(), hashes.SHA256())
    except InvalidSignature as exc:
        raise SealInvalidError(f"signature does not verify with key {key_id(public_key)}") from exc


@dataclass(frozen=True)
class Signer:
    """The current signing key: ``key_id``, ``algorithm`` and ``sign(data)``."""

    private_key: Any
    key_id: str
    algorithm: str

    @classmethod
    def of(cls, private_key: PrivateKey) -> Signer:
        """Wrap a private key.

        Raises:
            ValueError: unsupported key type (a caller bug; loading refuses it first).
        """
        kid = key_id(private_key.public_key())
        return cls(private_key=private_key, key_id=kid, algorithm=algorithm_of(private_key))

    @property
    def public_key(self) -> PublicKey:
        return self.private_key.public_key()  # type: ignore[no-any-return]

    def sign(self, data: bytes) -> bytes:
        """Sign ``data`` (Ed25519; ECDSA P-256 with SHA-256, DER; RSA-PSS with SHA-256)."""
        if self.algorithm == "ed25519":
            return self.private_key.sign(data)  # type: ignore[no-any-return]
        if self.algorithm == "ecdsa-p256":
            return self.private_key.sign(data, ec.ECDSA(hashes.SHA256()))  # type: ignore[no-any-return]
        return self.private_key.sign(data, _pss(), hashes.SHA256())  # type: ignore[no-any-return]

    def __repr__(self) -> str:  # never show key material
        return f"Signer(key_id={self.key_id!r}, algorithm={self.algorithm!r})"


def load_signing_key(path: Path, passphrase: bytes | None) -> Signer:
    """Load the encrypted PKCS#8 PEM signing key.

    Args:
        path: the key file (``Hardening.SigningKey``).
        passphrase: its passphrase (from ``Hardening.SigningKeyPassphraseEnv``), or ``None``.

    Returns:
        The signer.

    Raises:
        ConfigError: (key ``Hardening.SigningKey``) the file cannot be read, is not a PEM
            private key, the passphrase is missing or wrong, or the algorithm is unsupported.
    """
    try:
        pem = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(SIGNING_KEY, f"cannot read {path}: {exc.strerror}") from exc
    if b"ENCRYPTED" not in pem:
        raise ConfigError(SIGNING_KEY, f"{path} is not an encrypted PKCS#8 key; protect it with a passphrase")
    if not passphrase:
        raise ConfigError(SIGNING_KEY, "the key is encrypted and no passphrase is set in the environment")
    try:
        private_key = serialization.load_pem_private_key(pem, password=passphrase)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigError(SIGNING_KEY, f"cannot decrypt {path}: wrong passphrase or not a PEM private key") from exc
    try:
        return Signer.of(private_key)  # type: ignore[arg-type]
    except ValueError as exc:
        raise ConfigError(SIGNING_KEY, f"unsupported key algorithm: {exc}") from exc


def load_public_key(path: Path, config_key: str = TRUSTED_KEYS) -> PublicKey:
    """Load a PEM public key (SubjectPublicKeyInfo) or certificate.

    Raises:
        ConfigError: unreadable file, not a public key, or an unsupported algorithm.
    """
    try:
        pem = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(config_key, f"cannot read {path}: {exc.strerror}") from exc
    try:
        if b"BEGIN CERTIFICATE" in pem:
            from cryptography import x509

            public_key: Any = x509.load_pem_x509_certificate(pem).public_key()
        else:
            public_key = serialization.load_pem_public_key(pem)
        algorithm_of(public_key)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigError(config_key, f"{path} is not a supported public key: {exc}") from exc
    return public_key  # type: ignore[no-any-return]


def generate_private_key(algorithm: str = "ed25519") -> PrivateKey:
    """Make a new private key.

    Raises:
        ValueError: unknown algorithm name (one of ``ALGORITHMS``).
    """
    if algorithm == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if algorithm == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm == "rsa-pss":
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    raise ValueError(f"unknown algorithm {algorithm!r}; choose one of {', '.join(ALGORITHMS)}")


def encrypt_private_key(private_key: PrivateKey, passphrase: bytes) -> bytes:
    """PKCS#8 PEM encrypted with ``passphrase`` (best available encryption).

    Raises:
        ValueError: an empty passphrase (keys are never written in the clear).
    """
    if not passphrase:
        raise ValueError("a signing key is never written without a passphrase")
    return private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase),
    )


def generate_key(path: Path, passphrase: bytes, algorithm: str = "ed25519", overwrite: bool = False) -> Signer:
    """Create a new encrypted signing key file (mode 0600).

    Raises:
        ValueError: unknown algorithm or empty passphrase.
        FileExistsError: ``path`` exists and ``overwrite`` is false.
    """
    if Path(path).exists() and not overwrite:
        raise FileExistsError(str(path))
    private_key = generate_private_key(algorithm)
    write_private(Path(path), encrypt_private_key(private_key, passphrase))
    return Signer.of(private_key)


def write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` atomically (temporary file, fsync, rename) with ``mode``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# -- registry -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyEntry:
    """One key the registry knows."""

    key_id: str
    algorithm: str
    public_key_file: str  # relative to the key directory
    created_at: str
    retired_at: str = ""
    revoked_at: str = ""

    @property
    def is_revoked(self) -> bool:
        return bool(self.revoked_at)

    def as_dict(self) -> dict[str, str]:
        return {
            "key_id": self.key_id,
            "algorithm": self.algorithm,
            "public_key_file": self.public_key_file,
            "created_at": self.created_at,
            "retired_at": self.retired_at,
            "revoked_at": self.revoked_at,
        }


def _iso(now: datetime) -> str:
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now.isoformat().replace("+00:00", "Z")


def read_registry(directory: Path) -> dict[str, KeyEntry]:
    """Read ``registry.json`` (missing file: empty registry).

    Raises:
        ConfigError: the registry is not valid JSON of the expected shape.
    """
    path = Path(directory) / REGISTRY_FILE
    if not path.exists():
        return {}
    try:
        raw = json.loads(path.read_text())
        entries = {item["key_id"]: KeyEntry(**item) for item in raw["keys"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError("Hardening.DataDirectory", f"key registry {path} is unreadable: {exc}") from exc
    return entries


def write_registry(directory: Path, entries: Mapping[str, KeyEntry]) -> None:
    """Write ``registry.json`` atomically."""
    body = {"version": 1, "keys": [entries[k].as_dict() for k in sorted(entries)]}
    write_private(Path(directory) / REGISTRY_FILE, (json.dumps(body, indent=2, sort_keys=True) + "\n").encode(), 0o644)


def register_key(directory: Path, public_key: PublicKey, now: datetime) -> KeyEntry:
    """Make sure ``public_key`` is in the registry with its public key file; return its entry."""
    directory = Path(directory)
    entries = read_registry(directory)
    kid = key_id(public_key)
    file_name = f"{kid}.pub.pem"
    pub_path = directory / file_name
    if not pub_path.exists():
        write_private(pub_path, public_pem(public_key), 0o644)
    if kid not in entries:
        entries[kid] = KeyEntry(kid, algorithm_of(public_key), file_name, _iso(now))
        write_registry(directory, entries)
    return entries[kid]


def rotate_key(
    signing_key: Path, key_directory: Path, passphrase: bytes, now: datetime, algorithm: str | None = None
) -> tuple[Signer, Signer]:
    """Make a new signing key current; keep the old public key trusted in the registry.

    The old key's public key is written under ``key_directory`` and marked retired; the new
    key replaces ``signing_key`` (same passphrase); the registry lists both.

    Args:
        signing_key: path of ``Hardening.SigningKey``.
        key_directory: ``HardeningConfig.key_directory``.
        passphrase: the passphrase of the current key, used for the new one too.
        now: the rotation time (UTC).
        algorithm: algorithm of the new key; defaults to the current key's.

    Returns:
        ``(old, new)`` signers.

    Raises:
        ConfigError: the current key cannot be loaded.
    """
    old = load_signing_key(signing_key, passphrase)
    register_key(key_directory, old.public_key, now)
    new_private = generate_private_key(algorithm or old.algorithm)
    new = Signer.of(new_private)
    register_key(key_directory, new.public_key, now)
    entries = read_registry(key_directory)
    entries[old.key_id] = _replace(entries[old.key_id], retired_at=_iso(now))
    write_registry(key_directory, entries)
    # The registry already trusts the new key when the file is swapped: a crash in between
    # leaves the old key current and the new one merely known.
    write_private(Path(signing_key), encrypt_private_key(new_private, passphrase))
    return old, new


def revoke_key(key_directory: Path, kid: str, now: datetime) -> KeyEntry:
    """Mark a retired key revoked: its seals stop verifying.

    Raises:
        ConfigError: the key id is not in the registry.
    """
    entries = read_registry(key_directory)
    if kid not in entries:
        raise ConfigError("key_id", f"{kid} is not in the key registry")
    entries[kid] = _replace(entries[kid], revoked_at=_iso(now))
    write_registry(key_directory, entries)
    return entries[kid]


def _replace(entry: KeyEntry, **changes: str) -> KeyEntry:
    values = entry.as_dict()
    values.update(changes)
    return KeyEntry(**values)


# -- key ring -------------------------------------------------------------------------------


class KeyRing:
    """Signs with the current key; verifies with the current and the trusted keys only."""

    def __init__(self, signer: Signer, trusted: Mapping[str, PublicKey] | None = None,
                 revoked: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._revoked = frozenset(revoked)
        if signer.key_id in self._revoked:
            raise ConfigError(SIGNING_KEY, f"the signing key {signer.key_id} is revoked in the key registry")
        self._signer = signer
        self._trusted = {k: v for k, v in (trusted or {}).items() if k not in self._revoked}
        self._listeners: list[Callable[[Signer], None]] = []

    def add_listener(self, listener: Callable[[Signer], None]) -> None:
        """Call ``listener(new_signer)`` whenever the current key changes."""
        self._listeners.append(listener)

    @property
    def signer(self) -> Signer:
        with self._lock:
            return self._signer

    def replace_signer(self, signer: Signer) -> None:
        """Make ``signer`` current; the previous current key stays trusted."""
        with self._lock:
            previous = self._signer
            self._trusted[previous.key_id] = previous.public_key
            self._signer = signer
        for listener in self._listeners:
            listener(signer)

    def public_key(self, kid: str) -> PublicKey:
        """Return the public key of a current or trusted key id.

        Raises:
            UnknownKeyError: the key id is neither current nor trusted (or it was revoked).
        """
        with self._lock:
            if kid == self._signer.key_id:
                return self._signer.public_key
            found = self._trusted.get(kid)
        if found is None:
            raise UnknownKeyError(f"key {kid} is neither the current key nor trusted")
        return found

    def verify(self, kid: str, data: bytes, signature: bytes) -> None:
        """Verify a signature made by key ``kid``.

        Raises:
            UnknownKeyError: ``kid`` is neither current nor trusted.
            SealInvalidError: the signature does not verify.
        """
        verify_signature(self.public_key(kid), data, signature)

    def public_keys(self) -> dict[str, bytes]:
        """Every key id this ring accepts, with its PEM public key."""
        with self._lock:
            keys = {self._signer.key_id: public_pem(self._signer.public_key)}
            keys.update({kid: public_pem(pk) for kid, pk in self._trusted.items() if kid not in keys})
        return keys


def load_key_ring(signing_key: Path, passphrase: bytes | None, key_directory: Path,
                  trusted_files: Iterable[Path], now: datetime) -> KeyRing:
    """Load the current key, the registry's unrevoked keys and the ``TrustedKeys`` files.

    The current key is added to the registry when missing (first start).

    Raises:
        ConfigError: a key file cannot be loaded, or the current key is revoked.
    """
    signer = load_signing_key(signing_key, passphrase)
    register_key(key_directory, signer.public_key, now)
    entries = read_registry(key_directory)
    trusted: dict[str, PublicKey] = {}
    for entry in entries.values():
        if entry.key_id == signer.key_id or entry.is_revoked:
            continue
        public_key = load_public_key(Path(key_directory) / entry.public_key_file, "Hardening.DataDirectory")
        if key_id(public_key) != entry.key_id:
            raise ConfigError("Hardening.DataDirectory", f"registry file for key {entry.key_id} holds another key")
        trusted[entry.key_id] = public_key
    for index, path in enumerate(trusted_files):
        public_key = load_public_key(Path(path), f"{TRUSTED_KEYS}[{index}]")
        trusted[key_id(public_key)] = public_key
    revoked = [e.key_id for e in entries.values() if e.is_revoked]
    return KeyRing(signer, trusted, revoked)
