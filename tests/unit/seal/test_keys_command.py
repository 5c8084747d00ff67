"""``python -m orthanc_hardening keys generate`` and the offline key commands on a configuration."""

from __future__ import annotations

import json

from orthanc_hardening.cli import main
from orthanc_hardening.stores import key_files


def test_keys_generate_rotate_list_with_env_passphrase(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HARDENING_KEY_PASSPHRASE", "s3cret")
    key = tmp_path / "seal-key.pem"
    assert main(["keys", "generate", "--out", str(key)]) == 0
    made = json.loads(capsys.readouterr().out)
    assert key_files.load_signing_key(key, b"s3cret").key_id == made["key_id"]
    assert main(["keys", "generate", "--out", str(key)]) == 2  # refuses to overwrite
    capsys.readouterr()
    config = tmp_path / "orthanc.json"
    config.write_text(json.dumps({"Hardening": {"DataDirectory": str(tmp_path / "data"), "SigningKey": str(key)}}))
    assert main(["keys", "rotate", str(config)]) == 0
    rotated = json.loads(capsys.readouterr().out)
    assert rotated["previous"] == made["key_id"]
    assert main(["keys", "list", str(config)]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["current"] == rotated["current"]
    assert {k["key_id"]: k["status"] for k in listed["keys"]} == {made["key_id"]: "trusted",
                                                                  rotated["current"]: "current"}


def test_keys_generate_without_passphrase_and_terminal_fails(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("HARDENING_KEY_PASSPHRASE", raising=False)
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    assert main(["keys", "generate", "--out", str(tmp_path / "k.pem")]) == 2
    assert "HARDENING_KEY_PASSPHRASE" in capsys.readouterr().err
    assert not (tmp_path / "k.pem").exists()
