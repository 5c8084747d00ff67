"""``python -m orthanc_hardening keys …``: make, rotate, list, revoke and export signing keys.

* ``keys generate --out PATH`` writes a new passphrase-protected PKCS#8 key (Ed25519 by default);
  ``--out pkcs11:token=…;object=…?module-path=…`` makes an Ed25519 key pair inside a PKCS#11 token
  instead (the passphrase variable holds the token's PIN);
  the passphrase comes from the environment variable named by ``--passphrase-env``
  (``HARDENING_KEY_PASSPHRASE``) or, on a terminal, a prompt.
* ``keys rotate CONFIG`` does what ``POST /hardening/keys/rotate`` does, on a stopped Orthanc:
  the key file named by ``Hardening.SigningKey`` is replaced by a new key (same passphrase), the
  old public key is kept trusted in the signed key registry under ``DataDirectory/keys`` (the
  rotation is signed by the old key and the new one; see ``seal/registry.py``).
* ``keys list CONFIG`` and ``keys export-public CONFIG --out DIR`` (public keys for offline
  verifiers) read the registry only after verifying it against its anchor; ``keys revoke CONFIG
  KEY_ID`` (seals made with it stop verifying after the next start) is signed by the current key,
  so it needs the passphrase.
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import json
import os
import sys
from pathlib import Path
from typing import Any

from orthanc_hardening.commands.posture import load_orthanc_configuration
from orthanc_hardening.config import HardeningConfig, load_config, passphrase_from_env
from orthanc_hardening.errors import ConfigError
from orthanc_hardening.seal import keys as keymod
from orthanc_hardening.stores import key_files, token_keys


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _config(path: str) -> HardeningConfig:
    raw, _base = load_orthanc_configuration(Path(path), os.environ)
    return load_config(raw)


def _passphrase(env_name: str, confirm: bool) -> bytes:
    value = os.environ.get(env_name)
    if value:
        return value.encode("utf-8")
    if not sys.stdin.isatty():
        raise ConfigError(env_name, "is not set and there is no terminal to ask for the passphrase")
    first = getpass.getpass("Passphrase for the signing key: ")
    if confirm and getpass.getpass("Again: ") != first:
        raise ConfigError(env_name, "the two passphrases differ")
    if not first:
        raise ConfigError(env_name, "an empty passphrase is not allowed")
    return first.encode("utf-8")


def generate(args: argparse.Namespace) -> int:
    if token_keys.is_token_uri(args.out):
        # A key pair made inside the token (Ed25519, never extractable); the PIN as passphrase.
        token = token_keys.Token.open(args.out, _passphrase(args.passphrase_env, confirm=False))
        try:
            existing = token.signer()
        except ConfigError:
            existing = None
        if existing is not None:
            raise ConfigError("--out", f"the token already holds {token.uri.object!r} (key {existing.key_id})")
        made = token.generate(label=token.uri.object)
        print(json.dumps({"key_id": made.key_id, "algorithm": made.algorithm, "uri": args.out}))
        return 0
    passphrase = _passphrase(args.passphrase_env, confirm=True)
    try:
        signer = key_files.generate_key(Path(args.out), passphrase, args.algorithm, overwrite=args.force)
    except FileExistsError:
        raise ConfigError("--out", f"{args.out} exists; use --force to replace it") from None
    print(json.dumps({"key_id": signer.key_id, "algorithm": signer.algorithm, "path": str(args.out)}))
    return 0


def rotate(args: argparse.Namespace) -> int:
    config = _config(args.config)
    passphrase = passphrase_from_env(config, os.environ)
    if not passphrase:
        raise ConfigError(config.signing_key_passphrase_env, "is not set")
    old, new = key_files.rotate_key(config.signing_key, config.key_directory, passphrase, _now(), args.algorithm,
                                   config.key_registry_anchor)
    print(json.dumps({"previous": old.key_id, "current": new.key_id, "algorithm": new.algorithm}))
    return 0


def list_keys(args: argparse.Namespace) -> int:
    config = _config(args.config)
    state = key_files.registry_state(config.signing_key, config.key_directory, config.key_registry_anchor)
    rows: list[dict[str, Any]] = []
    for kid, entry in sorted(state.keys.items()):
        status = "current" if kid == state.current else "revoked" if entry.is_revoked else "trusted"
        rows.append({**entry.as_dict(), "status": status, "source": "registry"})
    for index, path in enumerate(config.trusted_keys):
        public_key = key_files.load_public_key(path, f"Hardening.TrustedKeys[{index}]")
        kid = keymod.key_id(public_key)
        if kid not in state.keys:
            rows.append({"key_id": kid, "status": "trusted", "algorithm": keymod.algorithm_of(public_key),
                         "source": str(path)})
    print(json.dumps({"current": state.current, "keys": rows}, indent=2))
    return 0


def revoke(args: argparse.Namespace) -> int:
    config = _config(args.config)
    passphrase = passphrase_from_env(config, os.environ)
    if not passphrase:
        raise ConfigError(config.signing_key_passphrase_env, "is not set: a revocation is signed by the current key")
    entry = key_files.revoke_key(config.signing_key, passphrase, config.key_directory, args.key_id, _now(),
                                 config.key_registry_anchor)
    print(json.dumps(entry.as_dict()))
    return 0


def export_public(args: argparse.Namespace) -> int:
    config = _config(args.config)
    state = key_files.registry_state(config.signing_key, config.key_directory, config.key_registry_anchor)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for kid, entry in sorted(state.keys.items()):
        if entry.is_revoked:
            continue
        (out / f"{kid}.pub.pem").write_bytes(keymod.public_pem(entry.public_key))
        written.append(kid)
    for index, path in enumerate(config.trusted_keys):
        public_key = key_files.load_public_key(path, f"Hardening.TrustedKeys[{index}]")
        kid = keymod.key_id(public_key)
        (out / f"{kid}.pub.pem").write_bytes(keymod.public_pem(public_key))
        written.append(kid)
    print(json.dumps({"directory": str(out), "keys": sorted(set(written))}))
    return 0


def register(subparsers: Any) -> None:
    """Add the ``keys`` command group."""
    parser = subparsers.add_parser("keys", help="signing keys: generate, rotate, list, revoke, export-public")
    commands = parser.add_subparsers(dest="keys_command", required=True)

    command = commands.add_parser("generate", help="write a new passphrase-protected signing key")
    command.add_argument("--out", required=True)
    command.add_argument("--algorithm", choices=keymod.ALGORITHMS, default="ed25519")
    command.add_argument("--passphrase-env", default="HARDENING_KEY_PASSPHRASE")
    command.add_argument("--force", action="store_true", help="replace an existing file")
    command.set_defaults(handler=generate)

    command = commands.add_parser("rotate", help="make a new current key (stopped Orthanc)")
    command.add_argument("config", help="the Orthanc configuration (file or directory)")
    command.add_argument("--algorithm", choices=keymod.ALGORITHMS, default=None)
    command.set_defaults(handler=rotate)

    command = commands.add_parser("list", help="list the keys and their status")
    command.add_argument("config")
    command.set_defaults(handler=list_keys)

    command = commands.add_parser("revoke", help="stop trusting a retired key")
    command.add_argument("config")
    command.add_argument("key_id")
    command.set_defaults(handler=revoke)

    command = commands.add_parser("export-public", help="write the trusted public keys for offline verifiers")
    command.add_argument("config")
    command.add_argument("--out", required=True)
    command.set_defaults(handler=export_public)
