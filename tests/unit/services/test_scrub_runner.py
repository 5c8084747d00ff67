"""The scrub runner (resume without re-reading, cached signatures) and the progress line."""

from __future__ import annotations

import base64
import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from orthanc_hardening.canonical import canonical_json
from orthanc_hardening.commands.scrub import progress_line
from orthanc_hardening.errors import SealInvalidError, UnknownKeyError
from orthanc_hardening.integrity.scrub import IndexedInstance, Progress
from orthanc_hardening.seal.identity import InstanceIdentity
from orthanc_hardening.seal.keys import KeyRing, Signer
from orthanc_hardening.seal.manifest import build_manifest
from orthanc_hardening.seal.record import seal_attachment
from orthanc_hardening.services.scrub_runner import ScrubRunner
from orthanc_hardening.stores.manifest_store import ManifestStore
from orthanc_hardening.stores.scrub_state import ScrubState
from orthanc_hardening.stores.seal_store import SealReader, SQLiteSealStore
from orthanc_hardening.stores.signature_cache import ResigningVerifier, SignatureCache

NOW = datetime(2026, 1, 2, tzinfo=UTC)
SIGNER = Signer.of(ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32))))


def uuid_of(n: int) -> str:
    return f"{n:08x}-0000-4000-8000-000000000000"


class FakeIndex:
    def __init__(self, instances: list[IndexedInstance]) -> None:
        self.listed = instances

    def instances(self):
        return iter(self.listed)

    def study_instances(self, study_id: str):
        return [i for i in self.listed if i.study_id == study_id]


@pytest.fixture
def archive(tmp_path: Path):
    root = tmp_path / "storage"
    store = SQLiteSealStore(tmp_path / "seals.db")
    instances, seals = [], []
    for n in range(6):
        uuid = uuid_of(n)
        data = b"file %d" % n * 100
        path = root / uuid[:2] / uuid[2:4] / uuid
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        seal = seal_attachment(uuid, 1, data, InstanceIdentity("1.2", "1.2.1", f"1.2.1.{n}", "P", ""), SIGNER, NOW)
        store.put(seal)
        seals.append(seal)
        instances.append(IndexedInstance(f"inst-{n}", "study", "1.2.1", f"1.2.1.{n}", {1: uuid}))
    manifests = ManifestStore(tmp_path / "manifests.db")
    manifests.put(build_manifest("1.2", "study", seals, SIGNER, NOW))
    return root, tmp_path, FakeIndex(instances)


def runner_for(archive, **kwargs) -> ScrubRunner:
    root, base, index = archive
    return ScrubRunner(index, SealReader(base / "seals.db"), ManifestStore(base / "manifests.db"), root,
                       KeyRing(SIGNER), ScrubState(base / "scrub.db"), lambda: NOW, batch_seconds=0.0, **kwargs)


def test_clean_archive_has_no_findings(archive) -> None:
    runner = runner_for(archive)
    run_id = runner.state.start_run(NOW, {})
    report = runner.run(run_id)
    assert report["findings"] == [] and report["progress"]["done"] == 6 and runner.files_read == 6


def test_interrupted_scrub_resumes_without_rereading(archive) -> None:
    first = runner_for(archive)
    first.on_progress = lambda progress: first.stop.set() if progress.done >= 2 else None
    run_id = first.state.start_run(NOW, {})
    assert first.run(run_id)["state"] == "interrupted"
    assert first.files_read == 2
    second = runner_for(archive)
    report = second.run(run_id)
    assert report["state"] == "finished" and second.files_read == 4 and report["progress"]["done"] == 6


@pytest.mark.attack
def test_scrub_finds_tampered_file_and_manifest_mismatch(archive) -> None:
    root, _base, index = archive
    path = root / uuid_of(3)[:2] / uuid_of(3)[2:4] / uuid_of(3)
    path.write_bytes(b"X" + path.read_bytes()[1:])
    index.listed.pop(0)
    runner = runner_for(archive)
    report = runner.run(runner.state.start_run(NOW, {}))
    assert report["counts"]["tampered"] == 1 and report["counts"]["orphan-file"] == 1
    assert report["counts"]["orphan-seal"] == 1 and report["counts"]["manifest-mismatch"] == 1


def test_caching_verifier_verifies_once_and_never_caches_failures() -> None:
    calls = []

    class Ring:
        def verify(self, kid, data, signature):
            calls.append(kid)
            if signature == b"bad":
                raise SealInvalidError("bad")

    verifier = SignatureCache().verifier_for(Ring())
    verifier.verify("k", b"d", b"good")
    verifier.verify("k", b"d", b"good")
    assert calls == ["k"]
    for _ in range(2):
        with pytest.raises(SealInvalidError):
            verifier.verify("k", b"d", b"bad")
    assert len(calls) == 3


def test_progress_line() -> None:
    line = progress_line(Progress(5, 10, 5_000_000, 1.0), width=10)
    assert line.startswith("[#####-----]") and "5/10" in line and "ETA 1s" in line


@pytest.mark.attack
def test_forged_seal_row_is_caught_on_a_cached_rerun(archive) -> None:
    root, base, _index = archive
    verified = SignatureCache()
    first = runner_for(archive, cache=verified)
    assert first.run(first.state.start_run(NOW, {}))["findings"] == []
    assert len(verified) == 6
    stranger = Signer.of(ed25519.Ed25519PrivateKey.from_private_bytes(b"\x09" * 32))
    data = (root / uuid_of(2)[:2] / uuid_of(2)[2:4] / uuid_of(2)).read_bytes()
    forged = seal_attachment(uuid_of(2), 1, data, InstanceIdentity("1.2", "1.2.1", "1.2.1.2", "P", ""), stranger, NOW)
    SQLiteSealStore(base / "seals.db").put(forged)
    second = runner_for(archive, cache=verified)
    report = second.run(second.state.start_run(NOW, {}))
    assert [(f["kind"], f["uuid"]) for f in report["findings"]] == [("tampered", uuid_of(2))]


def resigning_runner(archive, cache: SignatureCache | None = None) -> ScrubRunner:
    cache = cache or SignatureCache()
    root, base, index = archive
    return ScrubRunner(index, SealReader(base / "seals.db"), ManifestStore(base / "manifests.db"), root,
                       cache.verifier_for(ResigningVerifier(KeyRing(SIGNER))), ScrubState(base / "scrub.db"),
                       lambda: NOW, batch_seconds=0.0, cache=cache)


def rewrite_seal_row(base: Path, uuid: str, change) -> None:
    db = sqlite3.connect(base / "seals.db", isolation_level=None)
    (record,) = db.execute("SELECT record FROM seals WHERE uuid = ?", (uuid,)).fetchone()
    raw = json.loads(record)
    change(raw)
    db.execute("UPDATE seals SET record = ? WHERE uuid = ?", (canonical_json(raw), uuid))
    db.close()


def flip_signature_bit(raw: dict) -> None:
    signature = bytearray(base64.b64decode(raw["signature"]))
    signature[0] ^= 0x01
    raw["signature"] = base64.b64encode(bytes(signature)).decode("ascii")


@pytest.mark.attack
@pytest.mark.parametrize("change", [flip_signature_bit, lambda raw: raw.update(sealed_at="2025-01-01T00:00:00.000000Z"),
                                    lambda raw: raw.update(sealed_after_ingest=True)],
                         ids=["signature-broken", "sealed-at-changed", "sealed-after-ingest-flipped"])
def test_seal_row_broken_under_an_intact_manifest_is_found_tampered(archive, change) -> None:
    # The file's digest and identity still match the signed manifest leaf; only the seal row is not
    # genuine. The read path refuses it, so the scrub must too: a manifest never vouches for a seal row.
    _root, base, _index = archive
    clean = resigning_runner(archive)
    assert clean.run(clean.state.start_run(NOW, {}))["findings"] == []
    rewrite_seal_row(base, uuid_of(4), change)
    runner = resigning_runner(archive)
    report = runner.run(runner.state.start_run(NOW, {}))
    assert [(f["kind"], f["uuid"]) for f in report["findings"]] == [("tampered", uuid_of(4))]
    assert "signature" in report["findings"][0]["detail"]


def test_resigning_verifier_accepts_exactly_what_the_key_ring_accepts() -> None:
    ring = KeyRing(SIGNER)
    verifier = ResigningVerifier(ring)
    good = SIGNER.sign(b"data")
    verifier.verify(SIGNER.key_id, b"data", good)
    with pytest.raises(SealInvalidError):
        verifier.verify(SIGNER.key_id, b"other data", good)
    with pytest.raises(SealInvalidError):
        verifier.verify(SIGNER.key_id, b"data", bytes([good[0] ^ 1]) + good[1:])
    with pytest.raises(UnknownKeyError):
        verifier.verify("0123456789abcdef", b"data", good)


def test_resigning_verifier_verifies_other_keys_and_follows_the_ring() -> None:
    ecdsa = Signer.of(ec.generate_private_key(ec.SECP256R1()))
    ring = KeyRing(ecdsa)
    verifier = ResigningVerifier(ring)
    verifier.verify(ecdsa.key_id, b"data", ecdsa.sign(b"data"))  # randomised signatures: verified as usual
    with pytest.raises(SealInvalidError):
        verifier.verify(ecdsa.key_id, b"data", ecdsa.sign(b"other"))
    ring.replace_signer(SIGNER)
    verifier.verify(SIGNER.key_id, b"data", SIGNER.sign(b"data"))
    verifier.verify(ecdsa.key_id, b"data", ecdsa.sign(b"data"))  # the previous key stays trusted
