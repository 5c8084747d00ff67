"""What a stored DICOM file says it is: UIDs, patient id and index-tag digest, from its exact bytes.

Parsed with pydicom up to the pixel data, keeping only the elements the identity reads. Used when
sealing (the seal binds these) and when checking an instance against Orthanc's index. No I/O
here: the caller passes the bytes.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from pydicom import dcmread, uid
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_dataset

from orthanc_hardening.dicom_limits import well_formed_meta
from orthanc_hardening.seal.index_tags import DATASET_TAGS, IndexTags, index_tags_digest, index_tags_of_dataset

# The elements ``dcmread(stop_before_pixels=True)`` stops at: Pixel Data, Float and Double Float Pixel Data.
_PIXEL_DATA_TAGS = frozenset({0x7FE00010, 0x7FE00009, 0x7FE00008})
# Standard syntaxes whose data set ``dcmread`` reads as stored, in little endian: explicit VR,
# except implicit VR Little Endian (big endian and deflated are left to ``dcmread``).
_READ_AS_STORED = frozenset(uid.AllTransferSyntaxes) - {uid.ExplicitVRBigEndian, uid.DeflatedExplicitVRLittleEndian}
_PARSE_ERRORS = (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError, AttributeError)


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
    """Parse a DICOM file (Part 10) up to its pixel data, keeping the index tags' elements only.

    The elements kept are those ``dcmread(stop_before_pixels=True)`` reads, value for value. A
    file with a well-formed file meta group (``dicom_limits.well_formed_meta``) in a little-endian
    syntax has its data set read directly after that group, as ``dcmread`` reads it, without
    ``dcmread``'s second pass over the meta group; any other file, or one that read fails on,
    goes through ``dcmread`` itself.

    Raises:
        ValueError: the bytes are not a DICOM file pydicom can read.
    """
    try:
        return _data_set_after_meta(data)
    except _PARSE_ERRORS:
        pass  # ``dcmread`` decides, and names the problem
    try:
        return dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=list(DATASET_TAGS))
    except _PARSE_ERRORS as exc:
        raise ValueError(f"not a readable DICOM file: {exc}") from exc


def _data_set_after_meta(data: bytes) -> Dataset:
    """The data set of ``data`` as ``dcmread`` reads it, read after a well-formed meta group.

    ``dcmread`` reads the meta group up to the first element of another group, then a command
    group (0000) if one follows, then the data set in the meta group's syntax: where the meta
    group is well formed, followed by an element of neither group, in a syntax read as stored,
    this is that same data set read.

    Raises:
        ValueError: the file is not of that kind (the caller reads it with ``dcmread``).
    """
    meta = well_formed_meta(data)
    if meta is None:
        raise ValueError("no well-formed file meta group")
    end, syntax = meta
    if len(data) < end + 8 or data[end:end + 2] in (b"\x00\x00", b"\x02\x00"):
        raise ValueError("no data set element right after the file meta group")
    if syntax not in _READ_AS_STORED or syntax in uid.PrivateTransferSyntaxes:
        raise ValueError(f"transfer syntax {syntax} is not read as stored")
    stream = io.BytesIO(data)
    stream.seek(end)
    return read_dataset(stream, is_implicit_VR=syntax == uid.ImplicitVRLittleEndian, is_little_endian=True,
                        stop_when=lambda tag, _vr, _length: tag in _PIXEL_DATA_TAGS, specific_tags=list(DATASET_TAGS))


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
