"""The hash chain and checkpoints: fixed vectors, and every kind of tampering on rows in memory."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from orthanc_hardening import timefmt
from orthanc_hardening.audit import chain
from orthanc_hardening.audit.chain import Checkpoint, StoredEvent, inspect_chain, link, make_checkpoint, verify_chain
from orthanc_hardening.errors import AuditChainError
from orthanc_hardening.seal.keys import KeyRing, Signer
from tests.unit.audit.conftest import NOW, make_event

VECTORS = json.loads((Path(__file__).resolve().parents[2] / "vectors" / "audit_chain.json").read_text())


def build(count: int, signer: Signer, every: int = 5) -> tuple[list[StoredEvent], list[Checkpoint]]:
    rows: list[StoredEvent] = []
    checkpoints: list[Checkpoint] = []
    previous = None
    for n in range(count):
        previous = link(previous, make_event(n))
        rows.append(previous)
        if previous.seq % every == 0:
            checkpoints.append(make_checkpoint(previous, signer, NOW))
    return rows, checkpoints


@pytest.mark.parametrize("index", range(len(VECTORS["rows"])))
def test_row_hash_matches_vector(index: int) -> None:
    rows = VECTORS["rows"]
    expected = rows[index]
    event = chain.event_from_fields(expected)
    assert chain.canonical(chain.row_fields(expected["seq"], event, expected["prev_hash"])).decode() == \
        expected["canonical"]
    assert chain.row_hash(expected["seq"], event, expected["prev_hash"]) == expected["hash"]
    previous = rows[index - 1]["hash"] if index else chain.GENESIS_HASH
    assert expected["prev_hash"] == previous


def test_checkpoint_matches_vector() -> None:
    vector = VECTORS["checkpoint"]
    signer = Signer.of(Ed25519PrivateKey.from_private_bytes(bytes.fromhex(VECTORS["private_key_seed_hex"])))
    assert signer.key_id == VECTORS["key_id"]
    now = datetime(2026, 1, 2, 3, 5, tzinfo=UTC)
    checkpoint = make_checkpoint((vector["seq"], vector["hash"]), signer, now)
    assert checkpoint.signed_bytes().decode() == vector["signed_bytes"]
    assert base64.b64decode(checkpoint.signature).hex() == vector["signature_hex"]


def test_vector_chain_verifies_with_its_key() -> None:
    signer = Signer.of(Ed25519PrivateKey.from_private_bytes(bytes.fromhex(VECTORS["private_key_seed_hex"])))
    rows = [StoredEvent(r["seq"], chain.event_from_fields(r), r["prev_hash"], r["hash"]) for r in VECTORS["rows"]]
    vector = VECTORS["checkpoint"]
    checkpoint = Checkpoint(vector["seq"], vector["hash"], vector["time"], vector["key_id"],
                            base64.b64encode(bytes.fromhex(vector["signature_hex"])).decode())
    report = verify_chain(rows, [checkpoint], KeyRing(signer))
    assert (report.rows, report.last_checkpoint_seq, report.unsigned_tail) == (3, 3, 0)


def test_intact_chain_verifies(signer: Signer, keyring: KeyRing) -> None:
    rows, checkpoints = build(12, signer)
    report = verify_chain(rows, checkpoints, keyring)
    assert (report.ok, report.last_seq, report.last_checkpoint_seq, report.unsigned_tail) == (True, 12, 10, 2)


def test_empty_chain_verifies(keyring: KeyRing) -> None:
    assert inspect_chain([], [], keyring).ok


@pytest.mark.attack
def test_edited_row_is_named(signer: Signer, keyring: KeyRing) -> None:
    rows, checkpoints = build(12, signer)
    rows[6] = replace(rows[6], event=replace(rows[6].event, user="mallory"))
    with pytest.raises(AuditChainError, match="seq 7: row content does not match"):
        verify_chain(rows, checkpoints, keyring)


@pytest.mark.attack
def test_deleted_row_is_named(signer: Signer, keyring: KeyRing) -> None:
    rows, checkpoints = build(12, signer)
    del rows[3]
    with pytest.raises(AuditChainError, match="at seq 4: seq 4: row missing"):
        verify_chain(rows, checkpoints, keyring)


@pytest.mark.attack
def test_reordered_rows_are_named(signer: Signer, keyring: KeyRing) -> None:
    rows, checkpoints = build(12, signer)
    rows[2], rows[3] = rows[3], rows[2]
    report = inspect_chain(rows, checkpoints, keyring)
    assert not report.ok and report.first_broken_seq == 3


@pytest.mark.attack
def test_reordered_rows_with_renumbered_seq_are_named(signer: Signer, keyring: KeyRing) -> None:
    rows, checkpoints = build(12, signer)
    third, fourth = rows[2], rows[3]
    rows[2], rows[3] = replace(fourth, seq=3), replace(third, seq=4)
    report = inspect_chain(rows, checkpoints, keyring)
    assert not report.ok and report.first_broken_seq == 3


@pytest.mark.attack
def test_inserted_forged_row_is_named(signer: Signer, keyring: KeyRing) -> None:
    rows, checkpoints = build(12, signer)
    forged = link(rows[4], make_event(99, user="mallory"))
    # The forger renumbers everything after the insertion point, but cannot re-sign checkpoints.
    tail = []
    previous = forged
    for row in rows[5:]:
        previous = link(previous, row.event)
        tail.append(previous)
    tampered = [*rows[:5], forged, *tail]
    report = inspect_chain(tampered, checkpoints, keyring)
    assert not report.ok and report.first_broken_seq == 10
    assert "checkpoint at seq 10" in report.problems[0]


@pytest.mark.attack
def test_truncated_tail_is_named(signer: Signer, keyring: KeyRing) -> None:
    rows, checkpoints = build(12, signer)
    with pytest.raises(AuditChainError, match=r"at seq 10: .*truncated"):
        verify_chain(rows[:9], checkpoints, keyring)


@pytest.mark.attack
def test_consistent_chain_signed_by_another_key_is_refused(signer: Signer, other_signer: Signer,
                                                           keyring: KeyRing) -> None:
    rows, checkpoints = build(12, other_signer)
    report = inspect_chain(rows, checkpoints, keyring)
    assert not report.ok
    assert report.first_broken_seq == 1
    assert any("UnknownKeyError" in p for p in report.problems)


@pytest.mark.attack
def test_chain_without_any_checkpoint_is_refused(signer: Signer, keyring: KeyRing) -> None:
    rows, _checkpoints = build(4, signer)
    with pytest.raises(AuditChainError, match="no checkpoint signed by a trusted key"):
        verify_chain(rows, [], keyring)


@pytest.mark.attack
def test_forged_checkpoint_signature_is_refused(signer: Signer, keyring: KeyRing) -> None:
    rows, checkpoints = build(10, signer)
    bad = replace(checkpoints[-1], seq=9, hash=rows[8].hash)
    report = inspect_chain(rows, [*checkpoints[:-1], bad], keyring)
    assert not report.ok and report.first_broken_seq == 9


def test_naive_time_is_a_caller_bug() -> None:
    with pytest.raises(ValueError):
        timefmt.format_time(datetime(2026, 1, 1))


_AWKWARD_TEXT = ["", "plain", 'quote " and \\ backslash', "tab\tnewline\ncarriage\r", "\x00\x01\x1f\x7f",
                 "Müller ünïcödé", "日本語", "emoji 🩻 and surrogate pair", "\u2028\u2029", "</script>", "a" * 600]


@pytest.mark.parametrize("text", _AWKWARD_TEXT)
def test_the_row_encoder_gives_exactly_the_canonical_json_bytes(text: str) -> None:
    # The append and verify paths encode rows with canonical_row; a trail written with the generic
    # encoder must verify, so the bytes must be the same for any text in any field.
    for roles in ((), ("viewer",), (text, "admin", text)):
        event = make_event(3, user=text, series=text, detail=text, route=text, source_ip=text, patient_id=text,
                           study_uid=text, calling_aet=text, called_aet=text, roles=roles, instance_count=len(text))
        fields = chain.row_fields(7, event, "ab" * 32)
        assert chain.canonical_row(fields) == chain.canonical(fields)


@pytest.mark.parametrize("odd", [True, 2**70, -1, "x", 1.5, None, ("a",), ["a", 1]])
def test_the_row_encoder_hands_unusual_values_to_the_generic_encoder(odd: object) -> None:
    fields = chain.row_fields(1, make_event(1), chain.GENESIS_HASH)
    fields["instance_count"] = odd
    assert chain.canonical_row(fields) == chain.canonical(fields)
    fields = chain.row_fields(1, make_event(1), chain.GENESIS_HASH)
    fields["extra"] = "key"
    assert chain.canonical_row(fields) == chain.canonical(fields)
    del fields["extra"], fields["detail"]
    fields["other"] = "x"
    assert chain.canonical_row(fields) == chain.canonical(fields)


@pytest.mark.parametrize("moment", [NOW, datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
                                    datetime(1999, 1, 1, tzinfo=UTC), datetime(999, 5, 6, 7, 8, 9, 10, tzinfo=UTC),
                                    datetime(2026, 6, 1, 12, tzinfo=timezone(timedelta(hours=2)))])
def test_a_row_time_is_the_canonical_time_text(moment: datetime) -> None:
    assert chain.row_fields(1, make_event(1, time=moment.astimezone(UTC)), chain.GENESIS_HASH)["time"] == \
        timefmt.format_time(moment)
    assert chain._row_time(moment) == timefmt.format_time(moment)
