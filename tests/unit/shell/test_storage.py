"""The sealed storage area driven through ``FakeOrthanc``: create, read, remove, failures, archives."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json

import pytest

from orthanc_hardening.audit.event import EventCode
from orthanc_hardening.config import Durability, HardeningConfig, Mode
from orthanc_hardening.errors import AccessDeniedError, SealInvalidError, SealMismatchError, SealMissingError
from orthanc_hardening.integrity.binding import WrongInstanceError
from orthanc_hardening.integrity.query import orthanc_ids_of_seal
from orthanc_hardening.shell import archives as archives_module
from orthanc_hardening.shell import seal_routes
from orthanc_hardening.shell import storage as storage_module
from orthanc_hardening.shell.archives import ArchiveJob, ArchiveRefusedError, archive_of_job, verify_instances
from orthanc_hardening.shell.metrics import Metrics
from orthanc_hardening.shell.runtime import Runtime
from orthanc_hardening.stores import key_files
from orthanc_hardening.stores.signature_cache import SignatureCache
from tests.support.dicom import make_instance
from tests.unit.fakes import FakeOrthanc, MemoryAuditSink

NOW = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
UUID = "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9"
PASS = "unit passphrase"


@pytest.fixture
def runtime(tmp_path, monkeypatch):
    monkeypatch.setenv("HARDENING_KEY_PASSPHRASE", PASS)
    key_files.generate_key(tmp_path / "key.pem", PASS.encode())
    orthanc = FakeOrthanc()
    config = HardeningConfig(data_directory=tmp_path / "data", signing_key=tmp_path / "key.pem",
                             administrators=("admin",))
    return Runtime(orthanc=orthanc, config=config, orthanc_config={"StorageDirectory": str(tmp_path / "storage")},
                   metrics=Metrics(orthanc), audit=MemoryAuditSink(), clock=lambda: NOW)


def installed(runtime):
    keys = key_files.load_key_ring(runtime.config.signing_key, PASS.encode(), runtime.config.key_directory, (), NOW)
    storage = storage_module.install(runtime, keys, SignatureCache())
    seal_routes.install(runtime, storage)
    return storage


def index_as_sealed(runtime, storage, uuid=UUID, content_type=1, indexed_uuid=None):
    """Make the fake index hold the instance the seal of ``uuid`` names, with that attachment."""
    ids = orthanc_ids_of_seal(storage.store.get(uuid, content_type))
    rest = runtime.orthanc.rest
    rest[("GET", f"/instances/{ids['Instance']}")] = {"ID": ids["Instance"], "ParentSeries": ids["Series"]}
    rest[("GET", f"/instances/{ids['Instance']}/attachments/dicom/info")] = {"Uuid": indexed_uuid or uuid}
    rest[("GET", f"/series/{ids['Series']}")] = {"ID": ids["Series"], "ParentStudy": ids["Study"]}
    rest[("GET", f"/studies/{ids['Study']}")] = {"ID": ids["Study"], "ParentPatient": ids["Patient"]}
    return ids


@pytest.mark.attack
def test_read_of_a_file_the_index_gives_to_another_instance_is_refused(runtime):
    storage = installed(runtime)
    # Orthanc's index answers (1.12.2 and later; before, the index facts: test_binding_from_index_facts.py).
    storage.index_binding.facts = None
    create, read, _remove = runtime.orthanc.storage_area
    create(UUID, 1, make_instance(patient_id="U-SWAP"))
    # Swapped pointers: the sealed instance's index entry names another file.
    index_as_sealed(runtime, storage, indexed_uuid="ffffffff-4b5a-4978-8695-a4b3c2d1e0f9")
    with pytest.raises(WrongInstanceError, match="attachment"):
        read(UUID, 1)
    assert runtime.audit.events[-1].event is EventCode.SECURITY_ALERT
    assert runtime.audit.events[-1].patient_id == "U-SWAP"


def test_create_then_read_round_trips_and_runs_hooks(runtime, tmp_path):
    storage = installed(runtime)
    create, read, remove = runtime.orthanc.storage_area
    events = []
    storage.write_hooks.append(events.append)
    storage.read_hooks.append(events.append)
    data = make_instance(patient_id="U-1")
    create(UUID, 1, data)
    index_as_sealed(runtime, storage)
    path = tmp_path / "storage" / UUID[:2] / UUID[2:4] / UUID
    assert path.read_bytes() == data
    assert read(UUID, 1) == data
    assert [e.operation for e in events] == ["write", "read"]
    assert events[1].is_verified and events[1].seal.patient_id == "U-1"
    seal = storage.store.get(UUID, 1)
    assert seal.sop_instance_uid and seal.key_id == storage.keyring.signer.key_id
    remove(UUID, 1)
    assert not path.exists() and storage.store.get_row(UUID, 1).state == "removed"


def test_header_attachment_reuses_the_identity_of_the_file(runtime):
    storage = installed(runtime)
    create, _read, _remove = runtime.orthanc.storage_area
    data = make_instance(patient_id="U-2")
    create(UUID, 1, data)
    other = UUID[:-1] + "0"
    create(other, 3, data[:400])
    assert storage.store.get(other, 3).patient_id == "U-2"


@pytest.mark.attack
def test_tampered_read_raises_counts_alerts_and_tells_hooks(runtime, tmp_path):
    storage = installed(runtime)
    create, read, _remove = runtime.orthanc.storage_area
    events = []
    storage.read_hooks.append(events.append)
    data = make_instance()
    create(UUID, 1, data)
    path = tmp_path / "storage" / UUID[:2] / UUID[2:4] / UUID
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(SealMismatchError):
        read(UUID, 1)
    assert runtime.metrics.value("integrity_failures_total") == 1
    assert runtime.audit.last().event is EventCode.SECURITY_ALERT
    assert events[-1].problem.startswith("SealMismatchError") and not events[-1].is_verified
    assert storage.store.last_failure_id() == 1


@pytest.mark.attack
def test_monitor_mode_serves_but_counts(runtime, tmp_path):
    runtime.config = dataclasses.replace(runtime.config, mode=Mode.MONITOR)
    installed(runtime)
    create, read, _remove = runtime.orthanc.storage_area
    data = make_instance()
    create(UUID, 1, data)
    tampered = data[:-1] + bytes([data[-1] ^ 1])
    (tmp_path / "storage" / UUID[:2] / UUID[2:4] / UUID).write_bytes(tampered)
    assert read(UUID, 1) == tampered
    assert runtime.metrics.value("integrity_failures_total") == 1


@pytest.mark.attack
def test_deleted_seal_row_of_recent_instance_is_refused(runtime):
    storage = installed(runtime)
    create, read, _remove = runtime.orthanc.storage_area
    data = make_instance()
    create(UUID, 1, data)
    storage.store.delete(UUID, 1)
    runtime.orthanc.rest[("POST", "/tools/lookup")] = [{"Type": "Instance", "ID": "abc"}]
    runtime.orthanc.rest[("GET", "/instances/abc/metadata/ReceptionDate")] = b"20260102T030405"
    with pytest.raises(SealMissingError, match="after sealing began"):
        read(UUID, 1)


def test_read_hook_refusal_fails_the_read(runtime):
    storage = installed(runtime)
    create, read, _remove = runtime.orthanc.storage_area
    create(UUID, 1, make_instance())

    def locked(event):
        raise AccessDeniedError("locked down")

    storage.read_hooks.append(locked)
    with pytest.raises(AccessDeniedError):
        read(UUID, 1)


def test_failed_write_hook_undoes_file_and_seal(runtime, tmp_path):
    storage = installed(runtime)
    create, _read, _remove = runtime.orthanc.storage_area

    def audit_down(event):
        raise RuntimeError("audit store down")

    storage.write_hooks.append(audit_down)
    with pytest.raises(RuntimeError):
        create(UUID, 1, make_instance())
    assert not (tmp_path / "storage" / UUID[:2] / UUID[2:4] / UUID).exists()
    assert storage.store.get(UUID, 1) is None


@pytest.mark.attack
def test_archive_is_refused_when_a_read_failed_while_the_job_ran(runtime):
    storage = installed(runtime)
    archives = archives_module.Archives(storage)
    mark = storage.store.last_failure_id()
    archives.remember("job-1", ArchiveJob({UUID: "instance-1"}, 1, mark))
    storage.store.record_failure(UUID, 1, "SealMismatchError: changed during the job", NOW)
    with pytest.raises(ArchiveRefusedError, match=r"1 instance.*instance-1"):
        archive_of_job(archives, "job-1")


@pytest.mark.attack
def test_archive_missing_an_instance_is_refused(runtime):
    import io
    import zipfile

    storage = installed(runtime)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("A/1.dcm", b"x")
    archives = archives_module.Archives(storage)
    archives.remember("job-2", ArchiveJob({UUID: "instance-2"}, 2, storage.store.last_failure_id()))
    runtime.orthanc.rest[("GET", "/jobs/job-2/archive")] = buffer.getvalue()
    with pytest.raises(ArchiveRefusedError, match="1 of 2 instances"):
        archive_of_job(archives, "job-2")


def test_keys_route_requires_administrator_and_lists_current(runtime):
    from tests.unit.fakes import FakeOutput
    from tests.unit.shell.test_guard_and_rest import basic

    storage = installed(runtime)
    route = runtime.orthanc.routes["/hardening/keys"]
    out = FakeOutput()
    route(out, "/hardening/keys", method="GET", groups=(), headers=basic("user"))
    assert out.status == 403
    out = FakeOutput()
    route(out, "/hardening/keys", method="GET", groups=(), headers=basic("admin"))
    assert out.status == 200 and json.loads(out.body)["current"] == storage.keyring.signer.key_id


@pytest.mark.parametrize(("durability", "pragma"), [(Durability.PROCESS, 1), (Durability.POWER, 2)])
def test_seal_store_follows_the_durability_key(runtime, durability, pragma):
    runtime = dataclasses.replace(runtime, config=dataclasses.replace(runtime.config, durability=durability))
    storage = installed(runtime)
    assert storage.store.database.read_one("PRAGMA synchronous")[0] == pragma


@pytest.mark.attack
def test_seal_row_edited_after_create_is_caught_although_the_seal_was_cached(runtime):
    storage = installed(runtime)
    create, read, _remove = runtime.orthanc.storage_area
    create(UUID, 1, make_instance(patient_id="U-9"))
    index_as_sealed(runtime, storage)
    read(UUID, 1)
    record = json.loads(storage.store.get_record(UUID, 1))
    record["patient_id"] = "SOMEONE-ELSE"
    edited = json.dumps(record, sort_keys=True, separators=(",", ":")).encode()
    storage.store.database.write("UPDATE seals SET record = ? WHERE uuid = ?", (edited, UUID))
    with pytest.raises(SealInvalidError):
        read(UUID, 1)


def test_index_tags_parsed_at_create_are_handed_over_once(runtime):
    storage = installed(runtime)
    create, _read, _remove = runtime.orthanc.storage_area
    create(UUID, 1, make_instance(patient_id="U-10"))
    seal = storage.store.get(UUID, 1)
    tags = storage.take_index_tags(seal)
    assert tags is not None and tags["Patient"]["PatientID"] == "U-10"
    assert storage.take_index_tags(seal) is None
    create(UUID, 1, make_instance(patient_id="U-11"))
    assert storage.take_index_tags(dataclasses.replace(storage.store.get(UUID, 1), index_tags_sha256="0" * 64)) is None


def checked_for_a_send(runtime, storage, patient):
    """An instance stored, indexed and checked as a C-MOVE checks it; the grants it leaves given."""
    create, read, _remove = runtime.orthanc.storage_area
    data = make_instance(patient_id=patient)
    create(UUID, 1, data)
    storage.index_binding.facts = None  # Orthanc's index answers (1.12.2 and later)
    ids = index_as_sealed(runtime, storage)
    bound = []
    storage.check_instance(ids["Instance"], attachments=[("dicom", 1, UUID)], bound=bound)
    assert bound == [(UUID, ids["Instance"], ids["Series"])]
    storage.grant_index_reads(bound)
    return ids, data, read


def instance_calls_during(runtime, action):
    before = len(runtime.orthanc.rest_calls)
    action()
    return [uri for _method, uri, _body in runtime.orthanc.rest_calls[before:] if uri.startswith("/instances/")]


def test_the_send_reads_a_file_its_move_checked_without_asking_the_index_again_once(runtime):
    storage = installed(runtime)
    ids, data, read = checked_for_a_send(runtime, storage, "U-MOVE")
    served = []
    assert instance_calls_during(runtime, lambda: served.append(read(UUID, 1))) == []
    assert served == [data]
    # One read: the next read of the file asks the index again.
    assert f"/instances/{ids['Instance']}" in instance_calls_during(runtime, lambda: read(UUID, 1))


@pytest.mark.attack
def test_pointer_moved_after_the_send_read_its_file_is_refused_at_the_next_read(runtime):
    storage = installed(runtime)
    _ids, data, read = checked_for_a_send(runtime, storage, "U-MOVE-2")
    assert read(UUID, 1) == data  # the send's read took the grant
    index_as_sealed(runtime, storage, indexed_uuid="ffffffff-4b5a-4978-8695-a4b3c2d1e0f9")
    with pytest.raises(WrongInstanceError, match="attachment"):
        read(UUID, 1)
    assert runtime.audit.events[-1].event is EventCode.SECURITY_ALERT


@pytest.mark.attack
def test_a_tampered_file_refused_by_the_moves_check_leaves_no_grant(runtime, tmp_path):
    storage = installed(runtime)
    create, _read, _remove = runtime.orthanc.storage_area
    create(UUID, 1, make_instance(patient_id="U-MOVE-3"))
    storage.index_binding.facts = None
    ids = index_as_sealed(runtime, storage)
    path = tmp_path / "storage" / UUID[:2] / UUID[2:4] / UUID
    stored = path.read_bytes()
    path.write_bytes(stored[:-1] + bytes([stored[-1] ^ 0xFF]))  # same size, one byte changed
    bound = []
    with pytest.raises(SealMismatchError):
        storage.check_instance(ids["Instance"], attachments=[("dicom", 1, UUID)], bound=bound)
    assert bound == []


def test_no_grant_is_kept_where_the_index_facts_answer_every_read(runtime):
    storage = installed(runtime)
    assert storage.index_binding.facts is not None  # before 1.12.2 with a SQLite index
    storage.grant_index_reads([(UUID, "instance", "series")])
    assert not storage.index_binding._bound


def listed_by_its_parent(runtime, storage, ids, file_uuid):
    """What a listing of the instance's study answers for it (``/studies/{id}/instances``)."""
    uri = f"/instances/{ids['Instance']}"
    runtime.orthanc.rest[("GET", f"{uri}/attachments?full")] = {"dicom": 1}
    tags = {"SOPInstanceUID": storage.store.get(UUID, 1).sop_instance_uid}
    return {uri: dict(runtime.orthanc.rest[("GET", uri)], MainDicomTags=tags, FileUuid=file_uuid)}


def test_a_moves_check_takes_the_instance_its_listing_gave_and_asks_only_the_attachment_list(runtime):
    storage = installed(runtime)
    ids, _data, _read, parents = stored_and_listed(runtime, storage, "U-LISTED")
    bound = []
    calls = instance_calls_during(runtime,
                                  lambda: storage.check_instance(ids["Instance"], parents=parents, bound=bound))
    assert calls == [f"/instances/{ids['Instance']}/attachments?full"]
    assert bound == [(UUID, ids["Instance"], ids["Series"])]


OTHER_UUID = "aaaaaaaa-4b5a-4978-8695-a4b3c2d1e0f9"


def stored_and_listed(runtime, storage, patient, file_uuid=UUID):
    """An instance stored and indexed (Orthanc's index answers), and its study listing's answer for it."""
    create, read, _remove = runtime.orthanc.storage_area
    data = make_instance(patient_id=patient)
    create(UUID, 1, data)
    storage.index_binding.facts = None
    ids = index_as_sealed(runtime, storage)
    return ids, data, read, listed_by_its_parent(runtime, storage, ids, file_uuid)


def test_an_archives_check_takes_its_listing_and_its_builds_read_takes_the_checks_reading_once(runtime):
    storage = installed(runtime)
    ids, data, read, listed = stored_and_listed(runtime, storage, "U-ARCHIVE")
    calls = instance_calls_during(runtime, lambda: verify_instances(storage, [ids["Instance"]], True, listed))
    assert calls == [f"/instances/{ids['Instance']}/attachments?full"]
    served = []
    assert instance_calls_during(runtime, lambda: served.append(read(UUID, 1))) == []
    assert served == [data]
    assert f"/instances/{ids['Instance']}" in instance_calls_during(runtime, lambda: read(UUID, 1))


@pytest.mark.attack
def test_same_size_edit_under_an_archives_grant_is_still_refused_by_the_builds_read(runtime, tmp_path):
    storage = installed(runtime)
    ids, _data, read, listed = stored_and_listed(runtime, storage, "U-ARCHIVE-2")
    path = tmp_path / "storage" / UUID[:2] / UUID[2:4] / UUID
    stored = path.read_bytes()
    path.write_bytes(stored[:-1] + bytes([stored[-1] ^ 0xFF]))  # the check before leaves the digest to the read
    verify_instances(storage, [ids["Instance"]], True, listed)
    assert UUID in storage.index_binding._bound
    with pytest.raises(SealMismatchError):
        read(UUID, 1)
    assert runtime.audit.events[-1].event is EventCode.SECURITY_ALERT


@pytest.mark.attack
def test_archive_whose_listing_points_an_instance_at_another_file_is_refused_and_grants_nothing(runtime):
    storage = installed(runtime)
    create, _read, _remove = runtime.orthanc.storage_area
    create(OTHER_UUID, 1, make_instance(patient_id="U-ARCHIVE-B"))
    ids, _data, _read, listed = stored_and_listed(runtime, storage, "U-ARCHIVE-A", file_uuid=OTHER_UUID)
    with pytest.raises(ArchiveRefusedError, match=ids["Instance"]):
        verify_instances(storage, [ids["Instance"]], True, listed)
    assert not storage.index_binding._bound
    assert runtime.audit.events[-1].event is EventCode.SECURITY_ALERT


@pytest.mark.attack
def test_listing_that_points_an_instance_at_another_instances_file_is_refused_by_the_check(runtime):
    storage = installed(runtime)
    create, _read, _remove = runtime.orthanc.storage_area
    create(OTHER_UUID, 1, make_instance(patient_id="U-LISTED-B"))
    # The index row of A names B's file.
    ids, _data, _read, parents = stored_and_listed(runtime, storage, "U-LISTED-A", file_uuid=OTHER_UUID)
    bound = []
    with pytest.raises(SealMismatchError, match=f"attachment {OTHER_UUID}: sealed sop_instance_uid differs"):
        storage.check_instance(ids["Instance"], parents=parents, bound=bound)
    assert bound == []
    assert runtime.audit.events[-1].event is EventCode.SECURITY_ALERT
