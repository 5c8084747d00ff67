"""What a stored DICOM file says it is: UIDs, patient id and index-tag digest, from its exact bytes.

Parsed with pydicom up to the pixel data. Used when sealing (the seal binds these) and when
checking an instance against Orthanc's index. No I/O here: the caller passes the bytes.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from orthanc_hardening.seal.index_tags import IndexTags, index_tags_digest, index_tags_of_dataset


@dataclass(frozen=True, slots=True)
class InstanceIdentity:
    """The identity fields a seal binds (empty strings when the bytes are not DICOM)."""

    study_uid: str = ""
    series_uid: str = ""
    sop_instance_uid: str = ""
    patient_id: str = ""
    index_tags_sha256: str = ""

    @property
    def is_empty(self) -> bool:
        return not self.sop_instance_uid


NO_IDENTITY = InstanceIdentity()


def parse_dataset(data: bytes) -> Dataset:
    """Parse a DICOM file (Part 10) up to its pixel data.

    Raises:
        ValueError: the bytes are not a DICOM file pydicom can read.
    """
    try:
        return dcmread(io.BytesIO(data), stop_before_pixels=True)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"not a readable DICOM file: {exc}") from exc


def identity_of_dataset(dataset: Dataset) -> tuple[InstanceIdentity, IndexTags]:
    """The identity and index tags of a parsed dataset."""
    tags = index_tags_of_dataset(dataset)
    identity = InstanceIdentity(
        study_uid=tags["Study"].get("StudyInstanceUID", ""),
        series_uid=tags["Series"].get("SeriesInstanceUID", ""),
        sop_instance_uid=tags["Instance"].get("SOPInstanceUID", ""),
        patient_id=tags["Patient"].get("PatientID", ""),
        index_tags_sha256=index_tags_digest(tags),
    )
    return identity, tags


def identify(data: bytes) -> InstanceIdentity:
    """The identity of the DICOM bytes ``data`` (a whole file or its part before the pixel data).

    Raises:
        ValueError: not a readable DICOM file.
    """
    return identity_of_dataset(parse_dataset(data))[0]
