"""Attacks on the audit database file: ``audit verify`` (the offline CLI) names the broken seq."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from orthanc_hardening.cli import main
from orthanc_hardening.seal.keys import Signer, public_pem
from orthanc_hardening.services.audit_writer import AuditWriter
from orthanc_hardening.stores.audit_store import SQLiteAuditStore
from tests.unit.audit.conftest import FixedClock, make_event


def fill(path: Path, signer: Signer, count: int = 30, every: int = 10) -> None:
    writer = AuditWriter(SQLiteAuditStore(path), lambda: signer, FixedClock(), checkpoint_every=every,
                         checkpoint_seconds=1e6)
    for n in range(count):
        writer.record(make_event(n, series=f"1.2.{n % 3}"))
    writer.close()


def verify(path: Path, key: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["audit", "verify", "--db", str(path), "--trusted-key", str(key)])
    return code, capsys.readouterr().out


@pytest.fixture
def key_file(tmp_path: Path, signer: Signer) -> Path:
    path = tmp_path / "audit-key.pub.pem"
    path.write_bytes(public_pem(signer.public_key))
    return path


@pytest.fixture
def database(db_path: Path, signer: Signer) -> Path:
    fill(db_path, signer)
    return db_path


def sql(path: Path, *statements: str) -> None:
    conn = sqlite3.connect(path)
    with conn:
        for statement in statements:
            conn.execute(statement)
    conn.close()


def test_untouched_database_verifies(database: Path, key_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = verify(database, key_file, capsys)
    assert code == 0, out
    assert "OK: 30 events" in out and "checkpoint at seq 30" in out


@pytest.mark.attack
def test_edited_user_is_named(database: Path, key_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sql(database, "UPDATE events SET user = 'nobody' WHERE seq = 17")
    code, out = verify(database, key_file, capsys)
    assert code == 1 and "broken at seq 17" in out


@pytest.mark.attack
def test_deleted_row_is_named(database: Path, key_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sql(database, "DELETE FROM events WHERE seq = 12")
    code, out = verify(database, key_file, capsys)
    assert code == 1 and "broken at seq 12" in out and "row missing" in out


@pytest.mark.attack
def test_reordered_rows_are_named(database: Path, key_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sql(database, "UPDATE events SET seq = -1 WHERE seq = 5", "UPDATE events SET seq = 5 WHERE seq = 6",
        "UPDATE events SET seq = 6 WHERE seq = -1")
    code, out = verify(database, key_file, capsys)
    assert code == 1 and "broken at seq 5" in out


@pytest.mark.attack
def test_inserted_forged_row_is_named(database: Path, key_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A forged row copied from a real one, given a free seq number between two real rows.
    sql(database, "UPDATE events SET seq = seq + 1000 WHERE seq > 20",
        "INSERT INTO events SELECT 21, time, event, action, outcome, 'mallory', roles, source_ip, calling_aet, "
        "called_aet, transport, route, patient_id, study_uid, series_uid, instance_count, detail, prev_hash, hash "
        "FROM events WHERE seq = 20",
        "UPDATE events SET seq = seq - 999 WHERE seq > 1000")
    code, out = verify(database, key_file, capsys)
    assert code == 1 and "broken at seq 21" in out


@pytest.mark.attack
def test_truncated_tail_is_named(database: Path, key_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sql(database, "DELETE FROM events WHERE seq > 25")
    code, out = verify(database, key_file, capsys)
    assert code == 1 and "broken at seq 26" in out and "truncated" in out


@pytest.mark.attack
def test_replaced_database_signed_by_another_key_is_refused(
    db_path: Path, key_file: Path, other_signer: Signer, capsys: pytest.CaptureFixture[str]
) -> None:
    fill(db_path, other_signer)  # a complete, consistent chain built by someone without our key
    code, out = verify(db_path, key_file, capsys)
    assert code == 1 and "checkpoint at seq 1:" in out and "UnknownKeyError" in out


@pytest.mark.attack
def test_deleted_checkpoints_are_refused(database: Path, key_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sql(database, "DELETE FROM checkpoints")
    code, out = verify(database, key_file, capsys)
    assert code == 1 and "no checkpoint signed by a trusted key" in out


def test_query_command_prints_a_table_and_json(database: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "query", "--db", str(database), "--series", "1.2.1", "--format", "table"]) == 0
    out = capsys.readouterr().out
    assert "110103 DICOM Instances Accessed" in out and "(10 events)" in out
    assert main(["audit", "query", "--db", str(database), "--user", "alice", "--limit", "3", "--format", "json"]) == 0
    assert '"count": 3' in capsys.readouterr().out


def test_export_csv_is_oldest_first_and_neutralised(db_path: Path, signer: Signer, tmp_path: Path) -> None:
    writer = AuditWriter(SQLiteAuditStore(db_path), lambda: signer, FixedClock(), checkpoint_seconds=1e6)
    writer.record(make_event(1, user="-1+1"))
    writer.record(make_event(2, patient_id="@SUM(A1)"))
    writer.close()
    out = tmp_path / "export.csv"
    assert main(["audit", "export", "--db", str(db_path), "--format", "csv", "--output", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert lines[0].startswith("seq,time,event")
    assert ",'-1+1," in lines[1] and ",'@SUM(A1)," in lines[2]


def test_query_command_bad_filter_names_the_parameter(database: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "query", "--db", str(database), "--outcome", "bad"]) == 2
    assert "outcome" in capsys.readouterr().err


def test_missing_database_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "query", "--db", str(tmp_path / "none.db")]) == 2
    assert "does not exist" in capsys.readouterr().err




@pytest.mark.attack
def test_unparseable_row_is_named(database: Path, key_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sql(database, "UPDATE events SET event = 'not-a-code', time = 'yesterday' WHERE seq = 8")
    code, out = verify(database, key_file, capsys)
    assert code == 1 and "broken at seq 8" in out
