"""Seal records: canonical encoding, signatures (vectors, openssl), verification and attacks."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from orthanc_hardening.errors import SealInvalidError, SealMismatchError, UnknownKeyError
from orthanc_hardening.seal.identity import InstanceIdentity
from orthanc_hardening.seal.keys import KeyRing, Signer
from orthanc_hardening.seal.record import (
    SEAL_CONTEXT,
    Seal,
    canonical,
    check_identity,
    seal_attachment,
    sign_attachment,
    verify_seal,
)
from tests.unit.seal.conftest import NOW, fixed_signer

VECTORS = json.loads((Path(__file__).resolve().parents[2] / "vectors" / "seal_records.json").read_text())
UUID = "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9"
IDENTITY = InstanceIdentity("1.2.3", "1.2.3.4", "1.2.3.4.5", "P-1", "a" * 64)
DATA = b"\x00" * 128 + b"DICM" + bytes(range(256)) * 10


def vector_signer(algorithm: str) -> Signer:
    keys = VECTORS["keys"]
    if algorithm == "ed25519":
        return Signer.of(ed25519.Ed25519PrivateKey.from_private_bytes(bytes.fromhex(keys["ed25519_seed_hex"])))
    return Signer.of(ec.derive_private_key(int(keys["ecdsa_p256_scalar_hex"], 16), ec.SECP256R1()))


def vector_seal(vector: dict, signer: Signer) -> Seal:
    identity = InstanceIdentity(vector["study_uid"], vector["series_uid"], vector["sop_instance_uid"],
                                vector["patient_id"], vector["index_tags_sha256"])
    from datetime import datetime

    now = datetime.strptime(vector["sealed_at"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=NOW.tzinfo)
    return seal_attachment(vector["uuid"], vector["content_type"], bytes.fromhex(vector["data_hex"]), identity,
                           signer, now, sealed_after_ingest=vector["sealed_after_ingest"])


@pytest.mark.parametrize("vector", VECTORS["seals"], ids=lambda v: f"{v['algorithm']}-{v['name']}")
def test_vector_canonical_bytes_key_id_and_signature(vector):
    signer = vector_signer(vector["algorithm"])
    seal = vector_seal(vector, signer)
    assert signer.key_id == vector["key_id"]
    assert canonical(seal).decode("ascii") == vector["canonical"]
    if vector["deterministic"]:
        assert seal.signature == vector["signature"]
    published = Seal(**{**seal.to_dict(), "signature": vector["signature"]})
    verify_seal(published, bytes.fromhex(vector["data_hex"]), vector["uuid"], KeyRing(signer))


@pytest.mark.parametrize("vector", VECTORS["seals"], ids=lambda v: f"{v['algorithm']}-{v['name']}")
def test_the_bytes_made_while_signing_are_the_seals_own_encodings(vector):
    signer = vector_signer(vector["algorithm"])
    seal = vector_seal(vector, signer)
    identity = seal.identity
    signed = sign_attachment(seal.uuid, seal.content_type, bytes.fromhex(vector["data_hex"]), identity, signer,
                             NOW, sealed_after_ingest=seal.sealed_after_ingest)
    assert signed.signed == signed.seal.signed_bytes()
    assert signed.record == signed.seal.to_bytes()
    assert signed.signature == signed.seal.signature_bytes
    assert Seal.from_bytes(signed.record) == signed.seal
    verify_seal(signed.seal, bytes.fromhex(vector["data_hex"]), seal.uuid, KeyRing(signer))


ED25519_VECTORS = [v for v in VECTORS["seals"] if v["algorithm"] == "ed25519"]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
@pytest.mark.parametrize("vector", ED25519_VECTORS, ids=lambda v: v["name"])
def test_vector_signature_verifies_with_openssl(vector, tmp_path):
    (tmp_path / "pub.pem").write_text(VECTORS["keys"]["ed25519_public_pem"])
    (tmp_path / "msg").write_bytes(SEAL_CONTEXT + vector["canonical"].encode("ascii"))
    (tmp_path / "sig").write_bytes(base64.b64decode(vector["signature"]))
    ok = subprocess.run(["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", "pub.pem", "-rawin", "-in", "msg",
                         "-sigfile", "sig"], cwd=tmp_path, capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    changed = vector["canonical"].replace('"version":1', '"version":2')
    (tmp_path / "msg").write_bytes(SEAL_CONTEXT + changed.encode("ascii"))
    bad = subprocess.run(["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", "pub.pem", "-rawin", "-in", "msg",
                          "-sigfile", "sig"], cwd=tmp_path, capture_output=True, text=True, check=False)
    assert bad.returncode != 0


def test_seal_round_trips_through_bytes(signer, keyring):
    seal = seal_attachment(UUID, 1, DATA, IDENTITY, signer, NOW)
    again = Seal.from_bytes(seal.to_bytes())
    assert again == seal
    verify_seal(again, DATA, UUID, keyring)
    assert seal.sha256 == hashlib.sha256(DATA).hexdigest() and seal.size == len(DATA)
    assert seal.sealed_at == "2026-01-02T03:04:05.678901Z"


@pytest.mark.attack
def test_flipped_byte_fails_with_mismatch(signer, keyring):
    seal = seal_attachment(UUID, 1, DATA, IDENTITY, signer, NOW)
    tampered = bytearray(DATA)
    tampered[200] ^= 1
    with pytest.raises(SealMismatchError, match="SHA-256 differs"):
        verify_seal(seal, bytes(tampered), UUID, keyring)


@pytest.mark.attack
def test_truncated_bytes_fail_with_mismatch(signer, keyring):
    seal = seal_attachment(UUID, 1, DATA, IDENTITY, signer, NOW)
    with pytest.raises(SealMismatchError, match="bytes stored"):
        verify_seal(seal, DATA[:-1], UUID, keyring)


@pytest.mark.attack
def test_replayed_seal_on_other_attachment_fails(signer, keyring):
    seal = seal_attachment(UUID, 1, DATA, IDENTITY, signer, NOW)
    with pytest.raises(SealMismatchError, match="carries the seal of"):
        verify_seal(seal, DATA, "11111111-2222-4333-8444-555555555555", keyring)
    with pytest.raises(SealMismatchError, match="carries the seal of"):
        verify_seal(seal, DATA, UUID, keyring, content_type=3)


@pytest.mark.attack
def test_edited_seal_field_fails_signature(signer, keyring):
    seal = seal_attachment(UUID, 1, DATA, IDENTITY, signer, NOW)
    edited = dataclasses.replace(seal, patient_id="P-2")
    with pytest.raises(SealInvalidError, match="does not verify"):
        verify_seal(edited, DATA, UUID, keyring)


@pytest.mark.attack
def test_seal_signed_by_untrusted_key_fails_unknown_key(keyring):
    attacker = fixed_signer("attacker")
    seal = seal_attachment(UUID, 1, DATA, IDENTITY, attacker, NOW)
    with pytest.raises(UnknownKeyError, match=attacker.key_id):
        verify_seal(seal, DATA, UUID, keyring)


@pytest.mark.attack
def test_attacker_key_claiming_trusted_key_id_fails_signature(signer, keyring):
    attacker = fixed_signer("attacker")
    forged = seal_attachment(UUID, 1, DATA, IDENTITY, attacker, NOW)
    claimed = dataclasses.replace(forged, key_id=signer.key_id)
    with pytest.raises(SealInvalidError):
        verify_seal(claimed, DATA, UUID, keyring)


def test_check_identity_compares_non_empty_fields(signer):
    seal = seal_attachment(UUID, 1, DATA, IDENTITY, signer, NOW)
    check_identity(seal, InstanceIdentity(sop_instance_uid="1.2.3.4.5"))
    with pytest.raises(SealMismatchError, match="sop_instance_uid"):
        check_identity(seal, InstanceIdentity(sop_instance_uid="9.9"))
    with pytest.raises(SealMismatchError, match="patient_id"):
        check_identity(seal, InstanceIdentity(patient_id="OTHER"))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("uuid"), "missing"),
        (lambda d: d.update(extra=1), "unexpected"),
        (lambda d: d.update(version=2), "version"),
        (lambda d: d.update(version=True), "version"),
        (lambda d: d.update(size=-1), "size"),
        (lambda d: d.update(size="1"), "size"),
        (lambda d: d.update(key_id="XYZ"), "key_id"),
        (lambda d: d.update(sha256="0" * 63), "sha256"),
        (lambda d: d.update(sealed_at="yesterday"), "sealed_at"),
        (lambda d: d.update(signature="***"), "base64"),
        (lambda d: d.update(sealed_after_ingest=0), "boolean"),
        (lambda d: d.update(uuid=""), "uuid"),
    ],
)
def test_from_bytes_rejects_malformed_records(signer, change, message):
    raw = seal_attachment(UUID, 1, DATA, IDENTITY, signer, NOW).to_dict()
    change(raw)
    with pytest.raises(SealInvalidError, match=message):
        Seal.from_bytes(json.dumps(raw).encode())


def test_from_bytes_rejects_non_json():
    with pytest.raises(SealInvalidError, match="not JSON"):
        Seal.from_bytes(b"\xff\xfe")
    with pytest.raises(SealInvalidError, match="JSON object"):
        Seal.from_bytes(b"[]")


def test_misuse_is_a_value_error(signer):
    from datetime import datetime

    with pytest.raises(ValueError, match="timezone-aware"):
        seal_attachment(UUID, 1, DATA, IDENTITY, signer, datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="required"):
        seal_attachment("", 1, DATA, IDENTITY, signer, NOW)
