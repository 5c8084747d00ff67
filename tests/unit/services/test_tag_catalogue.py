"""The sealed-tag catalogue's use of the tag store: one commit per refresh, no lookup for tags just parsed."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from orthanc_hardening.integrity.query import orthanc_ids_of_seal
from orthanc_hardening.seal.identity import identity_of_dataset, parse_dataset
from orthanc_hardening.seal.keys import KeyRing, Signer
from orthanc_hardening.seal.layout import attachment_path
from orthanc_hardening.seal.record import seal_attachment
from orthanc_hardening.services.tag_catalogue import SealedTagCatalogue
from orthanc_hardening.stores.attachment_files import write_file
from orthanc_hardening.stores.seal_store import SealReader, SQLiteSealStore
from orthanc_hardening.stores.signature_cache import SignatureCache
from orthanc_hardening.stores.tag_store import SQLiteTagStore
from tests.support.dicom import make_instance

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
UUIDS = [f"{n:08x}-4b5a-4978-8695-a4b3c2d1e0f9" for n in (0x0F1E2D3C, 0x1F1E2D3C, 0x2F1E2D3C)]


class CountingTagStore(SQLiteTagStore):
    """The tag store, counting its lookups and its commits."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.gets: list[str] = []
        self.commits: list[int] = []

    def get(self, seal_uuid):
        self.gets.append(seal_uuid)
        return super().get(seal_uuid)

    def put_many(self, entries):
        entries = list(entries)
        self.commits.append(len(entries))
        super().put_many(entries)


@pytest.fixture
def sealed(tmp_path):
    """Three sealed DICOM files on disk, their seal store, and the tags their create parsed."""
    signer = Signer.of(ed25519.Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"tag catalogue").digest()))
    store = SQLiteSealStore(tmp_path / "seals.db", "NORMAL")
    root = tmp_path / "storage"
    parsed = {}
    for n, uuid in enumerate(UUIDS):
        data = make_instance(patient_id=f"TAGS-{n}")
        identity, tags = identity_of_dataset(parse_dataset(data))
        store.put(seal_attachment(uuid, 1, data, identity, signer, NOW))
        path = attachment_path(root, uuid)
        write_file(path, data, sync=False)
        parsed[uuid] = tags
    return store, root, KeyRing(signer), parsed


def catalogue_of(tmp_path, sealed, just_parsed):
    _store, root, keyring, _parsed = sealed
    tags = CountingTagStore(tmp_path / "query-tags.db", "NORMAL")
    reader = SealReader(tmp_path / "seals.db")
    return SealedTagCatalogue(reader, tags, root, keyring, SignatureCache(), just_parsed), tags


def test_refresh_stores_the_new_tags_in_one_commit_and_looks_up_only_those_not_just_parsed(tmp_path, sealed):
    _store, _root, _keyring, parsed = sealed
    fresh = {uuid: parsed[uuid] for uuid in UUIDS[:2]}
    catalogue, tags = catalogue_of(tmp_path, sealed, lambda seal: fresh.pop(seal.uuid, None))
    catalogue.refresh()
    assert len(catalogue) == 3
    assert tags.gets == [UUIDS[2]]  # the third was not parsed by a create: the store, then its file
    assert tags.commits == [3]
    for uuid in UUIDS:
        assert tags.get(uuid) == json.loads(json.dumps(parsed[uuid]))
    catalogue.refresh()
    assert tags.commits == [3]  # nothing new: no transaction


def test_after_a_restart_the_stored_tags_are_used_without_reading_the_files(tmp_path, sealed):
    _store, root, _keyring, parsed = sealed
    first, _tags = catalogue_of(tmp_path, sealed, lambda seal: parsed.get(seal.uuid))
    first.refresh()
    for uuid in UUIDS:
        attachment_path(root, uuid).unlink()
    again, tags = catalogue_of(tmp_path, sealed, lambda seal: None)
    again.refresh()
    assert len(again) == 3
    assert tags.gets == UUIDS
    assert tags.commits == []


@pytest.mark.attack
def test_tampered_stored_tags_are_not_indexed(tmp_path, sealed):
    store, _root, _keyring, parsed = sealed
    first, _tags = catalogue_of(tmp_path, sealed, lambda seal: parsed.get(seal.uuid))
    first.refresh()
    forged = dict(parsed[UUIDS[0]], Patient={"PatientID": "SOMEONE-ELSE"})
    with sqlite3.connect(tmp_path / "query-tags.db") as db:
        db.execute("UPDATE sealed_tags SET tags = ? WHERE seal_uuid = ?", (json.dumps(forged), UUIDS[0]))
    again, _tags = catalogue_of(tmp_path, sealed, lambda seal: None)
    again.refresh()
    assert len(again) == 2
    assert orthanc_ids_of_seal(store.get(UUIDS[0], 1))["Instance"] not in again.index
