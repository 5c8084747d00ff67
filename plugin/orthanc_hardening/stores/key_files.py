"""Key files: the signing key, public keys, the key registry and rotation (file I/O).

* ``load_signing_key`` / ``load_public_key`` read PEM files (parsed by ``seal/keys.py``).
* The registry (``registry.json`` under ``HardeningConfig.key_directory``) is the signed log of
  ``seal/registry.py``: every key that ever signed, added by a rotation signed by the key it
  replaced, and every revocation, signed. Its anchor (the head, signed by the current key)
  lives beside the signing key, outside ``DataDirectory``. ``rotate_key`` makes a new key
  current: the old public key stays trusted until revoked, and the configured signing-key
  file is replaced by the new key, encrypted with the same passphrase.
* ``load_key_ring`` builds the ``KeyRing`` the plugin verifies with, from the verified
  registry only: a registry that does not verify raises ``KeyRegistryError``.

Files are written atomically (temporary file, fsync, rename). The caller passes ``now`` and the
passphrase.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path

from orthanc_hardening.errors import ConfigError, KeyRegistryError
from orthanc_hardening.seal import registry
from orthanc_hardening.seal.keys import (
    SIGNING_KEY,
    TRUSTED_KEYS,
    CurrentKey,
    KeyRing,
    PublicKey,
    PublicKeyRing,
    Signer,
    encrypt_private_key,
    generate_private_key,
    key_id,
    parse_public_key,
    parse_signing_key,
)
from orthanc_hardening.seal.registry import RegisteredKey, RegistryAnchor, RegistryEntry, RegistryState
from orthanc_hardening.stores.token_keys import Token, is_token_uri

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


def anchor_path(signing_key: Path, anchor: Path | None = None) -> Path:
    """Where the registry anchor lives: ``anchor`` (``Hardening.KeyRegistryAnchor``) when given,
    else beside the signing key file, outside ``DataDirectory``.

    Raises:
        ConfigError: a PKCS#11 key (no file to sit beside) without ``anchor``.
    """
    if anchor is not None:
        return Path(anchor)
    if is_token_uri(signing_key):
        raise ConfigError("Hardening.KeyRegistryAnchor", "is required with a PKCS#11 signing key (a file outside "
                                                         "DataDirectory for the key registry's anchor)")
    signing_key = Path(signing_key)
    return signing_key.with_name(signing_key.name + ".registry-anchor.json")


def load_signer(signing_key: Path, passphrase: bytes | None, key_directory: Path) -> CurrentKey:
    """The current signing key: the encrypted key file, or the key in a PKCS#11 token.

    For a token, the key the (unverified) registry names as current is looked up by its id, so
    that a key made by a rotation is found; the registry is verified against it afterwards.

    Raises:
        ConfigError: (key ``Hardening.SigningKey``) the key cannot be loaded.
    """
    if not is_token_uri(signing_key):
        return load_signing_key(signing_key, passphrase)
    hint = None
    try:
        entries = read_registry(key_directory)
        hint = registry.inspect_registry(entries).current if entries else None
    except (KeyRegistryError, _UnsignedRegistry):
        hint = None  # the verification that follows names the problem
    return Token.open(str(signing_key), passphrase).signer(hint)


def _pending_path(signing_key: Path) -> Path:
    signing_key = Path(signing_key)
    return signing_key.with_name(signing_key.name + ".pending")


def read_registry(directory: Path) -> list[RegistryEntry] | None:
    """Read the entries of ``registry.json`` (``None`` when there is no registry yet).

    Raises:
        KeyRegistryError: the file is unreadable or not a registry of a known format.
        _UnsignedRegistry: a registry of the first, unsigned format (version 1); the caller
            decides whether it can be replaced.
    """
    path = Path(directory) / REGISTRY_FILE
    if not path.exists():
        return None
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise KeyRegistryError(f"key registry {path} is unreadable: {exc}") from exc
    if not isinstance(raw, dict):
        raise KeyRegistryError(f"key registry {path} is not a JSON object")
    if raw.get("version") == 1:
        raise _UnsignedRegistry([str(k.get("key_id")) for k in raw.get("keys", []) if isinstance(k, dict)])
    if raw.get("version") != registry.VERSION or not isinstance(raw.get("entries"), list):
        raise KeyRegistryError(f"key registry {path} has an unknown format")
    return [RegistryEntry.from_dict(item) for item in raw["entries"]]


class _UnsignedRegistry(Exception):
    """A version 1 registry (nothing signed), with the key ids it lists."""

    def __init__(self, key_ids: list[str]) -> None:
        super().__init__(", ".join(key_ids))
        self.key_ids = key_ids


def write_registry(directory: Path, entries: Sequence[RegistryEntry]) -> None:
    """Write ``registry.json`` atomically.

    Raises:
        ConfigError: (key ``Hardening.DataDirectory``) the key directory is not writable.
    """
    body = {"version": registry.VERSION, "entries": [e.as_dict() for e in entries]}
    try:
        write_private(Path(directory) / REGISTRY_FILE,
                      (json.dumps(body, indent=2, sort_keys=True) + "\n").encode(), 0o644)
    except OSError as exc:
        raise ConfigError("Hardening.DataDirectory", f"cannot write the key registry in {directory}: "
                                                     f"{exc.strerror}") from exc


def read_anchor(signing_key: Path, anchor: Path | None = None) -> RegistryAnchor | None:
    """Read the anchor beside the signing key (``None`` when there is none).

    Raises:
        KeyRegistryError: the anchor is unreadable or malformed.
    """
    path = anchor_path(signing_key, anchor)
    if not path.exists():
        return None
    try:
        return RegistryAnchor.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError) as exc:
        raise KeyRegistryError(f"registry anchor {path} is unreadable: {exc}") from exc


def write_anchor(signing_key: Path, record: RegistryAnchor, anchor: Path | None = None) -> None:
    """Write the anchor atomically beside the signing key.

    Raises:
        ConfigError: (key ``Hardening.SigningKey``) the key's directory is not writable.
    """
    path = anchor_path(signing_key, anchor)
    try:
        write_private(path, (json.dumps(record.as_dict(), indent=2, sort_keys=True) + "\n").encode(), 0o644)
    except OSError as exc:
        raise ConfigError(SIGNING_KEY, f"cannot write the key registry's anchor {path}: {exc.strerror}") from exc


def _finish_pending_rotation(signing_key: Path, passphrase: bytes | None, key_directory: Path) -> None:
    """Complete or undo a rotation that stopped between the registry and the key file.

    A rotation writes the new key to ``<SigningKey>.pending``, appends its signed entry to the
    registry, then renames the pending file over the signing key. When the registry's last
    entry made the pending key current, the rename is finished; otherwise the pending key was
    never committed and is removed.
    """
    if is_token_uri(signing_key):
        return  # a token rotation has no file to rename
    pending = _pending_path(signing_key)
    if not pending.exists():
        return
    try:
        candidate = load_signing_key(pending, passphrase)
        entries = read_registry(key_directory)
    except (ConfigError, KeyRegistryError, _UnsignedRegistry):
        entries, candidate = None, None
    if entries and candidate is not None and entries[-1].kind == "rotate" and entries[-1].key_id == candidate.key_id:
        os.replace(pending, signing_key)
    else:
        pending.unlink()


def _verified_registry(signer: CurrentKey, key_directory: Path, signing_key: Path, now: datetime,
                       anchor_file: Path | None = None) -> tuple[list[RegistryEntry], RegistryState]:
    """The registry's entries and state, verified against the signing key and the anchor.

    On the first start (no registry and no anchor) the registry is created with the signing
    key as its genesis. The anchor is rewritten when the registry verifiably extends it.

    Raises:
        KeyRegistryError: the registry or the anchor is missing while the other exists, does
            not verify, or does not lead to the signing key.
    """
    try:
        entries = read_registry(key_directory)
    except _UnsignedRegistry as unsigned:
        if set(unsigned.key_ids) - {signer.key_id}:
            raise KeyRegistryError(
                f"the key registry in {key_directory} is of the unsigned first format and lists keys other than "
                f"the signing key ({unsigned}); nothing vouches for them: put the public keys you trust in "
                f"Hardening.TrustedKeys (outside DataDirectory) and remove {REGISTRY_FILE}") from None
        entries = None  # it only listed the signing key: start the signed registry from it
    anchor = read_anchor(signing_key, anchor_file)
    where = anchor_path(signing_key, anchor_file)
    if entries is None:
        if anchor is not None:
            raise KeyRegistryError(f"the key registry {Path(key_directory) / REGISTRY_FILE} is missing, but its "
                                   f"anchor {where} vouches for {anchor.count} entries")
        entries = [registry.genesis(signer, signer.public_key, now)]
        state = registry.verify_registry(entries, signer.key_id)
        write_registry(key_directory, entries)
        write_anchor(signing_key, registry.anchor_of(state, signer, now), anchor_file)
        return entries, state
    if anchor is None:
        raise KeyRegistryError(f"the key registry's anchor {where} is missing: nothing outside "
                               f"DataDirectory vouches for the registry")
    state = registry.verify_registry(entries, signer.key_id)
    registry.verify_anchor(state, entries, anchor)
    if anchor.count != state.count or anchor.key_id != state.current:
        write_anchor(signing_key, registry.anchor_of(state, signer, now), anchor_file)
    return entries, state


def registry_state(signing_key: Path, key_directory: Path, anchor_file: Path | None = None) -> RegistryState:
    """The registry verified against its anchor, without the private key (offline tools, listings).

    Raises:
        KeyRegistryError: no registry or no anchor, or either does not verify.
    """
    try:
        entries = read_registry(key_directory)
    except _UnsignedRegistry as unsigned:
        raise KeyRegistryError(f"the key registry is of the unsigned first format ({unsigned}); start the "
                               f"plugin once to replace it by a signed one") from None
    anchor = read_anchor(signing_key, anchor_file)
    if entries is None or anchor is None:
        raise KeyRegistryError(f"no signed key registry: {Path(key_directory) / REGISTRY_FILE} and "
                               f"{anchor_path(signing_key, anchor_file)} must both exist")
    state = registry.inspect_registry(entries)
    registry.verify_anchor(state, entries, anchor)
    return state


def rotate_key(
    signing_key: Path, key_directory: Path, passphrase: bytes, now: datetime, algorithm: str | None = None,
    anchor_file: Path | None = None,
) -> tuple[CurrentKey, CurrentKey]:
    """Make a new signing key current; the old public key stays trusted in the registry.

    The rotation entry is signed by the old key and by the new one; the new key replaces
    ``signing_key`` (same passphrase) and signs the new anchor.

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
        KeyRegistryError: the registry does not verify (nothing is rotated over it).
    """
    _finish_pending_rotation(signing_key, passphrase, key_directory)
    old = load_signer(signing_key, passphrase, key_directory)
    entries, _state = _verified_registry(old, key_directory, signing_key, now, anchor_file)
    if is_token_uri(signing_key):
        # The new key is made inside the token; the registry (signed by both) makes it current.
        if algorithm not in (None, "ed25519"):
            raise ConfigError("--algorithm", "keys in a PKCS#11 token are Ed25519")
        token_key = Token.open(str(signing_key), passphrase).generate()
        entries = [*entries, registry.rotation(entries, old, token_key, token_key.public_key, now)]
        write_registry(key_directory, entries)
        write_anchor(signing_key, registry.anchor_of(registry.verify_registry(entries, token_key.key_id),
                                                     token_key, now), anchor_file)
        return old, token_key
    new_private = generate_private_key(algorithm or old.algorithm)
    new = Signer.of(new_private)
    pending = _pending_path(signing_key)
    write_private(pending, encrypt_private_key(new_private, passphrase))
    entries = [*entries, registry.rotation(entries, old, new, new.public_key, now)]
    write_registry(key_directory, entries)
    # A crash here leaves the pending key and a registry naming it: the next start finishes.
    os.replace(pending, Path(signing_key))
    write_anchor(signing_key, registry.anchor_of(registry.verify_registry(entries, new.key_id), new, now),
                 anchor_file)
    return old, new


def revoke_key(signing_key: Path, passphrase: bytes | None, key_directory: Path, kid: str,
               now: datetime, anchor_file: Path | None = None) -> RegisteredKey:
    """Revoke a retired key (signed by the current key): its seals stop verifying.

    Raises:
        ConfigError: (key ``key_id``) the key id is not in the registry or is the current key;
            the signing key cannot be loaded.
        KeyRegistryError: the registry does not verify.
    """
    signer = load_signer(signing_key, passphrase, key_directory)
    entries, state = _verified_registry(signer, key_directory, signing_key, now, anchor_file)
    if kid not in state.keys:
        raise ConfigError("key_id", f"{kid} is not in the key registry")
    if kid == state.current:
        raise ConfigError("key_id", f"{kid} is the current key; rotate first, then revoke it")
    entries = [*entries, registry.revocation(entries, signer, kid, now)]
    state = registry.verify_registry(entries, signer.key_id)
    write_registry(key_directory, entries)
    write_anchor(signing_key, registry.anchor_of(state, signer, now), anchor_file)
    return state.keys[kid]


def load_key_ring(signing_key: Path, passphrase: bytes | None, key_directory: Path,
                  trusted_files: Iterable[Path], now: datetime, anchor_file: Path | None = None) -> KeyRing:
    """Load the current key, the verified registry's unrevoked keys and the ``TrustedKeys`` files.

    The registry is created with the current key as genesis on the first start.

    Raises:
        ConfigError: a key file cannot be loaded, or the current key is revoked.
        KeyRegistryError: the registry or its anchor does not verify (the plugin must not start).
    """
    _finish_pending_rotation(signing_key, passphrase, key_directory)
    signer = load_signer(signing_key, passphrase, key_directory)
    _entries, state = _verified_registry(signer, key_directory, signing_key, now, anchor_file)
    trusted = {kid: pk for kid, pk in state.trusted().items() if kid != signer.key_id}
    for index, path in enumerate(trusted_files):
        public_key = load_public_key(Path(path), f"{TRUSTED_KEYS}[{index}]")
        trusted[key_id(public_key)] = public_key
    return KeyRing(signer, trusted, state.revoked())


def load_public_key_ring(signing_key: Path, key_directory: Path, trusted_files: Iterable[Path],
                         anchor_file: Path | None = None) -> PublicKeyRing:
    """The public keys a verifier accepts: the verified registry's unrevoked keys and ``TrustedKeys``.

    Raises:
        ConfigError: a ``TrustedKeys`` file cannot be read.
        KeyRegistryError: the registry or its anchor does not verify.
    """
    state = registry_state(signing_key, key_directory, anchor_file)
    found: dict[str, PublicKey] = dict(state.trusted())
    for index, path in enumerate(trusted_files):
        public_key = load_public_key(Path(path), f"{TRUSTED_KEYS}[{index}]")
        if key_id(public_key) not in state.revoked():
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
