"""The identity parse: the same identity as a full ``dcmread`` of the bytes, for every file.

A seal binds the identity parsed at ingest and verification parses the stored bytes again, so the
parse may only change how fast it is, never what it finds: seals made before must still verify,
and a file crafted to be read one way by one reader and another way by the other must not slip
a different identity under a seal.
"""

from __future__ import annotations

import io
import os
import random

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_files
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from orthanc_hardening.seal import identity as identity_module
from orthanc_hardening.seal.identity import InstanceIdentity, identity_of_dataset, parse_dataset
from tests.support.dicom import make_instance
from tests.support.poison import rename_syntax

IMPLICIT, EXPLICIT = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1"


def outcome(parse, data: bytes) -> InstanceIdentity | str:
    """The identity ``parse`` leads to, "unreadable", or the exception parsing or identifying raised."""
    try:
        dataset = parse(data)
    except ValueError:
        return "unreadable"
    except Exception as exc:  # e.g. struct.error of a file cut inside an element header
        return f"parse raised {type(exc).__name__}"
    try:
        return identity_of_dataset(dataset)[0]
    except Exception as exc:
        return f"raised {type(exc).__name__}"


def full_dcmread(data: bytes) -> Dataset:
    """The parse every seal was made with before: the whole file up to its pixel data."""
    try:
        return dcmread(io.BytesIO(data), stop_before_pixels=True)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(str(exc)) from exc


def agree(data: bytes) -> InstanceIdentity | str:
    expected = outcome(full_dcmread, data)
    assert outcome(parse_dataset, data) == expected
    return expected


def with_element_after_meta(data: bytes, element: bytes) -> bytes:
    """``data`` with ``element`` inserted right after its file meta group (group length unchanged)."""
    end = 144 + int.from_bytes(data[140:144], "little")
    return data[:end] + element + data[end:]


@pytest.mark.parametrize("path", [p for p in get_testdata_files() if os.path.isfile(p)], ids=os.path.basename)
def test_every_pydicom_test_file_has_the_identity_a_full_dcmread_finds(path):
    with open(path, "rb") as handle:
        agree(handle.read())


@pytest.mark.parametrize("charset", [None, "ISO_IR 100", "ISO_IR 192", "ISO 2022 IR 87"])
def test_synthetic_instances_agree_in_every_character_set_and_with_sequences(charset):
    data = make_instance(character_set=charset, with_sequence=True, with_private_tag=True, body_part="CHEST")
    found = agree(data)
    assert isinstance(found, InstanceIdentity) and found.sop_instance_uid


def test_the_direct_read_is_taken_for_an_ordinary_file(monkeypatch):
    data = make_instance()

    def no_dcmread(*_args, **_kwargs):
        raise AssertionError("dcmread called for a file with a well-formed meta group")

    expected = outcome(full_dcmread, data)
    monkeypatch.setattr(identity_module, "dcmread", no_dcmread)
    assert outcome(parse_dataset, data) == expected


def test_only_the_identity_elements_are_kept():
    dataset = parse_dataset(make_instance(with_sequence=True, with_private_tag=True, character_set="ISO_IR 100"))
    assert "SOPInstanceUID" in dataset and "SpecificCharacterSet" in dataset
    assert "Rows" not in dataset and not any(element.VR == "SQ" for element in dataset)


def implicit_instance(patient_id: str) -> bytes:
    """A synthetic instance whose data set is implicit VR Little Endian."""
    from pydicom.uid import ImplicitVRLittleEndian

    dataset = dcmread(io.BytesIO(make_instance(patient_id=patient_id)))
    dataset.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    buffer = io.BytesIO()
    dataset.save_as(buffer, implicit_vr=True, little_endian=True, enforce_file_format=True)
    return buffer.getvalue()


def test_an_implicit_syntax_file_agrees():
    found = agree(implicit_instance("IMPLICIT"))
    assert isinstance(found, InstanceIdentity) and found.patient_id == "IMPLICIT"


@pytest.mark.attack
def test_syntax_renamed_under_an_explicit_data_set_reads_as_dcmread_reads_it():
    # An explicit data set whose meta group claims implicit VR: both readers misread it alike.
    agree(rename_syntax(make_instance(), EXPLICIT, IMPLICIT))


@pytest.mark.attack
@pytest.mark.parametrize("element", [
    b"\x02\x00\x10\x00UI\x12\x001.2.840.10008.1.2\x00",  # a second TransferSyntaxUID past the group length
    b"\x00\x00\x00\x01\x04\x00\x00\x00\x30\x00\x00\x00",  # a command group element (implicit VR)
    b"\x02\x00\x02\x00UI\x04\x001.2\x00",  # another group 0002 element
], ids=["second-syntax", "command-group", "meta-element"])
@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
def test_an_element_smuggled_after_the_meta_group_reads_as_dcmread_reads_it(element, implicit):
    # dcmread reads group 0002 past the group length as meta (explicit VR) and a group 0000 as a
    # command set (implicit VR): the data set starts after them, never at the group length's end.
    original = implicit_instance("SMUGGLED") if implicit else make_instance(patient_id="SMUGGLED")
    agree(with_element_after_meta(original, element))


@pytest.mark.attack
def test_truncated_and_flipped_files_read_as_dcmread_reads_them():
    # Every cut and a thousand single-byte edits of the header: the two readers never differ.
    rng = random.Random(20261207)
    data = make_instance(with_sequence=True, character_set="ISO_IR 100", rows=8, cols=8)
    header = len(data) - 8 * 8 * 2
    for cut in range(0, header + 16, 7):
        agree(data[:cut])
    for _ in range(1000):
        edited = bytearray(data)
        edited[rng.randrange(header)] = rng.randrange(256)
        agree(bytes(edited))


def test_a_file_without_meta_group_goes_through_dcmread():
    dataset = Dataset()
    dataset.PatientID = "NO-META"
    buffer = io.BytesIO()
    dataset.save_as(buffer, implicit_vr=True, little_endian=True)
    with pytest.raises(ValueError, match="not a readable DICOM file"):
        parse_dataset(buffer.getvalue())
