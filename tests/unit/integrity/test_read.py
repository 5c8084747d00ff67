"""Verification on read: hash + seal + signature, the signature cache, the unsealed policy."""

from __future__ import annotations

import dataclasses

import pytest

from orthanc_hardening.config import UnsealedPolicy
from orthanc_hardening.errors import SealInvalidError, SealMismatchError, SealMissingError, UnknownKeyError
from orthanc_hardening.integrity.legacy import check_unsealed, received_before
from orthanc_hardening.integrity.read import verify_before_read, verify_read
from orthanc_hardening.seal.identity import InstanceIdentity
from orthanc_hardening.seal.keys import KeyRing
from orthanc_hardening.seal.record import seal_attachment
from orthanc_hardening.stores.signature_cache import SignatureCache
from tests.unit.seal.conftest import NOW, fixed_signer

UUID = "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9"
DATA = b"DICOM bytes" * 100


def check_read(uuid, content_type, data, seal, ring, cache=None, record=None, legacy=True):
    return verify_read(uuid, content_type, data, seal, ring, UnsealedPolicy.SERVE_AND_FLAG, lambda: legacy,
                       cache, record)


class CountingRing:
    def __init__(self, ring):
        self.ring, self.calls = ring, 0

    def verify(self, kid, data, signature):
        self.calls += 1
        self.ring.verify(kid, data, signature)


@pytest.fixture
def sealed():
    signer = fixed_signer()
    return signer, seal_attachment(UUID, 1, DATA, InstanceIdentity(sop_instance_uid="1.2"), signer, NOW)


def test_verified_read_returns_seal_and_digest_and_caches_signature(sealed):
    signer, seal = sealed
    ring, cache = CountingRing(KeyRing(signer)), SignatureCache()
    first = check_read(UUID, 1, DATA, seal, ring, cache)
    check_read(UUID, 1, DATA, seal, ring, cache)
    assert first.seal == seal and first.is_sealed and first.sha256 == seal.sha256
    assert ring.calls == 1
    cache.clear()
    check_read(UUID, 1, DATA, seal, ring, cache)
    assert ring.calls == 2


@pytest.mark.attack
def test_cache_never_covers_changed_bytes_or_record(sealed):
    signer, seal = sealed
    ring, cache = KeyRing(signer), SignatureCache()
    check_read(UUID, 1, DATA, seal, ring, cache)
    with pytest.raises(SealMismatchError):
        check_read(UUID, 1, DATA + b"x", seal, ring, cache)
    with pytest.raises(SealInvalidError):
        check_read(UUID, 1, DATA, dataclasses.replace(seal, patient_id="X"), ring, cache)
    other = fixed_signer("rotated-out")
    with pytest.raises(UnknownKeyError):
        check_read(UUID, 1, DATA, seal, KeyRing(other), SignatureCache())


def test_unsealed_read_reports_no_seal():
    result = check_read(UUID, 1, DATA, None, KeyRing(fixed_signer()))
    assert result.seal is None and not result.is_sealed


@pytest.mark.attack
def test_unsealed_read_of_data_stored_after_sealing_began_raises():
    with pytest.raises(SealMissingError, match="stored after sealing began"):
        check_read(UUID, 1, DATA, None, KeyRing(fixed_signer()), legacy=False)
    with pytest.raises(SealMissingError, match="UnsealedPolicy is refuse"):
        verify_read(UUID, 1, DATA, None, KeyRing(fixed_signer()), UnsealedPolicy.REFUSE, lambda: True)


@pytest.mark.parametrize(
    ("policy", "legacy", "refused"),
    [
        (UnsealedPolicy.SERVE_AND_FLAG, True, False),
        (UnsealedPolicy.SERVE_AND_FLAG, False, True),
        (UnsealedPolicy.REFUSE, True, True),
        (UnsealedPolicy.REFUSE, False, True),
    ],
)
def test_unsealed_policy(policy, legacy, refused):
    if refused:
        with pytest.raises(SealMissingError):
            check_unsealed(UUID, 1, policy, legacy)
    else:
        check_unsealed(UUID, 1, policy, legacy)


@pytest.mark.attack
def test_deleted_seal_of_recent_instance_is_not_legacy():
    assert received_before("20250101T000000", "20260101T000000")
    assert not received_before("20260101T000001", "20260101T000000")
    assert not received_before(None, "20260101T000000")
    assert not received_before("20250101T000000", "")


def test_cache_parses_a_verified_record_once_and_stays_bounded(sealed):
    signer, seal = sealed
    ring, cache = CountingRing(KeyRing(signer)), SignatureCache(limit=2)
    record = seal.to_bytes()
    parsed = cache.parse_seal(record)
    assert parsed == seal and parsed is not seal  # not verified yet: parsed from the bytes
    check_read(UUID, 1, DATA, parsed, ring, cache, record)
    assert cache.parse_seal(record) is parsed and ring.calls == 1
    others = [seal_attachment(f"{UUID[:-1]}{i}", 1, DATA, InstanceIdentity(), signer, NOW) for i in range(3)]
    for other in others:
        cache.verify_seal(other, ring)
    assert len(cache) == 2
    assert cache.parse_seal(record) is not parsed  # the least recently used record was dropped


@pytest.mark.attack
def test_remembered_seal_does_not_cover_an_edited_record(sealed):
    signer, seal = sealed
    ring, cache = CountingRing(KeyRing(signer)), SignatureCache()
    cache.remember_seal(seal.to_bytes(), seal)
    check_read(UUID, 1, DATA, cache.parse_seal(seal.to_bytes()), ring, cache, seal.to_bytes())
    assert ring.calls == 0
    edited = dataclasses.replace(seal, patient_id="X")
    record = edited.to_bytes()
    with pytest.raises(SealInvalidError):
        check_read(UUID, 1, DATA, cache.parse_seal(record), ring, cache, record)
    assert ring.calls == 1


def test_unset_unsealed_policy_refuses_unless_legacy_attachments_are_still_unsealed():
    from orthanc_hardening.config import UnsealedPolicy
    from orthanc_hardening.integrity.legacy import default_unsealed_policy

    assert default_unsealed_policy(0) is UnsealedPolicy.REFUSE  # fresh, or seal-existing done
    assert default_unsealed_policy(3) is UnsealedPolicy.SERVE_AND_FLAG  # migration still under way


def check_before_read(seal, size=None, uuid=UUID, content_type=1, ring=None, policy=UnsealedPolicy.SERVE_AND_FLAG,
                      legacy=True):
    return verify_before_read(uuid, content_type, len(DATA) if size is None else size, seal,
                              ring or KeyRing(fixed_signer()), policy,
                              lambda: legacy)


def test_check_before_read_passes_what_verify_read_passes(sealed):
    _signer, seal = sealed
    assert check_before_read(seal) == seal
    assert check_before_read(None, legacy=True) is None


@pytest.mark.attack
def test_check_before_read_refuses_a_moved_resized_forged_or_foreign_seal(sealed):
    _signer, seal = sealed
    with pytest.raises(SealMismatchError, match="carries the seal of"):
        check_before_read(seal, uuid="11111111-2222-4333-8444-555555555555")
    with pytest.raises(SealMismatchError, match="carries the seal of"):
        check_before_read(seal, content_type=3)
    with pytest.raises(SealMismatchError, match="bytes stored"):
        check_before_read(seal, size=len(DATA) - 1)
    with pytest.raises(SealInvalidError):
        check_before_read(dataclasses.replace(seal, sha256="0" * 64))
    with pytest.raises(UnknownKeyError):
        check_before_read(seal, ring=KeyRing(fixed_signer("other")))


@pytest.mark.attack
def test_check_before_read_applies_the_unsealed_policy():
    with pytest.raises(SealMissingError):
        check_before_read(None, legacy=False)
    with pytest.raises(SealMissingError):
        check_before_read(None, policy=UnsealedPolicy.REFUSE, legacy=True)
