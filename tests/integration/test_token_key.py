"""A hardened Orthanc whose signing key is in a PKCS#11 token (SoftHSM): seals, audit checkpoints
and registry entries are signed inside the token, rotation works, and no private key file exists."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from orthanc_hardening.stores import key_files
from tests.support.dicom import make_instance
from tests.support.server import REPO, OrthancServer
from tests.support.softhsm import make_softhsm

pytestmark = [pytest.mark.integration]


def test_orthanc_signs_with_a_key_that_never_leaves_the_token(start_orthanc, tmp_path):
    pytest.importorskip("pkcs11")
    hsm = make_softhsm(tmp_path / "softhsm")
    uri = hsm.uri("seal-key")
    env = {**os.environ, "SOFTHSM2_CONF": str(hsm.conf), "HARDENING_KEY_PASSPHRASE": hsm.pin,
           "PYTHONPATH": str(REPO / "plugin")}
    made = subprocess.run([sys.executable, "-m", "orthanc_hardening", "keys", "generate", "--out", uri],
                          capture_output=True, text=True, env=env, timeout=60, check=False)
    assert made.returncode == 0, made.stderr
    token_key = json.loads(made.stdout)["key_id"]

    anchor = tmp_path / "anchor" / "registry-anchor.json"
    server: OrthancServer = start_orthanc(
        hardening={"SigningKey": uri, "KeyRegistryAnchor": str(anchor)},
        env={"SOFTHSM2_CONF": str(hsm.conf), "HARDENING_KEY_PASSPHRASE": hsm.pin})
    before = server.upload(make_instance(patient_id="TOKEN-1"))["ID"]
    report = server.get(f"/hardening/instances/{before}/seal").json()
    assert report["verified"] is True and report["current_key"] == token_key
    assert report["attachments"][0]["seal"]["key_id"] == token_key

    rotated = server.post("/hardening/keys/rotate")
    assert rotated.status_code == 200, rotated.text
    assert rotated.json()["previous"] == token_key
    second = rotated.json()["current"]
    after = server.upload(make_instance(patient_id="TOKEN-2"))["ID"]
    server.restart()
    for instance_id, key in ((before, token_key), (after, second)):
        body = server.get(f"/hardening/instances/{instance_id}/seal").json()
        assert body["verified"] is True and body["attachments"][0]["seal"]["key_id"] == key
    verify = server.get("/hardening/audit/verify", user="auditor").json()
    assert verify["ok"] is True and set(verify["key_ids"]) <= {token_key, second}
    checks = {c["id"]: c for c in server.get("/hardening/posture").json()["checks"]}
    assert "PKCS#11 token" in checks["signing-key-permissions"]["evidence"]
    # No private key file was written: the only encrypted key file is the test harness's own
    # (unused) file key, which is neither of the token's keys.
    found = [path for path in server.home.rglob("*")
             if path.is_file() and b"ENCRYPTED PRIVATE KEY" in path.read_bytes()[:64]]
    unused = server.home / "keys" / "seal-key.pem"
    assert found == [unused]
    passphrase = (server.home / "keys" / "passphrase").read_bytes().strip()
    assert key_files.load_signing_key(unused, passphrase).key_id not in {token_key, second}
    assert json.loads(anchor.read_text())["key_id"] == second
