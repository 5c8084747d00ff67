"""Orthanc's C-FIND answer rebuilt (``integrity/cfind.py``) and what a C-MOVE names (``integrity/cmove.py``)."""

from __future__ import annotations

import io

import pydicom
import pytest
from pydicom.datadict import tag_for_keyword

from orthanc_hardening.config import check_python_threads
from orthanc_hardening.errors import BadRequestError, ConfigError
from orthanc_hardening.integrity.cfind import (
    MODALITIES_IN_STUDY,
    RETRIEVE_AE_TITLE,
    STUDY_INSTANCES,
    Sequences,
    answer_dataset,
    answer_elements,
    counters_of,
    find_bodies,
    joined,
    lookup,
    needs_instance_tags,
    parse_query,
    qido_keyword,
)
from orthanc_hardening.integrity.cmove import move_identifiers


def tag(keyword: str) -> int:
    found = tag_for_keyword(keyword)
    assert found is not None
    return int(found)


def query(level: str, **keys: str | None) -> list[tuple[int, str | None]]:
    return [(tag("QueryRetrieveLevel"), level), (tag("SpecificCharacterSet"), "ISO_IR 100"),
            *((tag(keyword), value) for keyword, value in keys.items())]


def test_image_is_the_instance_level_and_the_level_is_answered_as_sent() -> None:
    parsed = parse_query(query("image", SOPInstanceUID=""))
    assert parsed.level == "Instance" and parsed.level_value == "image"
    assert answer_elements(parsed, {}, "PACS", Sequences.COPY_OR_OMIT)[tag("QueryRetrieveLevel")] == "image"


def test_query_without_a_level_or_with_an_unknown_one_is_a_bad_request() -> None:
    with pytest.raises(BadRequestError, match="QueryRetrieveLevel"):
        parse_query([(tag("PatientID"), "1")])
    with pytest.raises(BadRequestError, match="FRAME"):
        parse_query(query("FRAME"))


def test_constraints_are_case_sensitive_except_person_names() -> None:
    parsed = parse_query(query("STUDY", PatientName="doe*", StudyDescription="Chest*", StudyInstanceUID="",
                               Rows=None, RequestAttributesSequence=""))
    exact, names = find_bodies(parsed, case_sensitive_pn=False, resource_finder=False)
    assert exact == {"Level": "Study", "Query": {"0008,1030": "Chest*"}, "Expand": True, "CaseSensitive": True}
    assert names == {"Level": "Study", "Query": {"0010,0010": "doe*"}, "Expand": False, "CaseSensitive": False}
    (single,) = find_bodies(parsed, case_sensitive_pn=True, resource_finder=False)
    assert single["Query"] == {"0008,1030": "Chest*", "0010,0010": "doe*"} and single["CaseSensitive"]


def test_only_person_names_match_case_insensitively_in_one_request() -> None:
    (body,) = find_bodies(parse_query(query("PATIENT", PatientName="m*ller*")), False, False)
    assert body["Query"] == {"0010,0010": "m*ller*"} and body["CaseSensitive"] is False


def test_a_star_is_a_constraint_and_an_empty_value_is_not() -> None:
    (body,) = find_bodies(parse_query(query("STUDY", AccessionNumber="*", StudyDate="")), False, False)
    assert body["Query"] == {"0008,0050": "*"}


def test_resource_finder_requests_every_key_and_ignores_the_time_zone() -> None:
    parsed = parse_query(query("STUDY", StudyInstanceUID="1.2", ModalitiesInStudy="", TimezoneOffsetFromUTC="+0100"))
    (body,) = find_bodies(parsed, False, resource_finder=True)
    assert body["RequestedTags"] == ["0008,0061", "0020,000d"] and body["Query"] == {"0020,000d": "1.2"}
    (legacy,) = find_bodies(parsed, False, resource_finder=False)
    assert "RequestedTags" not in legacy and legacy["Query"]["0008,0201"] == "+0100"


def test_legacy_answers_from_an_instance_for_non_index_keys_and_sequences() -> None:
    assert not needs_instance_tags(parse_query(query("STUDY", StudyInstanceUID="", ModalitiesInStudy="")))
    assert needs_instance_tags(parse_query(query("STUDY", StudyInstanceUID="", Rows=None)))
    assert needs_instance_tags(parse_query(query("STUDY", RequestAttributesSequence="")))


def test_counters_are_those_of_the_level() -> None:
    parsed = parse_query(query("STUDY", ModalitiesInStudy="", NumberOfStudyRelatedInstances="",
                               NumberOfSeriesRelatedInstances=""))
    assert set(counters_of(parsed)) == {MODALITIES_IN_STUDY, STUDY_INSTANCES}
    assert joined(["MR", "CT", "MR"]) == "CT\\MR"


def test_answer_has_every_key_the_retrieve_ae_and_counters() -> None:
    parsed = parse_query(query("STUDY", StudyInstanceUID="", PatientName="", Rows=None, ModalitiesInStudy=""))
    answer = answer_elements(parsed, {tag("StudyInstanceUID"): "1.2", tag("Rows"): None,
                                      MODALITIES_IN_STUDY: "CT\\MR"}, "PACS", Sequences.COPY_OR_OMIT)
    assert answer[RETRIEVE_AE_TITLE] == "PACS" and answer[tag("StudyInstanceUID")] == "1.2"
    assert answer[tag("PatientName")] == "" and answer[tag("Rows")] == "" and answer[MODALITIES_IN_STUDY] == "CT\\MR"


def test_a_retrieve_ae_title_key_is_answered_from_the_resource() -> None:
    parsed = parse_query(query("STUDY", RetrieveAETitle=""))
    assert answer_elements(parsed, {}, "PACS", Sequences.COPY_OR_OMIT)[RETRIEVE_AE_TITLE] == ""


def test_sequence_keys_are_answered_as_each_orthanc_does() -> None:
    parsed = parse_query(query("STUDY", RequestAttributesSequence=""))
    sequence = tag("RequestAttributesSequence")
    items = {sequence: [{"0040,1001": "RP-1"}]}
    assert Sequences.of(resource_finder=False, orthanc_1_13=False) is Sequences.COPY_OR_OMIT
    assert Sequences.of(resource_finder=True, orthanc_1_13=False) is Sequences.OMIT_OR_EMPTY
    assert Sequences.of(resource_finder=True, orthanc_1_13=True) is Sequences.COPY_OR_EMPTY
    assert sequence not in answer_elements(parsed, {}, "PACS", Sequences.COPY_OR_OMIT)
    assert answer_elements(parsed, items, "PACS", Sequences.COPY_OR_OMIT)[sequence] == items[sequence]
    assert sequence not in answer_elements(parsed, items, "PACS", Sequences.OMIT_OR_EMPTY)
    assert answer_elements(parsed, {}, "PACS", Sequences.OMIT_OR_EMPTY)[sequence] == []
    assert answer_elements(parsed, items, "PACS", Sequences.COPY_OR_EMPTY)[sequence] == items[sequence]
    assert answer_elements(parsed, {}, "PACS", Sequences.COPY_OR_EMPTY)[sequence] == []


def test_lookup_reads_orthanc_json_by_tag_or_keyword() -> None:
    assert lookup(tag("PatientName"), {"PatientName": "Doe^John"}) == "Doe^John"
    assert lookup(tag("PatientName"), {"0010,0010": {"Name": "PatientName", "Type": "String", "Value": "X"}}) == "X"
    assert lookup(tag("PixelData"), {"7fe0,0010": None}) is None
    assert lookup(tag("PatientID"), {}, {"PatientID": "P"}) == "P"


def test_cfind_answer_is_a_valid_dicom_file_with_numbers_and_sequences() -> None:
    data = answer_dataset({tag("PatientName"): "Doe^Jäne", tag("StudyInstanceUID"): "1.2.3",
                           tag("QueryRetrieveLevel"): "STUDY", tag("Rows"): "512", tag("Columns"): "",
                           tag("PixelData"): "ignored", tag("ReferencedSOPSequence"): [],
                           tag("RequestAttributesSequence"): [{"0040,1001": "RP-1", "ScheduledProcedureStepID": "S"}]})
    dataset = pydicom.dcmread(io.BytesIO(data))
    assert str(dataset.PatientName) == "Doe^Jäne" and dataset.StudyInstanceUID == "1.2.3"
    assert dataset.QueryRetrieveLevel == "STUDY" and dataset.SpecificCharacterSet == "ISO_IR 192"
    assert dataset.Rows == 512 and dataset.Columns is None and len(dataset.ReferencedSOPSequence) == 0
    item = dataset.RequestAttributesSequence[0]
    assert item.RequestedProcedureID == "RP-1" and item.ScheduledProcedureStepID == "S"
    assert dataset["PixelData"].value in (None, b"")


def test_qido_keys() -> None:
    assert qido_keyword("PatientName") == "PatientName"
    assert qido_keyword("00100020") == "PatientID"
    assert qido_keyword("limit") == "" and qido_keyword("includefield") == "" and qido_keyword("Nonsense") == ""


# -- C-MOVE -------------------------------------------------------------------------------------


def test_move_matches_by_the_level_identifier_only() -> None:
    assert move_identifiers({"Level": "PATIENT", "PatientID": "P1", "AccessionNumber": "A1"}) == \
        ("Patient", "PatientID", ["P1"])
    assert move_identifiers({"Level": "STUDY", "AccessionNumber": "A1", "StudyInstanceUID": "1.2"}) == \
        ("Study", "AccessionNumber", ["A1"])
    assert move_identifiers({"Level": "STUDY", "StudyInstanceUID": "1.2\\1.3"}) == \
        ("Study", "StudyInstanceUID", ["1.2", "1.3"])
    assert move_identifiers({"Level": "IMAGE", "SOPInstanceUID": "1.2.3"}) == ("Instance", "SOPInstanceUID", ["1.2.3"])


def test_move_without_the_level_identifier_is_a_bad_request() -> None:
    with pytest.raises(BadRequestError, match="No DICOM identifier"):
        move_identifiers({"Level": "PATIENT", "AccessionNumber": "A1"})
    with pytest.raises(BadRequestError, match="No DICOM identifier"):
        move_identifiers({"Level": "STUDY", "StudyInstanceUID": None})
    with pytest.raises(BadRequestError, match="level"):
        move_identifiers({"Level": None, "StudyInstanceUID": "1.2"})


# -- the Python plugin's threads -------------------------------------------------------------------


def test_orthanc_1_13_needs_python_allow_threads() -> None:
    check_python_threads({}, loader_threads=False)
    check_python_threads({"Python": {"AllowThreads": True}}, loader_threads=True)
    for config in ({}, {"Python": {}}, {"Python": {"AllowThreads": "true"}}, {"Python": []}):
        with pytest.raises(ConfigError) as raised:
            check_python_threads(config, loader_threads=True)
        assert raised.value.key == "Python.AllowThreads"
