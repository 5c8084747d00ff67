"""Study manifests: RFC 6962 Merkle hashing (vectors + an independent recursive implementation),
the signed record, and the comparison with the study as it is now."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from orthanc_hardening.errors import SealInvalidError, SealMismatchError, UnknownKeyError
from orthanc_hardening.seal.identity import InstanceIdentity
from orthanc_hardening.seal.keys import KeyRing, Signer
from orthanc_hardening.seal.manifest import (
    CurrentInstance,
    Manifest,
    ManifestLeaf,
    ProblemKind,
    build_manifest,
    inspect_manifest,
    leaf_hash,
    merkle_root,
    node_hash,
    verify_manifest,
)
from orthanc_hardening.seal.record import Seal, seal_attachment

VECTORS = Path(__file__).resolve().parents[2] / "vectors"
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
STUDY = "1.2.3.4"
OTHER_STUDY = "1.2.3.9"


def recursive_mth(leaves: list[bytes]) -> bytes:
    """RFC 6962 §2.1, written from the RFC text, independent of the code under test."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1 << (len(leaves) - 1).bit_length() - 1
    return hashlib.sha256(b"\x01" + recursive_mth(leaves[:k]) + recursive_mth(leaves[k:])).digest()


def load(name: str) -> list[dict]:
    return json.loads((VECTORS / name).read_text())["cases"]


# -- Merkle hashing -----------------------------------------------------------------------------


@pytest.mark.parametrize("case", load("merkle_rfc6962.json"), ids=lambda c: f"n{len(c['leaves'])}")
def test_merkle_root_matches_vectors(case: dict) -> None:
    leaves = [bytes.fromhex(x) for x in case["leaves"]]
    assert merkle_root(leaves).hex() == case["root"]
    if case["ct_root"] is not None:
        assert merkle_root(leaves).hex() == case["ct_root"]


@pytest.mark.parametrize("n", range(0, 70))
def test_iterative_root_equals_recursive_definition(n: int) -> None:
    rng = random.Random(n)
    leaves = [rng.randbytes(rng.randrange(0, 40)) for _ in range(n)]
    assert merkle_root(leaves) == recursive_mth(leaves)


def test_rfc6962_properties() -> None:
    a, b, c = b"a", b"b", b"c"
    assert merkle_root([]) == hashlib.sha256(b"").digest()
    assert merkle_root([a]) == leaf_hash(a) == hashlib.sha256(b"\x00a").digest()
    assert merkle_root([a, b]) == node_hash(leaf_hash(a), leaf_hash(b))
    # n = 3 splits at k = 2: the left subtree is complete, the right one is the lone leaf.
    assert merkle_root([a, b, c]) == node_hash(node_hash(leaf_hash(a), leaf_hash(b)), leaf_hash(c))


def test_leaf_and_node_domains_are_separated() -> None:
    # A second-preimage attack presents an interior node as a leaf: the prefixes prevent it.
    left, right = leaf_hash(b"x"), leaf_hash(b"y")
    assert merkle_root([left + right]) != merkle_root([b"x", b"y"])


def test_order_and_content_change_the_root() -> None:
    assert merkle_root([b"a", b"b"]) != merkle_root([b"b", b"a"])
    assert merkle_root([b"a", b"b"]) != merkle_root([b"a", b"b", b"b"])


@pytest.mark.parametrize("case", load("merkle_manifest.json"), ids=lambda c: f"n{len(c['leaves'])}")
def test_manifest_leaf_encoding_matches_vectors(case: dict) -> None:
    leaves = [ManifestLeaf(**x) for x in case["leaves"]]
    assert [leaf.leaf_bytes().decode() for leaf in leaves] == case["leaf_inputs"]
    assert merkle_root([leaf.leaf_bytes() for leaf in leaves]).hex() == case["root"]


# -- signed manifests ---------------------------------------------------------------------------


@pytest.fixture
def signer() -> Signer:
    return Signer.of(ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32))))


@pytest.fixture
def keyring(signer: Signer) -> KeyRing:
    return KeyRing(signer)


def make_seal(signer: Signer, n: int, study: str = STUDY, series: str = "1.2.3.4.1") -> Seal:
    identity = InstanceIdentity(study, series, f"{study}.{n}", "P1", hashlib.sha256(b"%d" % n).hexdigest())
    return seal_attachment(f"uuid-{study}-{n}", 1, b"file %d of %s" % (n, study.encode()), identity, signer, NOW)


def current_of(seals: list[Seal]) -> list[CurrentInstance]:
    return [CurrentInstance(f"id-{s.sop_instance_uid}", s.sop_instance_uid, s.series_uid, s.uuid, s, True)
            for s in seals]


@pytest.fixture
def seals(signer: Signer) -> list[Seal]:
    return [make_seal(signer, n, series="1.2.3.4.1" if n < 3 else "1.2.3.4.2") for n in range(5)]


def test_manifest_round_trips_and_verifies(signer: Signer, keyring: KeyRing, seals: list[Seal]) -> None:
    manifest = build_manifest(STUDY, "study-id", reversed(seals), signer, NOW)
    assert Manifest.from_bytes(manifest.to_bytes()) == manifest
    assert [leaf.sop_instance_uid for leaf in manifest.leaves] == sorted(s.sop_instance_uid for s in seals)
    assert manifest.instance_count == 5 and manifest.patient_id == "P1"
    assert [s.instance_count for s in manifest.series] == [3, 2]
    report = inspect_manifest(manifest, current_of(seals), keyring)
    assert report.ok and report.checked == 5
    assert report.series == {"1.2.3.4.1": "ok", "1.2.3.4.2": "ok"}
    verify_manifest(manifest, current_of(seals), keyring)


def test_manifest_ignores_non_dicom_seals(signer: Signer, seals: list[Seal]) -> None:
    extra = dataclasses.replace(seals[0], content_type=3, uuid="other")
    assert build_manifest(STUDY, "s", [*seals, extra], signer, NOW).instance_count == 5


def test_empty_study_manifest(signer: Signer, keyring: KeyRing) -> None:
    manifest = build_manifest(STUDY, "s", [], signer, NOW)
    assert manifest.root == hashlib.sha256(b"").hexdigest()
    verify_manifest(manifest, [], keyring)


@pytest.mark.attack
def test_forged_manifest_signature_is_rejected(signer: Signer, keyring: KeyRing, seals: list[Seal]) -> None:
    manifest = build_manifest(STUDY, "s", seals, signer, NOW)
    forged = dataclasses.replace(manifest, study_id="another")
    report = inspect_manifest(forged, current_of(seals), keyring)
    assert [p.kind for p in report.problems] == [ProblemKind.BAD_SIGNATURE]
    with pytest.raises(SealInvalidError):
        verify_manifest(forged, current_of(seals), keyring)


@pytest.mark.attack
def test_manifest_signed_by_unknown_key_is_rejected(seals: list[Seal], keyring: KeyRing) -> None:
    stranger = Signer.of(ed25519.Ed25519PrivateKey.from_private_bytes(b"\x07" * 32))
    manifest = build_manifest(STUDY, "s", seals, stranger, NOW)
    assert [p.kind for p in inspect_manifest(manifest, current_of(seals), keyring).problems] == [
        ProblemKind.UNKNOWN_KEY]
    with pytest.raises(UnknownKeyError):
        verify_manifest(manifest, current_of(seals), keyring)


@pytest.mark.attack
def test_manifest_with_dropped_leaf_and_recomputed_root_fails_signature(signer: Signer, keyring: KeyRing,
                                                                        seals: list[Seal]) -> None:
    manifest = build_manifest(STUDY, "s", seals, signer, NOW)
    body = json.loads(manifest.to_bytes())
    body["leaves"] = body["leaves"][1:]
    body["instance_count"] = 4
    with pytest.raises(SealInvalidError, match="root"):
        Manifest.from_dict(body)
    shorter = build_manifest(STUDY, "s", seals[1:], signer, NOW)
    tampered = dataclasses.replace(shorter, signature=manifest.signature)
    with pytest.raises(SealInvalidError):
        verify_manifest(tampered, current_of(seals[1:]), keyring)


@pytest.mark.parametrize("mutate", [
    lambda b: b.pop("root"),
    lambda b: b.update(version=2),
    lambda b: b.update(key_id="xyz"),
    lambda b: b.update(instance_count=-1),
    lambda b: b.update(extra=1),
    lambda b: b.update(signature="not base64!"),
    lambda b: b["leaves"][0].update(sha256="00"),
    lambda b: b["leaves"].reverse(),
    lambda b: b["series"].pop(),
])
def test_malformed_manifest_is_refused(signer: Signer, seals: list[Seal], mutate) -> None:
    body = json.loads(build_manifest(STUDY, "s", seals, signer, NOW).to_bytes())
    mutate(body)
    with pytest.raises(SealInvalidError):
        Manifest.from_dict(body)


def test_not_json_is_refused() -> None:
    with pytest.raises(SealInvalidError):
        Manifest.from_bytes(b"\xff{")


def test_naive_time_is_a_caller_bug(signer: Signer, seals: list[Seal]) -> None:
    with pytest.raises(ValueError):
        build_manifest(STUDY, "s", seals, signer, datetime(2026, 1, 1))


@pytest.mark.attack
def test_instance_deleted_from_index_is_named(signer: Signer, keyring: KeyRing, seals: list[Seal]) -> None:
    manifest = build_manifest(STUDY, "s", seals, signer, NOW)
    report = inspect_manifest(manifest, current_of(seals[1:]), keyring)
    assert [(p.kind, p.sop_instance_uid) for p in report.problems] == [
        (ProblemKind.MISSING_FROM_INDEX, seals[0].sop_instance_uid)]
    assert report.series["1.2.3.4.1"] == "problem" and report.series["1.2.3.4.2"] == "ok"
    with pytest.raises(SealMismatchError, match=seals[0].sop_instance_uid):
        verify_manifest(manifest, current_of(seals[1:]), keyring)


@pytest.mark.attack
def test_instance_file_deleted_is_named(signer: Signer, keyring: KeyRing, seals: list[Seal]) -> None:
    manifest = build_manifest(STUDY, "s", seals, signer, NOW)
    current = current_of(seals)
    current[2] = dataclasses.replace(current[2], file_present=False)
    report = inspect_manifest(manifest, current, keyring)
    assert [(p.kind, p.instance_id) for p in report.problems] == [
        (ProblemKind.MISSING_FROM_DISK, current[2].instance_id)]


@pytest.mark.attack
def test_foreign_instance_added_to_index_is_named(signer: Signer, keyring: KeyRing, seals: list[Seal]) -> None:
    manifest = build_manifest(STUDY, "s", seals, signer, NOW)
    foreign = CurrentInstance("id-foreign", "9.9.9", "1.2.3.4.1", "uuid-foreign", None, True)
    report = inspect_manifest(manifest, [*current_of(seals), foreign], keyring)
    assert sorted(p.kind.value for p in report.problems) == ["not-in-manifest", "unsealed"]
    assert {p.sop_instance_uid for p in report.problems} == {"9.9.9"}


@pytest.mark.attack
def test_instances_swapped_between_studies_are_named(signer: Signer, keyring: KeyRing, seals: list[Seal]) -> None:
    theirs = [make_seal(signer, n, study=OTHER_STUDY, series="1.2.3.9.1") for n in range(2)]
    mine = build_manifest(STUDY, "a", seals, signer, NOW)
    other = build_manifest(OTHER_STUDY, "b", theirs, signer, NOW)
    # The attacker moves instance 0 of each study under the other study in the index.
    now_mine = [*current_of(seals[1:]), current_of(theirs[:1])[0]]
    now_theirs = [*current_of(theirs[1:]), current_of(seals[:1])[0]]
    report = inspect_manifest(mine, now_mine, keyring)
    kinds = {(p.kind, p.sop_instance_uid) for p in report.problems}
    assert (ProblemKind.SWAPPED, theirs[0].sop_instance_uid) in kinds
    assert (ProblemKind.NOT_IN_MANIFEST, theirs[0].sop_instance_uid) in kinds
    assert (ProblemKind.MISSING_FROM_INDEX, seals[0].sop_instance_uid) in kinds
    assert (ProblemKind.SWAPPED, seals[0].sop_instance_uid) in {
        (p.kind, p.sop_instance_uid) for p in inspect_manifest(other, now_theirs, keyring).problems}


@pytest.mark.attack
def test_instance_replaced_under_same_uid_is_named(signer: Signer, keyring: KeyRing, seals: list[Seal]) -> None:
    manifest = build_manifest(STUDY, "s", seals, signer, NOW)
    identity = seals[1].identity
    replaced = seal_attachment("uuid-new", 1, b"other pixels", identity, signer, NOW)
    current = current_of(seals)
    current[1] = CurrentInstance("id-x", identity.sop_instance_uid, identity.series_uid, "uuid-new", replaced, True)
    assert [p.kind for p in inspect_manifest(manifest, current, keyring).problems] == [ProblemKind.CHANGED]


def test_report_serialises(signer: Signer, keyring: KeyRing, seals: list[Seal]) -> None:
    manifest = build_manifest(STUDY, "s", seals, signer, NOW)
    body = inspect_manifest(manifest, current_of(seals[1:]), keyring).to_dict()
    assert json.loads(json.dumps(body))["problems"][0]["kind"] == "missing-from-index"
    assert body["ok"] is False
