"""The write path's levers: the derivable header is not flushed, the audit append overlaps the flush.

A header written without its own flush can be left damaged by a power loss: it is then rebuilt
from the sealed DICOM file, checked against its own seal, and never raises a false tamper alarm;
bytes that do not verify are never served.
"""

from __future__ import annotations

import os

import pytest

from orthanc_hardening.audit.event import EventCode
from orthanc_hardening.errors import SealMismatchError, StoreUnavailableError
from orthanc_hardening.shell import storage as storage_module
from tests.support.dicom import make_instance
from tests.unit.shell.test_storage import UUID, installed, runtime  # noqa: F401 (the fixture)

HEADER = UUID[:-1] + "0"


def path_of(tmp_path, uuid):
    return tmp_path / "storage" / uuid[:2] / uuid[2:4] / uuid


@pytest.fixture
def fsyncs(monkeypatch):
    calls: list[int] = []
    real = os.fsync

    def counted(fd):
        if "/storage/" in os.readlink(f"/proc/self/fd/{fd}"):
            calls.append(fd)
        real(fd)

    monkeypatch.setattr(storage_module.write_file.__globals__["os"], "fsync", counted)
    return calls


def stored_with_header(runtime, tmp_path):  # noqa: F811
    storage = installed(runtime)
    create, read, _remove = runtime.orthanc.storage_area
    data = make_instance(patient_id="LEVER-1")
    create(UUID, 1, data)
    header = data[:600]
    create(HEADER, 3, header)
    return storage, read, data, header


def test_the_derivable_header_is_not_flushed_but_the_dicom_file_is(runtime, tmp_path, fsyncs):  # noqa: F811
    stored_with_header(runtime, tmp_path)
    assert len(fsyncs) == 1
    assert path_of(tmp_path, HEADER).stat().st_size == 600


def test_a_header_that_is_not_a_prefix_of_the_last_file_is_flushed(runtime, tmp_path, fsyncs):  # noqa: F811
    installed(runtime)
    create, _read, _remove = runtime.orthanc.storage_area
    create(UUID, 1, make_instance(patient_id="LEVER-2"))
    create(HEADER, 3, make_instance(patient_id="OTHER")[:600])
    assert len(fsyncs) == 2


@pytest.mark.parametrize("damage", ["missing", "empty", "torn"])
def test_a_header_damaged_by_a_power_loss_is_rebuilt_without_alarm(runtime, tmp_path, damage):  # noqa: F811
    storage, read, _data, header = stored_with_header(runtime, tmp_path)
    path = path_of(tmp_path, HEADER)
    if damage == "missing":
        path.unlink()
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        path.write_bytes(header[:300] + bytes(300))
    assert read(HEADER, 3) == header
    assert path.read_bytes() == header
    assert runtime.metrics.value("derived_rebuilt_total") == 1
    assert runtime.metrics.value("integrity_failures_total") == 0
    assert all(e.event is not EventCode.SECURITY_ALERT for e in runtime.audit.events)
    assert storage.verify_attachment(HEADER, 3, None) is not None


@pytest.mark.attack
def test_tampered_header_and_dicom_file_are_refused_and_alerted(runtime, tmp_path):  # noqa: F811
    _storage, read, data, _header = stored_with_header(runtime, tmp_path)
    forged = bytearray(data)
    forged[100] ^= 1
    path_of(tmp_path, UUID).write_bytes(bytes(forged))
    path_of(tmp_path, HEADER).write_bytes(bytes(forged[:600]))
    with pytest.raises(SealMismatchError):
        read(HEADER, 3)
    assert path_of(tmp_path, HEADER).read_bytes() == bytes(forged[:600])  # nothing trusted was rewritten
    assert runtime.metrics.value("integrity_failures_total") == 1
    assert runtime.audit.last().event is EventCode.SECURITY_ALERT


@pytest.mark.attack
def test_a_dicom_file_is_never_rebuilt(runtime, tmp_path):  # noqa: F811
    _storage, read, data, _header = stored_with_header(runtime, tmp_path)
    path_of(tmp_path, UUID).write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(SealMismatchError):
        read(UUID, 1)
    assert runtime.audit.last().event is EventCode.SECURITY_ALERT


class _Waiter:
    def __init__(self, log, fails=False):
        self.log, self.fails = log, fails

    def wait(self):
        self.log.append("wait")
        if self.fails:
            raise StoreUnavailableError("audit store down")


def test_the_audit_append_starts_before_the_file_and_is_awaited_after_it(runtime, tmp_path, monkeypatch):  # noqa: F811
    storage = installed(runtime)
    create, _read, _remove = runtime.orthanc.storage_area
    log: list[str] = []
    real_write = storage_module.write_file

    def logged_write(final, data, sync):
        log.append("write")
        real_write(final, data, sync)

    monkeypatch.setattr(storage_module, "write_file", logged_write)
    storage.write_hooks.append(lambda event: log.append("start") or _Waiter(log))
    create(UUID, 1, make_instance())
    assert log == ["start", "write", "wait"]


def test_an_audit_commit_that_fails_after_the_write_undoes_file_and_seal(runtime, tmp_path):  # noqa: F811
    storage = installed(runtime)
    create, _read, _remove = runtime.orthanc.storage_area
    storage.write_hooks.append(lambda event: _Waiter([], fails=True))
    with pytest.raises(StoreUnavailableError):
        create(UUID, 1, make_instance())
    assert not path_of(tmp_path, UUID).exists()
    assert storage.store.get(UUID, 1) is None


@pytest.mark.attack
def test_a_changed_byte_in_the_header_is_refused_and_alerted_not_rebuilt(runtime, tmp_path):  # noqa: F811
    _storage, read, _data, header = stored_with_header(runtime, tmp_path)
    forged = bytearray(header)
    forged[200] ^= 0x5A
    path_of(tmp_path, HEADER).write_bytes(bytes(forged))
    with pytest.raises(SealMismatchError):
        read(HEADER, 3)
    assert path_of(tmp_path, HEADER).read_bytes() == bytes(forged)
    assert runtime.metrics.value("derived_rebuilt_total") == 0
    assert runtime.audit.last().event is EventCode.SECURITY_ALERT


@pytest.mark.parametrize(("found", "torn"), [
    (b"", True), (b"abc", True), (b"a\0c", True), (b"\0\0\0\0", True),
    (b"abd", False), (b"abcdx", False), (b"Xbcd", False),
])
def test_what_a_torn_write_can_leave(found, torn):
    assert storage_module.is_torn_copy(found, b"abcd") is torn


class _RefusingVerifier:
    def verify(self, kid, data, signature):
        raise AssertionError("verified again")


def test_a_seal_signed_at_ingest_is_not_verified_again_by_the_manifest(runtime, tmp_path):  # noqa: F811
    storage = installed(runtime)
    create, _read, _remove = runtime.orthanc.storage_area
    create(UUID, 1, make_instance())
    seal = storage.store.get(UUID, 1)
    storage.cache.verify(_RefusingVerifier(), seal.key_id, seal.signed_bytes(), seal.signature_bytes)
    with pytest.raises(AssertionError):  # a changed byte is verified (and fails) as before
        storage.cache.verify(_RefusingVerifier(), seal.key_id, seal.signed_bytes() + b" ", seal.signature_bytes)


def test_the_manifest_thread_is_handed_only_the_changes_it_acts_on(runtime, tmp_path):  # noqa: F811
    from orthanc_hardening.shell.scrub import ManifestService

    storage = installed(runtime)
    # No worker is started: the queue keeps what an ingest and a deletion hand over.
    service = ManifestService(runtime, None, None, tmp_path, storage.keyring, storage.cache)  # type: ignore[arg-type]
    changes, levels = runtime.orthanc.ChangeType, runtime.orthanc.ResourceType
    service.enqueue_change(changes.NEW_INSTANCE, levels.INSTANCE, "i")
    service.enqueue_change(changes.NEW_CHILD_INSTANCE, levels.SERIES, "s")
    service.enqueue_change(changes.STABLE_STUDY, levels.STUDY, "st")
    service.enqueue_change(changes.DELETED, levels.INSTANCE, "i")
    queued = []
    while not service._changes.empty():
        queued.append(service._changes.get_nowait())
    assert queued == [(changes.STABLE_STUDY, levels.STUDY, "st"), (changes.DELETED, levels.INSTANCE, "i")]
