"""Generate the audit chain vectors ``audit_chain.json`` (run: ``python tests/vectors/generate_audit.py``).

The row encoding and hashes are computed here by hand (string building, not ``json.dumps``), written
independently of ``audit/chain.py``; the checkpoint signature is made with a fixed Ed25519 key
(deterministic, RFC 8032) and checked with ``openssl pkeyutl -verify -rawin`` when openssl is
present. Changing a vector changes the stored format: bump ``audit/chain.FORMAT_VERSION``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

HERE = Path(__file__).resolve().parent
SEED = bytes(range(32))
GENESIS = "0" * 64
ORDER = ("action", "called_aet", "calling_aet", "detail", "event", "instance_count", "outcome", "patient_id",
         "prev_hash", "roles", "route", "seq", "series_uid", "source_ip", "study_uid", "time", "transport", "user",
         "v")

EVENTS = [
    {"time": "2026-01-02T03:04:05.000006Z", "event": "110100", "action": "E", "outcome": 0, "user": "orthanc-hardening",
     "roles": [], "source_ip": "", "calling_aet": "", "called_aet": "HARDENED", "transport": "internal",
     "route": "plugin", "patient_id": "", "study_uid": "", "series_uid": "", "instance_count": 0,
     "detail": "started"},
    {"time": "2026-01-02T03:04:06.123456Z", "event": "110103", "action": "R", "outcome": 0, "user": "alice",
     "roles": ["auditor"], "source_ip": "10.0.0.7", "calling_aet": "", "called_aet": "", "transport": "rest",
     "route": "GET /instances/x/file", "patient_id": "P-1", "study_uid": "1.2.3", "series_uid": "1.2.3.4",
     "instance_count": 1, "detail": "instance file \u00e9"},
    {"time": "2026-01-02T03:04:07.000000Z", "event": "110107", "action": "C", "outcome": 0, "user": "",
     "roles": [], "source_ip": "", "calling_aet": "CT01", "called_aet": "HARDENED", "transport": "dimse",
     "route": "C-STORE", "patient_id": "=cmd|' /C calc'!A0", "study_uid": "1.2.3", "series_uid": "1.2.3.5",
     "instance_count": 1, "detail": "C-STORE received"},
]


def _string(value: str) -> str:
    out = ['"']
    for char in value:
        code = ord(char)
        if char == '"':
            out.append('\\"')
        elif char == "\\":
            out.append("\\\\")
        elif code < 0x20 or code > 0x7E:
            out.append(f"\\u{code:04x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ",".join(_value(v) for v in value) + "]"
    return _string(str(value))


def canonical(fields: dict[str, object]) -> bytes:
    """Sorted keys, no spaces, ASCII with \\u escapes (hand-written)."""
    return ("{" + ",".join(f"{_string(k)}:{_value(fields[k])}" for k in ORDER) + "}").encode("ascii")


def build() -> dict[str, object]:
    key = Ed25519PrivateKey.from_private_bytes(SEED)
    public_der = key.public_key().public_bytes(serialization.Encoding.DER,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    key_id = hashlib.sha256(public_der).hexdigest()[:16]
    rows = []
    previous = GENESIS
    for seq, event in enumerate(EVENTS, start=1):
        fields = {**event, "seq": seq, "prev_hash": previous, "v": 1}
        digest = hashlib.sha256(bytes.fromhex(previous) + canonical(fields)).hexdigest()
        rows.append({**event, "seq": seq, "prev_hash": previous, "hash": digest,
                     "canonical": canonical(fields).decode("ascii")})
        previous = digest
    cp_time = "2026-01-02T03:05:00.000000Z"
    signed = ('{"domain":"orthanc-hardening audit checkpoint","hash":' + _string(previous) + ',"key_id":'
              + _string(key_id) + ',"seq":3,"time":' + _string(cp_time) + ',"v":1}').encode("ascii")
    signature = key.sign(signed)
    _check_with_openssl(key, signed, signature)
    return {
        "description": "audit hash chain v1: hash = SHA-256(prev_hash || canonical(row without hash))",
        "private_key_seed_hex": SEED.hex(),
        "key_id": key_id,
        "public_key_pem": key.public_key().public_bytes(serialization.Encoding.PEM,
                                                        serialization.PublicFormat.SubjectPublicKeyInfo).decode(),
        "rows": rows,
        "checkpoint": {"seq": 3, "hash": previous, "time": cp_time, "key_id": key_id,
                       "signed_bytes": signed.decode("ascii"), "signature_hex": signature.hex()},
    }


def _check_with_openssl(key: Ed25519PrivateKey, data: bytes, signature: bytes) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        return
    with tempfile.TemporaryDirectory() as tmp:
        pub = Path(tmp) / "pub.pem"
        pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo))
        (Path(tmp) / "data").write_bytes(data)
        (Path(tmp) / "sig").write_bytes(signature)
        subprocess.run([openssl, "pkeyutl", "-verify", "-pubin", "-inkey", str(pub), "-rawin", "-in",
                        str(Path(tmp) / "data"), "-sigfile", str(Path(tmp) / "sig")], check=True,
                       capture_output=True)


if __name__ == "__main__":
    (HERE / "audit_chain.json").write_text(json.dumps(build(), indent=2, sort_keys=True) + "\n")
