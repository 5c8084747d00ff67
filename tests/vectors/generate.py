"""Generate the seal vectors ``seal_*.json`` (run: ``python tests/vectors/generate.py``).

Fixed inputs → the expected canonical bytes, key id and signature of a seal. Ed25519 is
deterministic (RFC 8032), so its signatures are fixed; ECDSA and RSA-PSS are randomised, so
their vectors are verify-only. The canonical bytes are built here from the field list written
out by hand (not through ``seal/record.py``), and ``tests/unit/seal/test_record.py``
cross-checks the Ed25519 signatures with ``openssl pkeyutl -verify``.
Changing a vector changes the seal format: bump ``VERSION`` in ``seal/record.py``.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

HERE = Path(__file__).resolve().parent
CONTEXT = b"orthanc-hardening/seal/v1\x00"
ED25519_SEED = hashlib.sha256(b"orthanc-hardening seal test vector key").digest()
ECDSA_SCALAR = int.from_bytes(hashlib.sha256(b"orthanc-hardening ecdsa test vector key").digest(), "big") % (
    0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
)

CASES = [
    {
        "name": "dicom-file",
        "uuid": "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9",
        "content_type": 1,
        "data_hex": (b"\x00" * 128 + b"DICM" + b"orthanc-hardening vector").hex(),
        "study_uid": "1.2.826.0.1.3680043.8.498.1",
        "series_uid": "1.2.826.0.1.3680043.8.498.2",
        "sop_instance_uid": "1.2.826.0.1.3680043.8.498.3",
        "patient_id": "P-001",
        "index_tags_sha256": hashlib.sha256(b"index tags").hexdigest(),
        "sealed_at": "2026-01-02T03:04:05.678901Z",
        "sealed_after_ingest": False,
    },
    {
        "name": "until-pixel-data-after-ingest",
        "uuid": "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d",
        "content_type": 3,
        "data_hex": b"header only".hex(),
        "study_uid": "1.2.3",
        "series_uid": "1.2.3.4",
        "sop_instance_uid": "1.2.3.4.5",
        "patient_id": "Müller",
        "index_tags_sha256": "",
        "sealed_at": "2026-12-31T23:59:59.000000Z",
        "sealed_after_ingest": True,
    },
]


def key_id(public_key: object) -> str:
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)  # type: ignore[attr-defined]
    return hashlib.sha256(der).hexdigest()[:16]


def canonical(case: dict, kid: str) -> bytes:
    data = bytes.fromhex(case["data_hex"])
    fields = {
        "content_type": case["content_type"],
        "index_tags_sha256": case["index_tags_sha256"],
        "key_id": kid,
        "patient_id": case["patient_id"],
        "sealed_after_ingest": case["sealed_after_ingest"],
        "sealed_at": case["sealed_at"],
        "series_uid": case["series_uid"],
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "sop_instance_uid": case["sop_instance_uid"],
        "study_uid": case["study_uid"],
        "uuid": case["uuid"],
        "version": 1,
    }
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def main() -> None:
    ed_key = ed25519.Ed25519PrivateKey.from_private_bytes(ED25519_SEED)
    ec_key = ec.derive_private_key(ECDSA_SCALAR, ec.SECP256R1())
    out = []
    for case in CASES:
        kid = key_id(ed_key.public_key())
        body = canonical(case, kid)
        out.append({**case, "algorithm": "ed25519", "key_id": kid, "canonical": body.decode("ascii"),
                    "signature": base64.b64encode(ed_key.sign(CONTEXT + body)).decode("ascii"),
                    "deterministic": True})
        kid = key_id(ec_key.public_key())
        body = canonical(case, kid)
        out.append({**case, "algorithm": "ecdsa-p256", "key_id": kid, "canonical": body.decode("ascii"),
                    "signature": base64.b64encode(ec_key.sign(CONTEXT + body, ec.ECDSA(hashes.SHA256()))).decode(),
                    "deterministic": False})
    keys = {
        "ed25519_seed_hex": ED25519_SEED.hex(),
        "ed25519_public_pem": ed_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode(),
        "ecdsa_p256_scalar_hex": f"{ECDSA_SCALAR:064x}",
        "ecdsa_p256_public_pem": ec_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode(),
    }
    body = json.dumps({"keys": keys, "seals": out}, indent=2, ensure_ascii=False)
    (HERE / "seal_records.json").write_text(body + "\n")


if __name__ == "__main__":
    main()
