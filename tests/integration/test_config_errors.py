"""An invalid "Hardening" section stops Orthanc before it serves, with one line naming the key."""

from __future__ import annotations

import pytest
import requests

LINE = "orthanc-hardening refuses to start: "


@pytest.mark.parametrize(
    ("hardening", "key", "problem"),
    [
        ({"Mood": "enforce"}, "Hardening.Mood", "unknown key"),
        ({"Mode": "strict"}, "Hardening.Mode", "is not one of"),
        ({"Auditors": "auditor"}, "Hardening.Auditors", "must be a list"),
        ({"Audit": {"Database": "mysql://db/audit"}}, "Hardening.Audit.Database", "unsupported database URL"),
        ({"TrustedKeys": ["/nonexistent/old-key.pub.pem"]}, "Hardening.TrustedKeys[0]", "does not exist"),
    ],
)
def test_invalid_hardening_key_stops_orthanc_naming_the_key(start_orthanc, hardening, key, problem) -> None:
    server = start_orthanc(hardening=hardening, expect_failure=True)
    assert server.wait_exit(timeout=60) != 0
    lines = [line for line in server.log_text().splitlines() if LINE in line]
    assert len(lines) == 1, server.log_tail()
    assert f"{LINE}{key}: " in lines[0] and problem in lines[0]
    with pytest.raises(requests.ConnectionError):
        server.get("/system", timeout=2)


def test_section_that_is_not_an_object_stops_orthanc(start_orthanc) -> None:
    server = start_orthanc(config={"Hardening": "enforce"}, expect_failure=True)
    assert server.wait_exit(timeout=60) != 0
    assert f"{LINE}Hardening: must be a JSON object" in server.log_text()


def test_wrong_key_passphrase_stops_orthanc(start_orthanc) -> None:
    server = start_orthanc(env={"HARDENING_KEY_PASSPHRASE": "not-the-passphrase"}, expect_failure=True)
    assert server.wait_exit(timeout=60) != 0
    line = next(line for line in server.log_text().splitlines() if LINE in line)
    assert f"{LINE}Hardening.SigningKey: " in line
    assert "not-the-passphrase" not in server.log_text()


def test_missing_signing_key_stops_orthanc(start_orthanc, tmp_path) -> None:
    server = start_orthanc(hardening={"SigningKey": str(tmp_path / "absent.pem")}, expect_failure=True)
    assert server.wait_exit(timeout=60) != 0
    assert f"{LINE}Hardening.SigningKey: " in server.log_text()
