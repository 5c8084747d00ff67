"""DICOM nesting limits at ingest (pure core)."""

from __future__ import annotations

import io

import pydicom
import pytest

from orthanc_hardening import dicom_limits
from orthanc_hardening.dicom_limits import check_dicom_limits, may_nest_deeper, well_formed_meta
from orthanc_hardening.errors import HostileInputError
from tests.support.dicom import make_instance
from tests.support.poison import deflated_nested_instance, nested_instance, rename_syntax, sequence_bomb_after_pixels


@pytest.mark.attack
@pytest.mark.parametrize("depth", [25, 50, 200])
def test_deeply_nested_file_is_refused(depth: int) -> None:
    with pytest.raises(HostileInputError, match=r"more than 24 levels deep|too deep"):
        check_dicom_limits(nested_instance(depth))


def test_ordinary_files_pass() -> None:
    check_dicom_limits(nested_instance(24))
    check_dicom_limits(make_instance(with_sequence=True))


def test_not_dicom_is_left_to_orthanc() -> None:
    check_dicom_limits(b"not a DICOM file at all")


@pytest.mark.attack
@pytest.mark.parametrize("depth", [50, 20000])
def test_bomb_hidden_after_the_pixel_data_is_refused(depth: int) -> None:
    with pytest.raises(HostileInputError):
        check_dicom_limits(sequence_bomb_after_pixels(depth))


@pytest.mark.attack
def test_bomb_hidden_in_a_deflated_file_is_refused() -> None:
    bomb = deflated_nested_instance(50)
    assert not may_nest_deeper(bomb[bomb.index(b"1.2.840.10008.1.2.1.99") + 30:])  # its items are compressed
    with pytest.raises(HostileInputError):
        check_dicom_limits(bomb)


def test_files_with_few_items_are_not_parsed() -> None:
    assert not may_nest_deeper(make_instance(with_sequence=True))
    assert may_nest_deeper(nested_instance(25))


DEFLATED = "1.2.840.10008.1.2.1.99"
JPIP_DEFLATE = "1.2.840.10008.1.2.4.95"
JPIP_HTJ2K_DEFLATE = "1.2.840.10008.1.2.4.205"


@pytest.mark.attack
def test_deflated_bomb_whose_long_file_meta_group_hides_its_syntax_past_4_kb_is_refused() -> None:
    # A 6 KB FileMetaInformationVersion: the TransferSyntaxUID comes after it, and there are no
    # clear items to count. Orthanc 1.10.1 inflates such a file and crashes on its 50 levels.
    bomb = deflated_nested_instance(50, meta_padding=6000)
    assert DEFLATED.encode() not in bomb[:4096]
    assert may_nest_deeper(bomb)
    with pytest.raises(HostileInputError, match="more than 24 levels deep"):
        check_dicom_limits(bomb)


@pytest.mark.attack
@pytest.mark.parametrize("syntax", [JPIP_DEFLATE, JPIP_HTJ2K_DEFLATE])
def test_bomb_in_a_jpip_referenced_deflate_file_is_refused(syntax: str) -> None:
    # pydicom reads these data sets as if they were not deflated; DCMTK inflates them.
    bomb = deflated_nested_instance(50, syntax)
    assert well_formed_meta(bomb) is not None and well_formed_meta(bomb)[1] == syntax  # type: ignore[index]
    with pytest.raises(HostileInputError, match="more than 24 levels deep"):
        check_dicom_limits(bomb)


@pytest.mark.parametrize("syntax", [DEFLATED, JPIP_DEFLATE])
def test_deflated_files_that_nest_within_the_limit_pass(syntax: str) -> None:
    check_dicom_limits(deflated_nested_instance(24, syntax))
    check_dicom_limits(deflated_nested_instance(3, syntax, meta_padding=6000))


@pytest.mark.attack
def test_deflated_syntax_whose_data_set_does_not_inflate_is_refused() -> None:
    file = deflated_nested_instance(3)
    end = well_formed_meta(file)[0]  # type: ignore[index]
    garbage = file[:end] + b"\xff" * 64 + file[end + 64:]
    with pytest.raises(HostileInputError, match="cannot be inflated and read"):
        check_dicom_limits(garbage)


@pytest.mark.attack
def test_deflated_syntax_named_outside_the_transfer_syntax_element_is_refused() -> None:
    # A well-formed meta group whose TransferSyntaxUID is plain but which names the deflated syntax
    # in another element: which one a reader takes is not certain, so it is not guessed.
    dataset = pydicom.dcmread(io.BytesIO(nested_instance(3)))
    dataset.file_meta.ImplementationClassUID = DEFLATED
    out = io.BytesIO()
    dataset.save_as(out, enforce_file_format=True)
    with pytest.raises(HostileInputError, match="outside the TransferSyntaxUID of a well-formed file meta group"):
        check_dicom_limits(out.getvalue())


@pytest.mark.attack
def test_deflated_syntax_in_a_file_without_a_well_formed_meta_group_is_refused() -> None:
    file = deflated_nested_instance(3)
    sloppy = file[:140] + (int.from_bytes(file[140:144], "little") + 2).to_bytes(4, "little") + file[144:]
    assert well_formed_meta(sloppy) is None
    with pytest.raises(HostileInputError, match="deflated transfer syntax"):
        check_dicom_limits(sloppy)


@pytest.mark.attack
def test_deflated_data_set_that_inflates_beyond_the_bound_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dicom_limits, "MAX_INFLATED_BYTES", 1024)
    with pytest.raises(HostileInputError, match="inflates to more than 1024 bytes"):
        check_dicom_limits(deflated_nested_instance(3))


def test_well_formed_meta_is_where_every_reader_reads_the_same_group() -> None:
    file = make_instance()
    end, syntax = well_formed_meta(file)  # type: ignore[misc]
    assert syntax == pydicom.dcmread(io.BytesIO(file)).file_meta.TransferSyntaxUID
    assert file[end:end + 2] == b"\x08\x00"  # the data set's first group
    assert well_formed_meta(file[128:]) is None  # no preamble
    assert well_formed_meta(file[:200]) is None  # cut inside the group
    wrong_length = file[:140] + (int.from_bytes(file[140:144], "little") - 2).to_bytes(4, "little") + file[144:]
    assert well_formed_meta(wrong_length) is None
    # "1.2.840.10008.1.2.1" (20 bytes padded) renamed to a 22-byte UID: the group grows by 2 bytes.
    assert well_formed_meta(rename_syntax(file, syntax, JPIP_DEFLATE)) == (end + 2, JPIP_DEFLATE)
