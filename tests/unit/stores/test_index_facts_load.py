"""The index facts loaded from Orthanc's SQLite index file (at plugin start, before Orthanc opens it)."""

from __future__ import annotations

import sqlite3

import pytest

from orthanc_hardening.errors import NotFoundError
from orthanc_hardening.integrity.index_facts import FileFact
from orthanc_hardening.stores.orthanc_index import load_index_facts


def _index(path, lookup_rows=True):
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE Resources (internalId INTEGER PRIMARY KEY, resourceType INTEGER, publicId TEXT, "
               "parentId INTEGER)")
    for table in ("MainDicomTags", "DicomIdentifiers"):
        db.execute(f"CREATE TABLE {table} (id INTEGER, tagGroup INTEGER, tagElement INTEGER, value TEXT)")
    db.execute("CREATE TABLE AttachedFiles (id INTEGER, fileType INTEGER, uuid TEXT, compressedSize INTEGER)")
    db.executemany("INSERT INTO Resources VALUES (?, ?, ?, ?)",
                   [(4, 4, "inst", 3), (3, 3, "series", 2), (2, 2, "study", 1), (1, 1, "patient", None)])
    tags = [(1, 0x0010, 0x0020, "pat-1 "), (2, 0x0020, 0x000D, "1.2"), (3, 0x0020, 0x000E, "1.2.3"),
            (4, 0x0008, 0x0018, "1.2.3.4"), (2, 0x0008, 0x0050, "ACC")]
    db.executemany("INSERT INTO MainDicomTags VALUES (?, ?, ?, ?)", tags)
    if lookup_rows:
        db.executemany("INSERT INTO DicomIdentifiers VALUES (?, ?, ?, ?)",
                       [(i, g, e, v.strip().upper()) for i, g, e, v in tags])
    db.executemany("INSERT INTO AttachedFiles VALUES (?, ?, ?, 0)",
                   [(4, 1, "u-dicom"), (4, 3, "u-header"), (4, 1024, "u-user")])
    db.commit()
    db.close()


def test_every_resource_is_loaded_with_its_parent_identifier_and_dicom_files(tmp_path):
    _index(tmp_path / "index")
    facts = load_index_facts(tmp_path / "index")
    assert facts.lookup("1.2.3.4", "Instance") == ["inst"]
    assert facts.lookup("PAT-1", "Patient") == ["patient"]
    assert facts.identifier("patient") == "pat-1 "  # as stored, for the audit trail
    assert facts.instances_under("patient") == [("inst", "series")]
    assert facts.parent("study") == "patient"
    assert facts.files("inst") == [FileFact(1, "u-dicom"), FileFact(3, "u-header")]


@pytest.mark.attack
def test_deleted_lookup_row_hides_the_resource_as_in_orthancs_lookup(tmp_path):
    _index(tmp_path / "index", lookup_rows=False)
    facts = load_index_facts(tmp_path / "index")
    assert facts.lookup("1.2.3.4", "Instance") == []
    assert facts.parent("inst") == "series"


def test_missing_index_is_reported(tmp_path):
    with pytest.raises(NotFoundError):
        load_index_facts(tmp_path / "index")
