"""The audit witness: a log rewritten without any key is caught by ``audit verify --witness`` and
never blessed by the checkpoint a restarted writer signs."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from orthanc_hardening.audit import witness as witness_mod
from orthanc_hardening.audit.event import Action
from orthanc_hardening.cli import main
from orthanc_hardening.errors import AuditChainError
from orthanc_hardening.seal.keys import KeyRing, Signer, public_pem
from orthanc_hardening.services.audit_witness import AuditWitness, check_log_extends_witness
from orthanc_hardening.services.audit_writer import AuditWriter
from orthanc_hardening.stores.audit_store import SQLiteAuditStore
from orthanc_hardening.stores.witness_file import WitnessFile
from tests.support.audit_rewrite import rewrite_audit_log
from tests.unit.audit.conftest import FixedClock, make_event


def open_writer(path: Path, signer: Signer, witness_path: Path, every: int = 10) -> AuditWriter:
    """What ``shell/audit_hooks.open_trail`` does: check the witness, then start the writer."""
    store = SQLiteAuditStore(path)
    file = WitnessFile(witness_path)
    last = check_log_extends_witness(store, file, KeyRing(signer))
    return AuditWriter(store, lambda: signer, FixedClock(), checkpoint_every=every, checkpoint_seconds=1e6,
                       on_checkpoint=AuditWitness(file, last, lambda: signer, FixedClock()))


@pytest.fixture
def witnessed(tmp_path: Path, signer: Signer) -> tuple[Path, Path, Path]:
    """30 events (every fifth, from seq 5, a DELETE by mallory), checkpoints every 10, a witness file."""
    db, witness_path = tmp_path / "data" / "audit.db", tmp_path / "witness" / "audit.witness"
    db.parent.mkdir()
    writer = open_writer(db, signer, witness_path)
    for n in range(30):
        action = Action.DELETE if n % 5 == 4 else Action.READ
        writer.record(make_event(n, user="mallory" if n % 5 == 4 else "alice", action=action))
    writer.close()
    key = tmp_path / "audit-key.pub.pem"
    key.write_bytes(public_pem(signer.public_key))
    return db, witness_path, key


def verify(db: Path, key: Path, witness_path: Path | None, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    args = ["audit", "verify", "--db", str(db), "--trusted-key", str(key)]
    if witness_path is not None:
        args += ["--witness", str(witness_path)]
    code = main(args)
    return code, capsys.readouterr().out


def test_witness_lines_chain_and_match_the_log(witnessed, capsys):
    db, witness_path, key = witnessed
    lines = WitnessFile(witness_path).lines()
    assert [line.seq for line in lines] == [1, 11, 21, 30]  # the first commit, then every 10, the closing flush
    for before, after in itertools.pairwise(lines):
        assert (after.previous_seq, after.previous_hash, after.previous_digest) == (before.seq, before.hash,
                                                                                    before.digest())
    code, out = verify(db, key, witness_path, capsys)
    assert code == 0, out
    assert "consistent with 1 witness(es) through seq 30" in out


@pytest.mark.attack
def test_rewritten_log_passes_without_witness_and_fails_with_it(witnessed, capsys):
    db, witness_path, key = witnessed
    first = rewrite_audit_log(db, lambda row: row.event.user == "mallory" and row.event.action is Action.DELETE)
    assert first == 5
    code, out = verify(db, key, None, capsys)
    # What the issue found: without a witness the rewrite passes, with an unsigned tail …
    assert code == 0 and "NO WITNESS" in out
    # … the witness catches it: the log is shorter than what the witness saw, and its rows differ.
    code, out = verify(db, key, witness_path, capsys)
    assert code == 1
    assert "FAILED" in out and "the log's row at seq 11 is not the one the witness saw" in out
    assert "the witness saw the log at seq 30, but the log ends at seq 24: rows were removed" in out


@pytest.mark.attack
def test_rewritten_log_padded_to_its_length_fails_with_the_witness(witnessed, capsys):
    db, witness_path, key = witnessed
    rewrite_audit_log(db, lambda row: row.event.user == "mallory", pad=True)
    code, out = verify(db, key, witness_path, capsys)
    assert code == 1
    assert "the log's row at seq 30 is not the one the witness saw" in out


@pytest.mark.attack
def test_restart_refuses_to_sign_over_a_rewritten_log(witnessed, signer):
    db, witness_path, _key = witnessed
    rewrite_audit_log(db, lambda row: row.event.user == "mallory", pad=True)
    before = WitnessFile(witness_path).lines()
    with pytest.raises(AuditChainError, match="rewritten at or before seq"):
        open_writer(db, signer, witness_path)
    # Nothing was signed over the forged head: only the checkpoint from before the edit is in
    # the store, and the witness has no new line.
    store = SQLiteAuditStore(db, create=False)
    try:
        assert [cp.seq for cp in store.checkpoints()] == [1]
    finally:
        store.close()
    assert WitnessFile(witness_path).lines() == before


@pytest.mark.attack
def test_truncated_log_is_refused_at_start(witnessed, signer):
    db, witness_path, _key = witnessed
    import sqlite3

    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("DELETE FROM events WHERE seq > 25")
    conn.execute("DELETE FROM checkpoints WHERE seq > 25")
    conn.close()
    with pytest.raises(AuditChainError, match="ends at seq 25, but a witness saw it at seq 30"):
        open_writer(db, signer, witness_path)


@pytest.mark.attack
def test_forged_witness_line_is_not_accepted(witnessed, signer, other_signer, capsys):
    db, witness_path, key = witnessed
    lines = WitnessFile(witness_path).lines()
    forged = witness_mod.witness_checkpoint(40, "f" * 64, lines[-1], other_signer, FixedClock()())
    WitnessFile(witness_path).append(forged)
    with pytest.raises(AuditChainError, match="signature not accepted"):
        open_writer(db, signer, witness_path)
    code, out = verify(db, key, witness_path, capsys)
    assert code == 1 and "signature not accepted" in out


@pytest.mark.attack
def test_removed_witness_line_is_seen(witnessed, capsys):
    db, witness_path, key = witnessed
    text = witness_path.read_text().splitlines(keepends=True)
    witness_path.write_text("".join(text[:2] + text[3:]))
    code, out = verify(db, key, witness_path, capsys)
    assert code == 1 and "witness lines removed or reordered" in out


def test_log_that_grew_after_the_witness_restarts_and_extends_it(witnessed, signer):
    db, witness_path, _key = witnessed
    writer = open_writer(db, signer, witness_path)
    writer.record(make_event(99))
    writer.close()
    lines = WitnessFile(witness_path).lines()
    assert lines[-1].seq == 31 and lines[-1].previous_seq == 30


def test_verify_json_lists_the_witness(witnessed, capsys):
    db, witness_path, key = witnessed
    assert main(["audit", "verify", "--db", str(db), "--trusted-key", str(key), "--witness", str(witness_path),
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["witnesses"] == [{"witness": str(witness_path), "lines": 4, "last_seq": 30, "problems": []}]


def test_misuse_is_a_value_error(signer):
    first = witness_mod.witness_checkpoint(5, "a" * 64, None, signer, FixedClock()())
    with pytest.raises(ValueError, match="never goes back"):
        witness_mod.witness_checkpoint(4, "a" * 64, first, signer, FixedClock()())
