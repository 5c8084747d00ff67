"""The durable exporter: in order, at least once, cursor moves only after delivery."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from orthanc_hardening.audit.chain import StoredEvent
from orthanc_hardening.audit.event import Action, AuditEvent, EventCode, Outcome, Transport
from orthanc_hardening.errors import StoreUnavailableError
from orthanc_hardening.services.audit_export import AuditExporter
from orthanc_hardening.stores.audit_store import SQLiteAuditStore

NOW = datetime(2026, 3, 4, tzinfo=UTC)


def row(seq: int) -> StoredEvent:
    event = AuditEvent(time=NOW, event=EventCode.QUERY, action=Action.EXECUTE, outcome=Outcome.SUCCESS,
                       transport=Transport.REST, user="u", detail=f"event {seq}")
    return StoredEvent(seq, event, f"{seq - 1:064x}", f"{seq:064x}")


class FakeStore:
    def __init__(self, count: int) -> None:
        self.rows = [row(seq) for seq in range(1, count + 1)]
        self.cursors: dict[str, int] = {}
        self.fail_cursor_write = False

    def add(self, count: int) -> None:
        start = len(self.rows) + 1
        self.rows.extend(row(seq) for seq in range(start, start + count))

    def head(self) -> tuple[int, str] | None:
        return (self.rows[-1].seq, self.rows[-1].hash) if self.rows else None

    def read_after(self, seq: int, limit: int) -> list[StoredEvent]:
        return [r for r in self.rows if r.seq > seq][:limit]

    def get_cursor(self, name: str) -> int:
        return self.cursors.get(name, 0)

    def set_cursor(self, name: str, seq: int) -> None:
        if self.fail_cursor_write:
            raise StoreUnavailableError("disk full")
        self.cursors[name] = seq


class FakeCollector:
    """Records delivered frames; fails the sends it is told to (after delivering a prefix)."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.down = False
        self.deliver_then_fail = 0
        self.closed = 0

    def send(self, frames: list[bytes]) -> None:
        if self.down:
            raise ConnectionRefusedError("collector down")
        if self.deliver_then_fail:
            self.received.extend(frames[: self.deliver_then_fail])
            self.deliver_then_fail = 0
            raise ConnectionResetError("reset after a partial batch")
        self.received.extend(frames)

    def close(self) -> None:
        self.closed += 1

    def seqs(self) -> list[int]:
        return [int(f.decode()) for f in self.received]


def formatter(stored: StoredEvent) -> bytes:
    return str(stored.seq).encode()


def exporter(store: FakeStore, collector: FakeCollector, batch: int = 4) -> tuple[AuditExporter, dict[str, float]]:
    metrics: dict[str, float] = {}
    return AuditExporter(store, collector, formatter, report=metrics.__setitem__, batch=batch), metrics


def drain(export: AuditExporter) -> None:
    while export.step():
        pass


def test_sends_everything_in_order_and_moves_the_cursor() -> None:
    store, collector = FakeStore(10), FakeCollector()
    export, metrics = exporter(store, collector)
    drain(export)
    assert collector.seqs() == list(range(1, 11))
    assert store.cursors["syslog"] == 10
    assert metrics == {"audit_exported_total": 10, "audit_export_backlog": 0}


def test_collector_down_keeps_the_cursor_and_the_backlog_grows() -> None:
    store, collector = FakeStore(3), FakeCollector()
    export, metrics = exporter(store, collector)
    drain(export)
    collector.down = True
    store.add(5)
    assert metrics["audit_export_backlog"] == 0
    with pytest.raises(ConnectionRefusedError):
        export.step()
    assert store.cursors["syslog"] == 3
    assert export.backlog() == 5


def test_resume_after_failure_loses_nothing_and_keeps_order() -> None:
    store, collector = FakeStore(3), FakeCollector()
    export, _ = exporter(store, collector)
    drain(export)
    collector.down = True
    store.add(6)
    for _ in range(3):
        with pytest.raises(OSError):
            export.step()
    collector.down = False
    drain(export)
    assert collector.seqs() == list(range(1, 10))
    assert store.cursors["syslog"] == 9


def test_partial_batch_is_sent_again_at_least_once() -> None:
    store, collector = FakeStore(8), FakeCollector()
    export, _ = exporter(store, collector, batch=4)
    collector.deliver_then_fail = 2
    with pytest.raises(ConnectionResetError):
        export.step()
    drain(export)
    seqs = collector.seqs()
    # 1 and 2 arrived twice (before and after the reset); every event arrived, in order after the retry.
    assert seqs == [1, 2, 1, 2, 3, 4, 5, 6, 7, 8]
    assert sorted(set(seqs)) == list(range(1, 9))


def test_cursor_write_failure_means_resend_not_loss() -> None:
    store, collector = FakeStore(2), FakeCollector()
    export, _ = exporter(store, collector)
    store.fail_cursor_write = True
    with pytest.raises(StoreUnavailableError):
        export.step()
    store.fail_cursor_write = False
    drain(export)
    assert collector.seqs() == [1, 2, 1, 2]
    assert store.cursors["syslog"] == 2


def test_run_loop_backs_off_and_recovers() -> None:
    store, collector = FakeStore(5), FakeCollector()
    export, _ = exporter(store, collector, batch=2)
    collector.down = True
    waits: list[float] = []

    def wait(seconds: float) -> bool:
        waits.append(seconds)
        if len(waits) == 3:
            collector.down = False
        return len(waits) > 6  # stop after a few idle polls

    export.run(wait=wait)
    assert waits[:3] == [0.5, 1.0, 2.0]  # exponential backoff while the collector is down
    assert collector.seqs() == [1, 2, 3, 4, 5]
    assert collector.closed == 3
    assert export.failures == 3


def test_cursor_survives_a_restart_with_the_real_store(tmp_path) -> None:
    path = tmp_path / "audit.db"
    store = SQLiteAuditStore(path)
    store.append([row(seq) for seq in range(1, 6)])
    collector = FakeCollector()
    first = AuditExporter(store, collector, formatter, batch=3)
    first.step()
    store.close()
    reopened = SQLiteAuditStore(path)
    second = AuditExporter(reopened, collector, formatter, batch=3)
    assert second.cursor == 3
    drain(second)
    assert collector.seqs() == [1, 2, 3, 4, 5]
    reopened.close()


def test_bad_batch_size_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        AuditExporter(FakeStore(0), FakeCollector(), formatter, batch=0)


def test_batch_reaching_the_newest_checkpoint_carries_it_after_its_rows() -> None:
    from orthanc_hardening.audit.chain import Checkpoint

    store, collector = FakeStore(10), FakeCollector()
    newest = {"checkpoint": Checkpoint(6, f"{6:064x}", "2026-03-04T00:00:00.000000Z", "k" * 16, "sig")}

    def checkpoint_frame(checkpoint: Checkpoint, previous: Checkpoint | None) -> bytes:
        return f"cp{checkpoint.seq}<-{previous.seq if previous else 0}".encode()

    export = AuditExporter(store, collector, formatter, batch=4, checkpoint_formatter=checkpoint_frame,
                           last_checkpoint=lambda: newest["checkpoint"])
    drain(export)
    # Rows 1-4 (no checkpoint in them), 5-8 with the checkpoint at 6, then 9-10.
    assert [f.decode() for f in collector.received] == ["1", "2", "3", "4", "5", "6", "7", "8", "cp6<-0", "9", "10"]
    store.add(4)
    newest["checkpoint"] = Checkpoint(14, f"{14:064x}", "2026-03-04T00:00:01.000000Z", "k" * 16, "sig")
    drain(export)
    assert collector.received[-1] == b"cp14<-6"
