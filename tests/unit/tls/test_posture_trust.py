"""Posture checks of issue 16: passphrase beside the key, audit witness, audit database transport;
and the redaction of database URLs."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from orthanc_hardening.commands.devsetup import DevFiles
from orthanc_hardening.config import AuditConfig, database_transport_problem, redact_url
from orthanc_hardening.tls.facts import FileFacts
from orthanc_hardening.tls.posture import Status
from tests.unit.tls.conftest import secure_config
from tests.unit.tls.test_posture import HARDENING, STORAGE, report_for


@pytest.fixture
def secure(pki_files: DevFiles) -> dict[str, Any]:
    return secure_config(pki_files, STORAGE)


def with_audit(**changes: Any):
    return replace(HARDENING, audit=replace(HARDENING.audit, **changes))


def test_passphrase_file_beside_the_key_is_flagged(secure):
    assert report_for(secure).check("signing-key-passphrase").status is Status.PASS
    beside = HARDENING.signing_key.parent / "passphrase"
    report = report_for(secure, override={beside: FileFacts(exists=True, mode=0o600, readable=True)})
    check = report.check("signing-key-passphrase")
    assert check.status is Status.WARN and str(beside) in check.evidence
    assert "development only" in check.remedy


def test_missing_witness_is_a_warning_and_a_witness_file_passes(secure):
    check = report_for(secure).check("audit-witness")
    assert check.status is Status.WARN and "WitnessFile is not set" in check.evidence
    witnessed = with_audit(witness_file=Path("/var/log/orthanc-hardening/audit.witness"))
    assert report_for(secure, hardening=witnessed).check("audit-witness").status is Status.PASS


@pytest.mark.parametrize(("url", "problem"), [
    ("sqlite:///srv/audit.db", False),
    ("postgresql://orthanc@127.0.0.1:5432/audit", False),
    ("postgresql://orthanc@localhost/audit", False),
    ("postgresql:///audit?host=/run/postgresql", False),
    ("postgresql://orthanc@db.hospital.example/audit?sslmode=verify-full&sslrootcert=/etc/ca.pem", False),
    ("postgresql://orthanc@db.hospital.example/audit", True),
    ("postgresql://orthanc@db.hospital.example/audit?sslmode=require", True),
])
def test_audit_database_transport(url, problem):
    assert (database_transport_problem(url) is not None) is problem


@pytest.mark.attack
def test_plaintext_remote_audit_database_fails_posture_without_showing_its_password(secure):
    hardening = replace(HARDENING, audit=AuditConfig(database="postgresql://orthanc:s3cret@db.example/audit"))
    check = report_for(secure, hardening=hardening).check("audit-database-tls")
    assert check.status is Status.FAIL and "sslmode=prefer" in check.evidence
    assert "s3cret" not in check.evidence and "orthanc:***@db.example" in check.evidence


@pytest.mark.attack
def test_plaintext_remote_plugin_database_fails_posture_without_showing_its_password(secure):
    hardening = replace(HARDENING, database="postgresql://orthanc:s3cret@db.example/archive")
    check = report_for(secure, hardening=hardening).check("store-database-tls")
    assert check.status is Status.FAIL and "Hardening.Database" in check.evidence
    assert "s3cret" not in check.evidence and "orthanc:***@db.example" in check.evidence
    local = replace(HARDENING, database="postgresql://orthanc@127.0.0.1:5432/archive")
    assert report_for(secure, hardening=local).check("store-database-tls").status is Status.PASS
    assert all(c.id != "store-database-tls" for c in report_for(secure, hardening=HARDENING).checks)


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://orthanc:s3cret@db/audit", "postgresql://orthanc:***@db/audit"),
    ("postgresql://orthanc@db/audit?password=s3cret&sslmode=verify-full",
     "postgresql://orthanc@db/audit?password=***&sslmode=verify-full"),
    ("sqlite:///srv/audit.db", "sqlite:///srv/audit.db"),
])
def test_redacted_urls_never_show_the_password(url, shown):
    assert redact_url(url) == shown
