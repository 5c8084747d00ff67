"""``python -m orthanc_hardening posture``: reads Orthanc configurations, prints, exits 1 on critical."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from orthanc_hardening.cli import build_parser, main
from orthanc_hardening.commands.devsetup import DevFiles
from orthanc_hardening.commands.posture import (
    load_orthanc_configuration,
    run,
    strip_comments,
    substitute_environment,
)
from orthanc_hardening.errors import ConfigError
from tests.unit.tls.conftest import secure_config


def write(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(json.dumps(config, indent=2))
    return path


def run_command(*argv: str) -> tuple[int, str]:
    args = build_parser().parse_args(["posture", *argv])
    out = io.StringIO()
    return run(args, out), out.getvalue()


@pytest.fixture
def secure_file(pki_files: DevFiles, tmp_path: Path) -> Path:
    storage = tmp_path / "storage"
    storage.mkdir(mode=0o700)
    return write(tmp_path / "orthanc.json", secure_config(pki_files, storage))


def test_comments_are_stripped_outside_strings() -> None:
    text = '{ // a comment\n "Url": "http://x//y", /* block\n comment */ "N": 1 }'
    assert json.loads(strip_comments(text)) == {"Url": "http://x//y", "N": 1}


def test_environment_references_are_substituted() -> None:
    assert substitute_environment({"a": ["${HOME_X}/s"], "b": 4}, {"HOME_X": "/h"}) == {"a": ["/h/s"], "b": 4}


def test_directory_of_json_files_is_merged(tmp_path: Path) -> None:
    write(tmp_path / "a.json", {"SslEnabled": True})
    write(tmp_path / "b.json", {"DicomTlsEnabled": True})
    (tmp_path / "notes.txt").write_text("ignored")
    config, base = load_orthanc_configuration(tmp_path, {})
    assert config == {"SslEnabled": True, "DicomTlsEnabled": True} and base == tmp_path.resolve()


def test_key_set_twice_in_a_directory_is_an_error(tmp_path: Path) -> None:
    write(tmp_path / "a.json", {"SslEnabled": True})
    write(tmp_path / "b.json", {"SslEnabled": False})
    with pytest.raises(ConfigError, match="set twice"):
        load_orthanc_configuration(tmp_path, {})


def test_malformed_json_is_an_error_naming_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{ nope")
    with pytest.raises(ConfigError, match="not valid JSON") as caught:
        load_orthanc_configuration(bad, {})
    assert caught.value.key == str(bad)


def test_orthanc_default_configuration_exits_1(tmp_path: Path) -> None:
    # Orthanc's own defaults (commented file as `Orthanc --config=` writes it).
    path = tmp_path / "orthanc.json"
    path.write_text('{\n  // Orthanc defaults\n  "Name" : "MyOrthanc", /* nothing else */\n  "HttpPort" : 8042\n}\n')
    code, text = run_command(str(path), "--no-orthanc-probe", "--color", "never")
    assert code == 1
    assert "FAIL    critical  http-tls" in text and "3 critical" in text


def test_secure_configuration_exits_0(secure_file: Path) -> None:
    code, text = run_command(str(secure_file), "--no-orthanc-probe", "--color", "never")
    assert code == 0, text
    assert "0 critical" in text


def test_json_format_lists_every_check(secure_file: Path) -> None:
    code, text = run_command(str(secure_file), "--format", "json", "--no-orthanc-probe")
    report = json.loads(text)
    assert code == 0 and report["mode"] == "not configured" and report["lockdown"] == []
    ids = {c["id"] for c in report["checks"]}
    assert {"http-tls", "https-certificate", "dicom-tls", "http-default-credentials", "https-libssl"} <= ids


def test_json_format_shows_lockdown_for_enforce_mode(secure_file: Path, tmp_path: Path) -> None:
    config = json.loads(secure_file.read_text())
    config["SslEnabled"] = False
    config["Hardening"] = {"Mode": "enforce", "DataDirectory": str(tmp_path / "h")}
    path = write(tmp_path / "insecure.json", config)
    code, text = run_command(str(path), "--format", "json", "--no-orthanc-probe")
    assert code == 1 and json.loads(text)["lockdown"] == ["http-tls"]


def test_color_only_when_asked(secure_file: Path) -> None:
    _, plain = run_command(str(secure_file), "--no-orthanc-probe", "--color", "never")
    _, colored = run_command(str(secure_file), "--no-orthanc-probe", "--color", "always")
    assert "\033[" not in plain and "\033[32mPASS" in colored


def test_debian_orthanc_without_shim_is_reported(secure_file: Path, tmp_path: Path) -> None:
    # An "executable" that needs Debian's shared civetweb, probed with a library path
    # that holds no shim: libssl.so is OpenSSL 3 (no SSL_get_peer_certificate) or missing.
    fake_orthanc = tmp_path / "Orthanc"
    fake_orthanc.write_bytes(b"\x7fELF...\0libcivetweb.so.1\0libssl.so.3\0")
    empty = tmp_path / "empty"
    empty.mkdir()
    code, text = run_command(
        str(secure_file), "--format", "json", "--orthanc", str(fake_orthanc), "--ld-library-path", str(empty)
    )
    check = next(c for c in json.loads(text)["checks"] if c["id"] == "https-libssl")
    assert (code, check["status"], check["severity"]) == (1, "fail", "critical")
    assert "libssl-shim" in check["remedy"]


def test_unreadable_configuration_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["posture", str(tmp_path / "missing.json")]) == 2
    assert "cannot be read" in capsys.readouterr().err
