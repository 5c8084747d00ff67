"""Signing keys: loading errors name Hardening.SigningKey, key ids, the key ring, the registry, rotation."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from orthanc_hardening.errors import ConfigError, SealInvalidError, UnknownKeyError
from orthanc_hardening.seal import keys as keymod
from orthanc_hardening.seal.keys import KeyRing, Signer
from orthanc_hardening.stores import key_files
from tests.unit.seal.conftest import NOW, fixed_signer

PASS = b"correct horse"


def write_key(path, private_key, passphrase=PASS):
    encryption = (serialization.BestAvailableEncryption(passphrase) if passphrase
                  else serialization.NoEncryption())
    path.write_bytes(private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               encryption))
    return path


@pytest.mark.parametrize("algorithm", keymod.ALGORITHMS)
def test_generate_load_sign_verify_each_algorithm(tmp_path, algorithm):
    path = tmp_path / "key.pem"
    made = key_files.generate_key(path, PASS, algorithm)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    loaded = key_files.load_signing_key(path, PASS)
    assert (loaded.key_id, loaded.algorithm) == (made.key_id, algorithm)
    ring = KeyRing(loaded)
    ring.verify(loaded.key_id, b"data", loaded.sign(b"data"))
    with pytest.raises(SealInvalidError):
        ring.verify(loaded.key_id, b"other", loaded.sign(b"data"))


def test_key_id_is_first_16_hex_of_sha256_of_der_spki():
    signer = fixed_signer()
    der = signer.public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert signer.key_id == hashlib.sha256(der).hexdigest()[:16]
    assert "private" not in repr(signer).lower()


def test_unreadable_key_file_names_the_config_key(tmp_path):
    with pytest.raises(ConfigError, match="cannot read") as caught:
        key_files.load_signing_key(tmp_path / "missing.pem", PASS)
    assert caught.value.key == "Hardening.SigningKey"


def test_wrong_passphrase_is_refused(tmp_path):
    path = write_key(tmp_path / "k.pem", ed25519.Ed25519PrivateKey.generate())
    with pytest.raises(ConfigError, match="wrong passphrase") as caught:
        key_files.load_signing_key(path, b"wrong")
    assert caught.value.key == "Hardening.SigningKey"
    with pytest.raises(ConfigError, match="no passphrase"):
        key_files.load_signing_key(path, None)


def test_unencrypted_key_is_refused(tmp_path):
    path = write_key(tmp_path / "k.pem", ed25519.Ed25519PrivateKey.generate(), passphrase=None)
    with pytest.raises(ConfigError, match="not an encrypted"):
        key_files.load_signing_key(path, PASS)


@pytest.mark.parametrize("private_key", [ec.generate_private_key(ec.SECP384R1()),
                                         rsa.generate_private_key(public_exponent=65537, key_size=1024)],
                         ids=["p384", "rsa1024"])
def test_unsupported_algorithm_is_refused(tmp_path, private_key):
    path = write_key(tmp_path / "k.pem", private_key)
    with pytest.raises(ConfigError, match="unsupported key algorithm"):
        key_files.load_signing_key(path, PASS)


def test_not_a_key_is_refused(tmp_path):
    path = tmp_path / "k.pem"
    path.write_bytes(b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n")
    with pytest.raises(ConfigError):
        key_files.load_signing_key(path, PASS)


@pytest.mark.attack
def test_key_ring_refuses_unknown_and_revoked_keys():
    current, old, stranger = fixed_signer("a"), fixed_signer("b"), fixed_signer("c")
    ring = KeyRing(current, {old.key_id: old.public_key})
    ring.verify(old.key_id, b"x", old.sign(b"x"))
    with pytest.raises(UnknownKeyError):
        ring.verify(stranger.key_id, b"x", stranger.sign(b"x"))
    revoked = KeyRing(current, {old.key_id: old.public_key}, revoked=[old.key_id])
    with pytest.raises(UnknownKeyError):
        revoked.verify(old.key_id, b"x", old.sign(b"x"))
    with pytest.raises(ConfigError, match="revoked"):
        KeyRing(current, revoked=[current.key_id])


def test_replace_signer_keeps_previous_trusted_and_notifies():
    first, second = fixed_signer("a"), fixed_signer("b")
    ring = KeyRing(first)
    seen = []
    ring.add_listener(seen.append)
    ring.replace_signer(second)
    assert ring.signer is second and seen == [second]
    ring.verify(first.key_id, b"x", first.sign(b"x"))
    assert set(ring.public_keys()) == {first.key_id, second.key_id}


def test_rotation_replaces_key_file_and_keeps_old_public_key_trusted(tmp_path):
    key_path, directory = tmp_path / "seal-key.pem", tmp_path / "keys"
    original = key_files.generate_key(key_path, PASS)
    old, new = key_files.rotate_key(key_path, directory, PASS, NOW)
    assert old.key_id == original.key_id and new.key_id != old.key_id
    assert key_files.load_signing_key(key_path, PASS).key_id == new.key_id  # same passphrase
    state = key_files.registry_state(key_path, directory)
    assert state.current == new.key_id
    assert state.keys[old.key_id].retired_at == "2026-01-02T03:04:05.678901Z"
    assert state.keys[new.key_id].retired_at == ""
    ring = key_files.load_key_ring(key_path, PASS, directory, (), NOW)
    assert ring.signer.key_id == new.key_id
    ring.verify(old.key_id, b"x", old.sign(b"x"))
    key_files.revoke_key(key_path, PASS, directory, old.key_id, NOW)
    ring = key_files.load_key_ring(key_path, PASS, directory, (), NOW)
    with pytest.raises(UnknownKeyError):
        ring.verify(old.key_id, b"x", old.sign(b"x"))
    with pytest.raises(ConfigError, match="not in the key registry"):
        key_files.revoke_key(key_path, PASS, directory, "0" * 16, NOW)
    with pytest.raises(ConfigError, match="current key"):
        key_files.revoke_key(key_path, PASS, directory, new.key_id, NOW)


def test_trusted_keys_files_are_trusted(tmp_path):
    key_path = tmp_path / "seal-key.pem"
    key_files.generate_key(key_path, PASS)
    other = Signer.of(ed25519.Ed25519PrivateKey.generate())
    pub = tmp_path / "old.pub.pem"
    pub.write_bytes(keymod.public_pem(other.public_key))
    ring = key_files.load_key_ring(key_path, PASS, tmp_path / "keys", [pub], NOW)
    ring.verify(other.key_id, b"x", other.sign(b"x"))
    bad = tmp_path / "bad.pem"
    bad.write_text("not a key")
    with pytest.raises(ConfigError) as caught:
        key_files.load_key_ring(key_path, PASS, tmp_path / "keys", [pub, bad], NOW)
    assert caught.value.key == "Hardening.TrustedKeys[1]"


def test_misuse_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="unknown algorithm"):
        keymod.generate_private_key("dsa")
    with pytest.raises(ValueError, match="passphrase"):
        keymod.encrypt_private_key(ed25519.Ed25519PrivateKey.generate(), b"")
    with pytest.raises(FileExistsError):
        key_files.generate_key(write_key(tmp_path / "k.pem", ed25519.Ed25519PrivateKey.generate()), PASS)
