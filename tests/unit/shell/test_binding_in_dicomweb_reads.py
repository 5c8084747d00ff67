"""Reads inside orthanc-dicomweb's calls on Orthanc before 1.12.2 make no call into Orthanc."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from orthanc_hardening.integrity.binding import WrongInstanceError
from orthanc_hardening.seal.record import seal_attachment
from orthanc_hardening.shell.binding import IndexBinding
from orthanc_hardening.shell.storage import dicomweb_root
from tests.unit.integrity.test_binding import PATIENT_A, UUID_A
from tests.unit.seal.conftest import NOW, fixed_signer


class NoCallsIntoOrthanc:
    """An ``orthanc`` module whose every call fails the test (a call would hang Orthanc 1.10)."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"orthanc.{name} called from inside a DICOMweb read")


def test_index_binding_without_the_index_makes_no_call_and_still_refuses_shared_files() -> None:
    seal = seal_attachment(UUID_A, 1, b"A" * 64, PATIENT_A, fixed_signer(), NOW)
    binding = IndexBinding(SimpleNamespace(orthanc=NoCallsIntoOrthanc()))  # type: ignore[arg-type]
    binding.check(seal, consult_index=False)
    binding.shared = {UUID_A: ("instance-a", "instance-b")}
    with pytest.raises(WrongInstanceError):
        binding.check(seal, consult_index=False)


@pytest.mark.parametrize(("config", "root"), [
    ({}, "/dicom-web/"), ({"DicomWeb": {"Root": "/wado-rs"}}, "/wado-rs/"), ({"DicomWeb": {"Root": "dw/"}}, "/dw/"),
    ({"DicomWeb": "not a section"}, "/dicom-web/")])
def test_dicomweb_root_is_read_as_orthanc_dicomweb_reads_it(config: dict[str, Any], root: str) -> None:
    assert dicomweb_root(config) == root
