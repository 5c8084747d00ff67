"""The in-memory copy of the index facts: answers as Orthanc's index would, kept by create and remove."""

from __future__ import annotations

import pytest

from orthanc_hardening.integrity.index_facts import FileFact, IndexFacts, load, normalize_identifier
from orthanc_hardening.integrity.query import orthanc_id

IDENTIFIERS = ("PAT-1", "1.2.3", "1.2.3.4", "1.2.3.4.5")


def ids_of(identifiers: tuple[str, str, str, str]) -> dict[str, str]:
    levels = ("Patient", "Study", "Series", "Instance")
    return {level: orthanc_id(*identifiers[: i + 1]) for i, level in enumerate(levels)}


@pytest.fixture
def stored() -> tuple[IndexFacts, dict[str, str]]:
    facts = IndexFacts()
    ids = ids_of(IDENTIFIERS)
    facts.add_file(ids, IDENTIFIERS, 1, "u-dicom")
    facts.add_file(ids, IDENTIFIERS, 3, "u-header")
    return facts, ids


def test_created_file_names_its_instance_and_every_parent(stored):
    facts, ids = stored
    assert facts.lookup("1.2.3.4.5", "Instance") == [ids["Instance"]]
    assert facts.lookup("1.2.3.4", "Series") == [ids["Series"]]
    assert facts.lookup("1.2.3", "Study") == [ids["Study"]]
    assert facts.parent(ids["Instance"]) == ids["Series"]
    assert facts.parent(ids["Series"]) == ids["Study"]
    assert facts.parent(ids["Study"]) == ids["Patient"]
    assert facts.parent(ids["Patient"]) == ""
    assert facts.identifier(ids["Patient"]) == "PAT-1"
    assert facts.files(ids["Instance"]) == [FileFact(1, "u-dicom"), FileFact(3, "u-header")]
    assert facts.instances_under(ids["Patient"]) == [(ids["Instance"], ids["Series"])]
    assert len(facts) == 1


def test_lookup_normalises_as_orthanc_does(stored):
    facts, ids = stored
    assert facts.lookup(" pat-1 ", "Patient") == [ids["Patient"]]
    assert normalize_identifier(" a_b%c\x01 ") == "A B C"
    assert facts.lookup("1.2.3.4.5", "Series") == []


def test_user_attachments_are_not_kept(stored):
    facts, ids = stored
    facts.add_file(ids, IDENTIFIERS, 1024, "u-user")
    assert [f.uuid for f in facts.files(ids["Instance"])] == ["u-dicom", "u-header"]


def test_removing_the_dicom_file_deletes_the_instance_and_its_empty_parents(stored):
    facts, ids = stored
    other = ("PAT-1", "1.2.3", "1.2.3.9", "1.2.3.9.1")
    facts.add_file(ids_of(other), other, 1, "u-other")
    facts.remove_file("u-header")
    assert facts.files(ids["Instance"]) == [FileFact(1, "u-dicom")]
    facts.remove_file("u-dicom")
    assert facts.level(ids["Instance"]) is None
    assert facts.level(ids["Series"]) is None
    assert facts.lookup("1.2.3.4.5", "Instance") == []
    # The study still holds the other series.
    assert facts.children(ids["Study"]) == [ids_of(other)["Series"]]
    facts.remove_file("u-other")
    assert facts.level(ids["Patient"]) is None
    assert len(facts) == 0
    facts.remove_file("u-unknown")  # a file the copy never named: nothing happens


def test_duplicate_store_removed_by_orthanc_leaves_the_stored_instance(stored):
    # OverwriteInstances false: Orthanc writes the files of a duplicate, then removes them.
    facts, ids = stored
    facts.add_file(ids, IDENTIFIERS, 1, "u-dup")
    facts.add_file(ids, IDENTIFIERS, 3, "u-dup-header")
    assert facts.names_file(ids["Instance"], 1, "u-dup")
    facts.remove_file("u-dup")
    facts.remove_file("u-dup-header")
    assert facts.files(ids["Instance"]) == [FileFact(1, "u-dicom"), FileFact(3, "u-header")]


def test_overwritten_instance_keeps_the_new_file(stored):
    # OverwriteInstances true: the new files are written, then the old ones removed.
    facts, ids = stored
    facts.add_file(ids, IDENTIFIERS, 1, "u-new")
    facts.remove_file("u-dicom")
    facts.remove_file("u-header")
    assert facts.files(ids["Instance"]) == [FileFact(1, "u-new")]


@pytest.mark.attack
def test_reparented_instance_loaded_from_an_edited_index_keeps_the_indexed_parent():
    # The index edited at rest puts the instance under another series: the copy says what the index says.
    ids = ids_of(IDENTIFIERS)
    facts = load([("Patient", ids["Patient"], "", "PAT-1", "PAT-1"),
                  ("Study", ids["Study"], ids["Patient"], "1.2.3", "1.2.3"),
                  ("Series", "series-elsewhere", ids["Study"], "9.9", "9.9"),
                  ("Instance", ids["Instance"], "series-elsewhere", "1.2.3.4.5", "1.2.3.4.5")],
                 [(ids["Instance"], 1, "u-dicom")])
    # A file created later for that instance (Orthanc adding its header) does not move it.
    facts.add_file(ids, IDENTIFIERS, 3, "u-header")
    assert facts.parent(ids["Instance"]) == "series-elsewhere"
    assert facts.level(ids["Series"]) is None


@pytest.mark.attack
def test_pointer_copied_at_rest_is_loaded_as_the_index_names_it():
    facts = load([("Patient", "p", "", "P", "P"), ("Study", "st", "p", "1", "1"), ("Series", "se", "st", "1.1", "1.1"),
                  ("Instance", "a", "se", "1.1.1", "1.1.1"), ("Instance", "b", "se", "1.1.2", "1.1.2")],
                 [("a", 1, "u-b"), ("b", 1, "u-b"), ("b", 1024, "u-user"), ("ghost", 1, "u-ghost")])
    assert facts.files("a") == [FileFact(1, "u-b")]
    assert facts.files("b") == [FileFact(1, "u-b")]
    with pytest.raises(KeyError):
        facts.files("ghost")


def test_identifier_without_lookup_row_is_not_found():
    # An index whose DicomIdentifiers row was deleted: /tools/lookup does not find the resource.
    facts = load([("Patient", "p", "", "P", "\x00")], [])
    assert facts.lookup("P", "Patient") == []
    assert facts.identifier("p") == "P"


def test_unknown_resources_raise():
    facts = IndexFacts()
    for read in (facts.parent, facts.identifier, facts.children, facts.instances_under, facts.files):
        with pytest.raises(KeyError):
            read("nothing")
    with pytest.raises(ValueError):
        facts.add_resource("Frame", "x", "", "")


def test_a_file_without_identity_makes_the_copy_incomplete():
    facts = IndexFacts()
    assert facts.complete
    facts.mark_incomplete()
    assert not facts.complete
