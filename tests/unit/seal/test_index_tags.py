"""The index-tag digest: same result from the stored bytes and from Orthanc's MainDicomTags."""

from __future__ import annotations

import io

import pytest
from pydicom import dcmread

from orthanc_hardening.seal.identity import identify, parse_dataset
from orthanc_hardening.seal.index_tags import (
    LEVELS,
    index_tags_digest,
    index_tags_of_dataset,
    index_tags_of_orthanc,
    level_digest,
    normalize,
)
from tests.support.dicom import make_instance


def orthanc_json(tags):
    return tags["Patient"], tags["Study"], tags["Series"], tags["Instance"]


def test_dataset_and_orthanc_json_agree_and_digest_changes_with_a_value():
    data = make_instance(patient_id="P-7", study_uid="1.2.3", series_uid="1.2.3.4", sop_uid="1.2.3.4.5")
    tags = index_tags_of_dataset(dcmread(io.BytesIO(data), stop_before_pixels=True))
    assert tags["Patient"]["PatientID"] == "P-7"
    assert tags["Instance"]["ImageOrientationPatient"] == tags["Series"]["ImageOrientationPatient"]
    # As Orthanc answers (values as it stores them, plus tags that are not main tags).
    orthanc = {level: dict(values) for level, values in tags.items()}
    orthanc["Instance"]["Rows"] = "64"
    assert index_tags_of_orthanc(*orthanc_json(orthanc)) == tags
    assert index_tags_digest(index_tags_of_orthanc(*orthanc_json(orthanc))) == index_tags_digest(tags)
    orthanc["Study"]["StudyDescription"] = "Brain MRI"
    changed = index_tags_of_orthanc(*orthanc_json(orthanc))
    assert index_tags_digest(changed) != index_tags_digest(tags)
    assert level_digest(changed, "Study") != level_digest(tags, "Study")
    assert level_digest(changed, "Series") == level_digest(tags, "Series")


def test_padding_is_normalised_per_value():
    assert normalize(" A \\B\x00") == "A\\B"
    assert normalize("") == ""


def test_binary_numbers_render_as_decimal_text():
    dataset = dcmread(io.BytesIO(make_instance()), stop_before_pixels=True)
    dataset.add_new(0x00540081, "US", 12)  # NumberOfSlices
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    tags = index_tags_of_dataset(dcmread(io.BytesIO(buffer.getvalue()), stop_before_pixels=True))
    assert tags["Series"]["NumberOfSlices"] == "12"


def test_levels_are_orthanc_1_10_main_tags():
    names = {level: [name for _g, _e, name in tags] for level, tags in LEVELS.items()}
    assert names["Patient"] == ["PatientName", "PatientID", "PatientBirthDate", "PatientSex", "OtherPatientIDs"]
    assert len(names["Study"]) == 10 and len(names["Series"]) == 22 and len(names["Instance"]) == 11


def test_identity_from_bytes_and_header_prefix():
    data = make_instance(patient_id="P-8", study_uid="1.2", series_uid="1.2.3", sop_uid="1.2.3.4")
    identity = identify(data)
    assert (identity.patient_id, identity.study_uid, identity.series_uid, identity.sop_instance_uid) == (
        "P-8", "1.2", "1.2.3", "1.2.3.4")
    assert len(identity.index_tags_sha256) == 64


@pytest.mark.parametrize("garbage", [b"", b"not dicom"])
def test_unreadable_bytes_raise_value_error(garbage):
    with pytest.raises(ValueError, match="not a readable DICOM"):
        parse_dataset(garbage)
