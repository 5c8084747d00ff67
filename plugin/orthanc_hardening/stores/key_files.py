"""Key files: the signing key, public keys, the key registry and rotation (file I/O).

* ``load_signing_key`` / ``load_public_key`` read PEM files (parsed by ``seal/keys.py``).
* The registry (``registry.json`` under ``HardeningConfig.key_directory``) remembers every key
  that ever signed: its public key file, when it became current, when it retired, and whether
  it was revoked. ``rotate_key`` makes a new key current: the old public key stays trusted
  until revoked, and the configured signing-key file is replaced by the new key, encrypted with
  the same passphrase.
* ``load_key_ring`` builds the ``KeyRing`` the plugin verifies with.

Files are written atomically (temporary file, fsync, rename). The caller passes ``now`` and the
passphrase.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path

from orthanc_hardening.errors import ConfigError
from orthanc_hardening.seal.keys import (
    SIGNING_KEY,
    TRUSTED_KEYS,
    KeyEntry,
    KeyRing,
    PublicKey,
    PublicKeyRing,
    Signer,
    algorithm_of,
    encrypt_private_key,
    generate_private_key,
    key_id,
    parse_public_key,
    parse_signing_key,
    public_pem,
)

REGISTRY_FILE = "registry.json"


def load_signing_key(path: Path, passphrase: bytes | None) -> Signer:
    """Load the encrypted PKCS#8 PEM signing key file.

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
    return parse_signing_key(pem, passphrase, str(path))


def load_public_key(path: Path, config_key: str = TRUSTED_KEYS) -> PublicKey:
    """Load a PEM public key (SubjectPublicKeyInfo) or certificate file.

    Raises:
        ConfigError: unreadable file, not a public key, or an unsupported algorithm.
    """
    try:
        pem = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(config_key, f"cannot read {path}: {exc.strerror}") from exc
    return parse_public_key(pem, str(path), config_key)


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


def load_public_key_ring(key_directory: Path, trusted_files: Iterable[Path]) -> PublicKeyRing:
    """The public keys a verifier accepts: the registry's unrevoked keys and ``TrustedKeys``.

    Raises:
        ConfigError: a key file cannot be read or holds another key than its registry entry.
    """
    found: dict[str, PublicKey] = {}
    for entry in read_registry(key_directory).values():
        if entry.is_revoked:
            continue
        public_key = load_public_key(Path(key_directory) / entry.public_key_file, "Hardening.DataDirectory")
        if key_id(public_key) != entry.key_id:
            raise ConfigError("Hardening.DataDirectory", f"registry file for key {entry.key_id} holds another key")
        found[entry.key_id] = public_key
    for index, path in enumerate(trusted_files):
        public_key = load_public_key(Path(path), f"{TRUSTED_KEYS}[{index}]")
        found[key_id(public_key)] = public_key
    return PublicKeyRing(found)


def load_public_keys(paths: Iterable[Path], option: str) -> PublicKeyRing:
    """The given PEM public key (or certificate) files as a ring; ``option`` names them in errors.

    Raises:
        ConfigError: a file is not a supported public key.
    """
    found: dict[str, PublicKey] = {}
    for index, path in enumerate(paths):
        public_key = load_public_key(Path(path), f"{option}[{index}]")
        found[key_id(public_key)] = public_key
    return PublicKeyRing(found)
