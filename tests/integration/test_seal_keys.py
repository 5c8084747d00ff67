"""Key rotation on a running Orthanc and offline: old seals keep verifying until the key is revoked."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.support.dicom import make_instance
from tests.support.server import REPO, OrthancServer

pytestmark = [pytest.mark.integration]


def cli(server: OrthancServer, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HARDENING_KEY_PASSPHRASE": server.env["HARDENING_KEY_PASSPHRASE"]}
    env["PYTHONPATH"] = str(REPO / "plugin")
    return subprocess.run([sys.executable, "-m", "orthanc_hardening", *args], capture_output=True, text=True,
                          env=env, timeout=60, check=False)


def report(server: OrthancServer, instance_id: str) -> dict:
    response = server.get(f"/hardening/instances/{instance_id}/seal")
    assert response.status_code == 200
    return response.json()


@pytest.mark.attack
def test_rotation_keeps_old_seals_until_old_key_is_revoked_even_if_listed_in_trusted_keys(start_orthanc, tmp_path):
    server = start_orthanc()
    before = server.upload(make_instance(patient_id="KEY-1"))["ID"]
    first_key = report(server, before)["current_key"]

    assert server.post("/hardening/keys/rotate", user="user").status_code == 403
    rotated = server.post("/hardening/keys/rotate")
    assert rotated.status_code == 200, rotated.text
    assert rotated.json()["previous"] == first_key
    second_key = rotated.json()["current"]
    assert second_key != first_key
    after = server.upload(make_instance(patient_id="KEY-2"))["ID"]

    assert report(server, before)["verified"] and report(server, after)["verified"]
    assert report(server, after)["attachments"][0]["seal"]["key_id"] == second_key
    keys = server.get("/hardening/keys").json()
    assert keys["current"] == second_key
    assert {k["key_id"]: k["status"] for k in keys["keys"]} == {first_key: "trusted", second_key: "current"}
    assert server.get("/hardening/keys", user="user").status_code == 403

    # After a restart, the registry still trusts the old key; the key file holds the new one.
    server.restart()
    assert server.get(f"/instances/{before}/file").status_code == 200
    assert report(server, before)["current_key"] == second_key

    # Offline: rotate again with the CLI (the same places as the REST rotation), list, export.
    server.stop()
    result = cli(server, "keys", "rotate", str(server.config_path))
    assert result.returncode == 0, result.stderr
    third_key = json.loads(result.stdout)["current"]
    listed = json.loads(cli(server, "keys", "list", str(server.config_path)).stdout)
    assert listed["current"] == third_key
    exported = tmp_path / "public"
    result = cli(server, "keys", "export-public", str(server.config_path), "--out", str(exported))
    assert result.returncode == 0, result.stderr
    assert {p.name for p in exported.iterdir()} == {f"{k}.pub.pem" for k in (first_key, second_key, third_key)}

    # Revoke the first key: its seals stop verifying, the others keep verifying.
    result = cli(server, "keys", "revoke", str(server.config_path), first_key)
    assert result.returncode == 0, result.stderr
    server.start()
    assert server.get(f"/instances/{before}/file").status_code in (409, 500)
    problems = [a["problem"] for a in report(server, before)["attachments"]]
    assert all("UnknownKeyError" in p for p in problems)
    assert server.get(f"/instances/{after}/file").status_code == 200

    # A revoked key stays revoked when an administrator (or an intruder who can edit the
    # configuration) lists it in TrustedKeys again: the signed revocation wins.
    server.stop()
    server.config["Hardening"]["TrustedKeys"] = [str(exported / f"{first_key}.pub.pem")]
    server.start()
    assert server.get(f"/instances/{before}/file").status_code in (409, 500)
    assert server.get(f"/instances/{after}/file").status_code == 200


def test_wrong_passphrase_refuses_to_start(start_orthanc):
    server = start_orthanc(env={"HARDENING_KEY_PASSPHRASE": "wrong"}, expect_failure=True)
    assert server.wait_exit(timeout=60) != 0
    assert "Hardening.SigningKey" in server.log_text()
