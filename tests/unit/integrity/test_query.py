"""Verified query answers: Orthanc's index tags against the sealed index tags, no file read."""

from __future__ import annotations

import copy
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from orthanc_hardening.config import Mode, UnsealedPolicy
from orthanc_hardening.errors import SealMismatchError
from orthanc_hardening.integrity.query import (
    Action,
    SealedTagIndex,
    Verdict,
    action_for,
    filter_answer,
    inspect_item,
    level_of,
    orthanc_id,
    sealed_instance_tags,
)
from orthanc_hardening.seal.identity import identity_of_dataset, parse_dataset
from orthanc_hardening.seal.keys import Signer
from orthanc_hardening.seal.record import seal_attachment
from tests.support.dicom import make_instance

NOW = datetime(2026, 1, 2, tzinfo=UTC)
SIGNER = Signer.of(ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32))))


def sealed(data: bytes, uuid: str):
    identity, tags = identity_of_dataset(parse_dataset(data))
    seal = seal_attachment(uuid, 1, data, identity, SIGNER, NOW)
    return seal, tags


def orthanc_study(seal, tags) -> dict:
    """A study as ``/studies?expand`` answers it (Orthanc copies the index tags)."""
    return {
        "ID": orthanc_id(seal.patient_id, seal.study_uid),
        "Type": "Study",
        "MainDicomTags": dict(tags["Study"]),
        "PatientMainDicomTags": dict(tags["Patient"]),
        "Series": [],
    }


@pytest.fixture
def study():
    data = [make_instance(patient_id="P-7", patient_name="Doe^Jane", study_uid="1.2.3", series_uid="1.2.3.1",
                          sop_uid=f"1.2.3.1.{i}", instance_number=i) for i in range(1, 3)]
    index = SealedTagIndex()
    pairs = [sealed(d, f"u{i}") for i, d in enumerate(data)]
    for seal, tags in pairs:
        index.add(sealed_instance_tags(seal, tags))
    return index, pairs


def test_orthanc_id_is_sha1_in_groups() -> None:
    # Orthanc's id of patient "P-7" (sha1 "P-7"), formatted 8-8-8-8-8.
    value = orthanc_id("P-7")
    assert len(value) == 44 and value.count("-") == 4
    assert orthanc_id("P-7", "1.2.3") != orthanc_id("P-7", "1.2.4")


def test_untouched_study_is_ok(study) -> None:
    index, pairs = study
    check = inspect_item("Study", orthanc_study(*pairs[0]), index)
    assert check.verdict is Verdict.OK


@pytest.mark.attack
@pytest.mark.parametrize("tag", ["PatientName", "PatientID"])
def test_patient_tag_edited_in_index_is_a_mismatch(study, tag: str) -> None:
    index, pairs = study
    item = orthanc_study(*pairs[0])
    item["PatientMainDicomTags"][tag] = "Attacker^Edit"
    check = inspect_item("Study", item, index)
    assert check.verdict is Verdict.MISMATCH
    assert check.differing == (tag,)
    assert "Attacker" not in check.detail and tag in check.detail


@pytest.mark.attack
def test_study_uid_edited_in_index_still_finds_its_seal(study) -> None:
    index, pairs = study
    item = orthanc_study(*pairs[0])
    item["MainDicomTags"]["StudyInstanceUID"] = "9.9.9"
    assert inspect_item("Study", item, index).verdict is Verdict.MISMATCH


def test_unknown_resource_is_unsealed(study) -> None:
    index, _ = study
    item = {"ID": orthanc_id("nobody", "1"), "MainDicomTags": {}, "PatientMainDicomTags": {}}
    assert inspect_item("Study", item, index).verdict is Verdict.UNSEALED


def test_every_level_is_checked(study) -> None:
    index, pairs = study
    seal, tags = pairs[1]
    patient = {"ID": orthanc_id(seal.patient_id), "MainDicomTags": dict(tags["Patient"])}
    series = {"ID": orthanc_id(seal.patient_id, seal.study_uid, seal.series_uid), "MainDicomTags": dict(tags["Series"])}
    instance = {"ID": orthanc_id(seal.patient_id, seal.study_uid, seal.series_uid, seal.sop_instance_uid),
                "MainDicomTags": dict(tags["Instance"])}
    for level, item in (("Patient", patient), ("Series", series), ("Instance", instance)):
        assert inspect_item(level, item, index).verdict is Verdict.OK
        edited = copy.deepcopy(item)
        first = next(iter(edited["MainDicomTags"]))
        edited["MainDicomTags"][first] += "X"
        assert inspect_item(level, edited, index).verdict is Verdict.MISMATCH


def test_study_tags_of_any_sealed_instance_are_accepted(study) -> None:
    index, pairs = study
    # Instances of one study disagree on InstanceNumber only; study level is the same for both.
    assert inspect_item("Study", orthanc_study(*pairs[1]), index).verdict is Verdict.OK


def test_padding_is_normalised(study) -> None:
    index, pairs = study
    item = orthanc_study(*pairs[0])
    item["PatientMainDicomTags"]["PatientName"] += " "
    assert inspect_item("Study", item, index).verdict is Verdict.OK


@pytest.mark.attack
def test_tags_not_matching_the_seal_are_refused_into_the_index(study) -> None:
    _, pairs = study
    seal, tags = pairs[0]
    forged = copy.deepcopy(tags)
    forged["Patient"]["PatientName"] = "Other"
    with pytest.raises(SealMismatchError):
        sealed_instance_tags(seal, forged)


def test_removing_an_instance_keeps_the_others(study) -> None:
    index, pairs = study
    seal0, _ = pairs[0]
    index.remove(orthanc_id(seal0.patient_id, seal0.study_uid, seal0.series_uid, seal0.sop_instance_uid))
    assert len(index) == 1
    assert inspect_item("Study", orthanc_study(*pairs[0]), index).verdict is Verdict.OK
    for seal, _ in pairs[1:]:
        index.remove(orthanc_id(seal.patient_id, seal.study_uid, seal.series_uid, seal.sop_instance_uid))
    assert inspect_item("Study", orthanc_study(*pairs[0]), index).verdict is Verdict.UNSEALED


@pytest.mark.parametrize(("verdict", "mode", "policy", "action"), [
    (Verdict.OK, Mode.ENFORCE, UnsealedPolicy.REFUSE, Action.SERVE),
    (Verdict.MISMATCH, Mode.ENFORCE, UnsealedPolicy.SERVE_AND_FLAG, Action.WITHHOLD),
    (Verdict.MISMATCH, Mode.MONITOR, UnsealedPolicy.REFUSE, Action.FLAG),
    (Verdict.UNSEALED, Mode.ENFORCE, UnsealedPolicy.SERVE_AND_FLAG, Action.FLAG),
    (Verdict.UNSEALED, Mode.ENFORCE, UnsealedPolicy.REFUSE, Action.WITHHOLD),
    (Verdict.UNSEALED, Mode.MONITOR, UnsealedPolicy.REFUSE, Action.FLAG),
])
def test_action_for(verdict, mode, policy, action) -> None:
    assert action_for(verdict, mode, policy) is action


@pytest.mark.attack
def test_filter_withholds_in_enforce_and_flags_in_monitor(study) -> None:
    index, pairs = study
    good = orthanc_study(*pairs[0])
    bad = copy.deepcopy(good)
    bad["ID"] = "x"  # unsealed
    edited = copy.deepcopy(good)
    edited["PatientMainDicomTags"]["PatientName"] = "Evil"
    enforce = filter_answer([good, bad, edited], index, Mode.ENFORCE, UnsealedPolicy.SERVE_AND_FLAG)
    assert enforce.kept == (good, bad)
    assert [c.verdict for c in enforce.withheld] == [Verdict.MISMATCH]
    assert [c.verdict for c in enforce.flagged] == [Verdict.UNSEALED]
    assert enforce.headers == {"X-Hardening-Withheld": "1", "X-Hardening-Flagged": "1"}
    monitor = filter_answer([good, bad, edited], index, Mode.MONITOR, UnsealedPolicy.REFUSE)
    assert monitor.kept == (good, bad, edited) and len(monitor.flagged) == 2


def test_filter_needs_expanded_items(study) -> None:
    index, _ = study
    with pytest.raises(ValueError):
        filter_answer(["an-id"], index, Mode.ENFORCE, UnsealedPolicy.REFUSE, level="Study")


def test_level_of() -> None:
    assert level_of("studies") == "Study" and level_of("SERIES") == "Series" and level_of("instance") == "Instance"
    with pytest.raises(ValueError):
        level_of("worklists")


def test_removing_an_instance_forgets_only_the_tags_no_other_instance_carries() -> None:
    shared = {"patient_id": "P-8", "study_uid": "1.2.8", "series_uid": "1.2.8.1"}
    pairs = [sealed(make_instance(**shared, sop_uid=f"1.2.8.1.{i}", instance_number=i, patient_name=name), f"v{i}")
             for i, name in ((1, "Doe^A"), (2, "Doe^A"), (3, "Doe^B"))]
    index = SealedTagIndex()
    for seal, tags in pairs:
        index.add(sealed_instance_tags(seal, tags))

    def instance_id(seal) -> str:
        return orthanc_id(seal.patient_id, seal.study_uid, seal.series_uid, seal.sop_instance_uid)

    index.remove(instance_id(pairs[2][0]))  # the only one named Doe^B
    assert inspect_item("Study", orthanc_study(*pairs[2]), index).verdict is Verdict.MISMATCH
    index.remove(instance_id(pairs[0][0]))  # Doe^A is still carried by the second instance
    assert inspect_item("Study", orthanc_study(*pairs[0]), index).verdict is Verdict.OK
    index.add(sealed_instance_tags(*pairs[2]))
    assert inspect_item("Study", orthanc_study(*pairs[2]), index).verdict is Verdict.OK


# -- complete answers: the catalogue says who has what --------------------------------------


def _catalogue_entry(patient_id: str, study_uid: str):
    from orthanc_hardening.integrity.query import SealedInstanceTags, orthanc_id

    ids = {"Patient": orthanc_id(patient_id), "Study": orthanc_id(patient_id, study_uid),
           "Series": orthanc_id(patient_id, study_uid, study_uid + ".1"),
           "Instance": orthanc_id(patient_id, study_uid, study_uid + ".1", study_uid + ".1.1")}
    tags = {"Patient": {"PatientID": patient_id, "PatientName": "X^Y"},
            "Study": {"StudyInstanceUID": study_uid, "AccessionNumber": "ACC" + study_uid[-1]},
            "Series": {"SeriesInstanceUID": study_uid + ".1"}, "Instance": {"SOPInstanceUID": study_uid + ".1.1"}}
    return SealedInstanceTags(ids, tags, "uuid-" + study_uid)


@pytest.mark.attack
def test_study_hidden_from_a_patient_id_query_is_missing_from_the_answer():
    from orthanc_hardening.integrity.query import SealedTagIndex, missing_from_answer

    index = SealedTagIndex()
    hidden, other = _catalogue_entry("PAT-H", "1.2.3"), _catalogue_entry("PAT-O", "1.2.4")
    index.add(hidden)
    index.add(other)
    assert missing_from_answer("Study", {"PatientID": "PAT-H"}, [], index) == [hidden.ids["Study"]]
    assert missing_from_answer("Study", {"PatientID": "pat-h "}, [], index) == [hidden.ids["Study"]]
    assert missing_from_answer("Study", {"PatientID": "PAT-H"}, [hidden.ids["Study"]], index) == []
    assert missing_from_answer("Series", {"StudyInstanceUID": "1.2.3"}, [], index) == [hidden.ids["Series"]]
    assert missing_from_answer("Study", {"PatientID": "PAT-H", "AccessionNumber": "ACC4"}, [], index) == []
    index.remove(hidden.instance_id)
    assert missing_from_answer("Study", {"PatientID": "PAT-H"}, [], index) == []


@pytest.mark.parametrize("query", [
    {"PatientID": "PAT-H", "PatientName": "X^Y"},  # a non-identifier constraint
    {"PatientID": ""},  # a return key only
    {"PatientID": "*"},  # matches everything, as an empty constraint does
    {"PatientID": "PAT-H\\OTHER"},  # a list of values: Orthanc's rules, not replayed
    {"SeriesInstanceUID": "1.2.3.1"},  # below the query level
])
def test_completeness_is_checked_only_for_identifier_queries(query):
    from orthanc_hardening.integrity.query import SealedTagIndex, missing_from_answer

    index = SealedTagIndex()
    index.add(_catalogue_entry("PAT-H", "1.2.3"))
    assert missing_from_answer("Study", query, [], index) == []


@pytest.mark.attack
@pytest.mark.parametrize("level", ["Study", "Series", "Instance"])
def test_resource_reparented_in_the_index_is_withheld_in_enforce_and_flagged_in_monitor(study, level) -> None:
    index, pairs = study
    seal, tags = pairs[0]
    parts = (seal.patient_id, seal.study_uid, seal.series_uid, seal.sop_instance_uid)
    depth = ("Patient", "Study", "Series", "Instance").index(level)
    parent_field = {"Study": "ParentPatient", "Series": "ParentStudy", "Instance": "ParentSeries"}[level]
    item = {"ID": orthanc_id(*parts[:depth + 1]), "MainDicomTags": dict(tags[level]),
            parent_field: orthanc_id(*parts[:depth])}
    if level == "Study":
        item["PatientMainDicomTags"] = dict(tags["Patient"])
    assert inspect_item(level, item, index).verdict is Verdict.OK
    moved = {**item, parent_field: orthanc_id("OTHER-PATIENT", *parts[1:depth])}
    check = inspect_item(level, moved, index)
    assert check.verdict is Verdict.REPARENTED and check.differing == (parent_field,)
    assert f"sealed under {parent_field[6:].lower()} {item[parent_field]}" in check.detail
    enforce = filter_answer([item, moved], index, Mode.ENFORCE, UnsealedPolicy.SERVE_AND_FLAG, level)
    assert enforce.kept == (item,) and [c.verdict for c in enforce.withheld] == [Verdict.REPARENTED]
    monitor = filter_answer([item, moved], index, Mode.MONITOR, UnsealedPolicy.SERVE_AND_FLAG, level)
    assert monitor.kept == (item, moved) and [c.verdict for c in monitor.flagged] == [Verdict.REPARENTED]


@pytest.mark.attack
@pytest.mark.parametrize("value", ["PAT*", "pat-?", "*-H", "P*H", "PAT-H*", "?AT-H", "PA*"])
def test_study_hidden_from_a_wildcard_query_is_missing_from_the_answer(value):
    from orthanc_hardening.integrity.query import SealedTagIndex, missing_from_answer

    index = SealedTagIndex()
    entry = _catalogue_entry("PAT-H", "1.2.3")
    index.add(entry)
    study_id = entry.ids["Study"]
    assert missing_from_answer("Study", {"PatientID": value}, [], index) == [study_id]
    assert missing_from_answer("Study", {"PatientID": value}, [study_id], index) == []


@pytest.mark.parametrize("value", ["PAT", "PAT-??", "X*", "PAT-H?", "P.T-H", "PAT%", "PAT_H"])
def test_wildcard_query_that_does_not_match_the_sealed_identifier_misses_nothing(value):
    from orthanc_hardening.integrity.query import SealedTagIndex, missing_from_answer

    index = SealedTagIndex()
    index.add(_catalogue_entry("PAT-H", "1.2.3"))
    assert missing_from_answer("Study", {"PatientID": value}, [], index) == []


def test_wildcard_pattern_follows_ps3_4_c_2_2_2_4():
    from orthanc_hardening.integrity.query import wildcard_pattern

    assert wildcard_pattern("A*B").fullmatch("AB") and wildcard_pattern("A*B").fullmatch("AXYB")
    assert wildcard_pattern("A?B").fullmatch("AXB") and not wildcard_pattern("A?B").fullmatch("AB")
    assert not wildcard_pattern("A.B").fullmatch("AXB")  # every other character is literal
    assert wildcard_pattern("1.2.*").fullmatch("1.2.840.1") and not wildcard_pattern("1.2.*").fullmatch("1.3.2")
