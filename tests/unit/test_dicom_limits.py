"""DICOM nesting limits at ingest (pure core)."""

from __future__ import annotations

import pytest

from orthanc_hardening.dicom_limits import check_dicom_limits, may_nest_deeper
from orthanc_hardening.errors import HostileInputError
from tests.support.dicom import make_instance
from tests.support.poison import deflated_nested_instance, nested_instance, sequence_bomb_after_pixels


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
