"""The start-up scan for attachments Orthanc's SQLite index names for several instances."""

from __future__ import annotations

import sqlite3

import pytest

from orthanc_hardening.errors import NotFoundError
from orthanc_hardening.stores.orthanc_index import shared_attachments


def _index(path, rows):
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE Resources (internalId INTEGER PRIMARY KEY, resourceType INTEGER, publicId TEXT, "
               "parentId INTEGER)")
    db.execute("CREATE TABLE AttachedFiles (id INTEGER, fileType INTEGER, uuid TEXT, compressedSize INTEGER, "
               "PRIMARY KEY (id, fileType))")
    for internal, public in ((1, "inst-a"), (2, "inst-b"), (3, "inst-c")):
        db.execute("INSERT INTO Resources VALUES (?, 4, ?, NULL)", (internal, public))
    db.executemany("INSERT INTO AttachedFiles VALUES (?, ?, ?, 0)", rows)
    db.commit()
    db.close()


@pytest.mark.attack
def test_pointer_copied_onto_another_instances_file_is_found(tmp_path):
    path = tmp_path / "index"
    _index(path, [(1, 1, "u-b"), (1, 3, "u-b3"), (2, 1, "u-b"), (2, 3, "u-b3"), (3, 1, "u-c")])
    assert shared_attachments(path) == {"u-b": ("inst-a", "inst-b"), "u-b3": ("inst-a", "inst-b")}


def test_untouched_index_has_no_shared_attachment(tmp_path):
    path = tmp_path / "index"
    _index(path, [(1, 1, "u-a"), (2, 1, "u-b"), (3, 1, "u-c")])
    assert shared_attachments(path) == {}


def test_missing_index_is_reported(tmp_path):
    with pytest.raises(NotFoundError):
        shared_attachments(tmp_path / "index")
