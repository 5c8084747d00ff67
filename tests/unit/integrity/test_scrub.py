"""Scrub planning, per-file checks and progress (pure)."""

from __future__ import annotations

import dataclasses
import hashlib
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from orthanc_hardening.integrity.scrub import (
    Finding,
    FindingKind,
    IndexedAttachment,
    Progress,
    count_by_kind,
    inspect_file,
    manifest_findings,
    plan_scrub,
)
from orthanc_hardening.seal.identity import InstanceIdentity
from orthanc_hardening.seal.keys import KeyRing, Signer
from orthanc_hardening.seal.manifest import CurrentInstance, build_manifest, inspect_manifest
from orthanc_hardening.seal.record import seal_attachment

NOW = datetime(2026, 1, 2, tzinfo=UTC)
SIGNER = Signer.of(ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
KEYRING = KeyRing(SIGNER)


def att(n: int, content_type: int = 1) -> IndexedAttachment:
    return IndexedAttachment(f"uuid-{n}", content_type, f"inst-{n}", "study-1", f"1.2.{n}")


def seal_of(n: int, data: bytes, content_type: int = 1):
    identity = InstanceIdentity("1.2", "1.2.0", f"1.2.{n}", "P", "")
    return seal_attachment(f"uuid-{n}", content_type, data, identity, SIGNER, NOW)


def test_clean_archive_plans_every_sealed_file() -> None:
    plan = plan_scrub([att(1), att(2)], [("uuid-1", 1), ("uuid-2", 1)], ["uuid-1", "uuid-2"])
    assert [a.uuid for a in plan.to_read] == ["uuid-1", "uuid-2"]
    assert plan.findings == () and plan.total == 2


def test_every_static_finding_kind() -> None:
    plan = plan_scrub(
        [att(1), att(2), att(3)],
        sealed=[("uuid-1", 1), ("uuid-2", 1), ("uuid-8", 1), ("uuid-9", 1)],
        on_disk=["uuid-1", "uuid-3", "uuid-7", "uuid-8"],
    )
    kinds = {(f.kind, f.uuid) for f in plan.findings}
    assert kinds == {
        (FindingKind.MISSING_FILE, "uuid-2"),
        (FindingKind.UNSEALED, "uuid-3"),
        (FindingKind.ORPHAN_FILE, "uuid-7"),
        (FindingKind.ORPHAN_FILE, "uuid-8"),
        (FindingKind.ORPHAN_SEAL, "uuid-8"),
        (FindingKind.ORPHAN_SEAL, "uuid-9"),
    }
    assert [a.uuid for a in plan.to_read] == ["uuid-1"]


def test_resumed_plan_skips_finished_files() -> None:
    plan = plan_scrub([att(1), att(2)], [("uuid-1", 1), ("uuid-2", 1)], ["uuid-1", "uuid-2"], done=[("uuid-1", 1)])
    assert [a.uuid for a in plan.to_read] == ["uuid-2"] and plan.total == 2


def test_good_file_passes() -> None:
    data = b"dicom bytes"
    seal = seal_of(1, data)
    assert inspect_file(att(1), hashlib.sha256(data).hexdigest(), len(data), seal, KEYRING) is None


@pytest.mark.attack
def test_flipped_byte_is_tampered() -> None:
    data = b"dicom bytes"
    seal = seal_of(1, data)
    bad = b"dicom bytez"
    finding = inspect_file(att(1), hashlib.sha256(bad).hexdigest(), len(bad), seal, KEYRING)
    assert finding is not None and finding.kind is FindingKind.TAMPERED and finding.uuid == "uuid-1"


@pytest.mark.attack
def test_seal_of_untrusted_key_is_tampered() -> None:
    data = b"x"
    stranger = Signer.of(ed25519.Ed25519PrivateKey.from_private_bytes(b"\x05" * 32))
    seal = seal_attachment("uuid-1", 1, data, InstanceIdentity("1.2", "1.2.0", "1.2.1", "P", ""), stranger, NOW)
    finding = inspect_file(att(1), hashlib.sha256(data).hexdigest(), 1, seal, KEYRING)
    assert finding is not None and finding.kind is FindingKind.TAMPERED and "untrusted" in finding.detail


@pytest.mark.attack
def test_index_pointing_at_another_instances_file_is_tampered() -> None:
    data = b"x"
    seal = seal_of(1, data)
    swapped = dataclasses.replace(att(1), sop_instance_uid="1.2.99")
    finding = inspect_file(swapped, hashlib.sha256(data).hexdigest(), 1, seal, KEYRING)
    assert finding is not None and finding.kind is FindingKind.TAMPERED and "1.2.99" in finding.detail


def test_seal_gone_since_planning_is_unsealed() -> None:
    finding = inspect_file(att(1), "0" * 64, 1, None, KEYRING)
    assert finding is not None and finding.kind is FindingKind.UNSEALED


def test_manifest_problems_become_findings() -> None:
    seals = [seal_of(n, b"%d" % n) for n in range(3)]
    manifest = build_manifest("1.2", "study-1", seals, SIGNER, NOW)
    current = [CurrentInstance(f"inst-{n}", s.sop_instance_uid, s.series_uid, s.uuid, s, True)
               for n, s in enumerate(seals[1:], start=1)]
    findings = manifest_findings(inspect_manifest(manifest, current, KEYRING))
    assert [(f.kind, f.sop_instance_uid, f.study_id) for f in findings] == [
        (FindingKind.MANIFEST_MISMATCH, "1.2.0", "study-1")]
    assert "missing-from-index" in findings[0].detail


def test_finding_round_trips() -> None:
    finding = Finding(FindingKind.ORPHAN_FILE, "d", uuid="u")
    assert Finding.from_dict(finding.to_dict()) == finding
    with pytest.raises(ValueError):
        Finding.from_dict({"kind": "nonsense", "detail": ""})
    with pytest.raises(ValueError):
        Finding.from_dict({"detail": ""})


def test_progress_rate_and_eta() -> None:
    progress = Progress(done=50, total=200, bytes_done=50_000_000, elapsed_seconds=10.0)
    assert progress.rate == 5.0 and progress.eta_seconds == 30.0 and progress.percent == 25.0
    assert progress.to_dict()["rate_mb_per_second"] == 5.0
    assert Progress(0, 10, 0, 0.0).eta_seconds is None
    assert Progress(10, 10, 0, 1.0).eta_seconds == 0.0
    assert Progress(0, 0, 0, 0.0).percent == 100.0


def test_count_by_kind_lists_every_kind() -> None:
    counts = count_by_kind([Finding(FindingKind.TAMPERED, "")])
    assert counts["tampered"] == 1 and counts["orphan-seal"] == 0 and len(counts) == len(FindingKind)
