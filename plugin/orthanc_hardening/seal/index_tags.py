"""The index tags: the main DICOM tags Orthanc 1.10 keeps in its index, and their digest.

Orthanc answers queries (REST ``/tools/find``, C-FIND, ``/studies``…) from its index, not from
the stored files, so a seal binds the values the index *should* hold: the main DICOM tags of
each level, taken from the exact stored bytes. The lists are Orthanc 1.10's
``PATIENT/STUDY/SERIES/INSTANCE_MAIN_DICOM_TAGS`` (``OrthancFramework/Sources/DicomFormat/
DicomMap.cpp``). ``ImageOrientationPatient`` is a main tag of both the series and the instance.

The same digest is computed from a pydicom dataset (``index_tags_of_dataset``, at ingest) and
from Orthanc's ``MainDicomTags`` JSON (``index_tags_of_orthanc``, when checking what the index
returns), so the two can be compared. Values are normalised the same way on both sides:
each backslash-separated component stripped of surrounding spaces and NULs (DICOM padding,
PS3.5 §6.2). A tag absent from the instance is absent from the digest; an empty one is ``""``.
No I/O here.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from pydicom.charset import convert_encodings, decode_bytes
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag, Tag

# (group, element, Orthanc's name), Orthanc 1.10 DicomMap.cpp.
PATIENT_TAGS = (
    (0x0010, 0x0010, "PatientName"),
    (0x0010, 0x0020, "PatientID"),
    (0x0010, 0x0030, "PatientBirthDate"),
    (0x0010, 0x0040, "PatientSex"),
    (0x0010, 0x1000, "OtherPatientIDs"),
)
STUDY_TAGS = (
    (0x0008, 0x0020, "StudyDate"),
    (0x0008, 0x0030, "StudyTime"),
    (0x0020, 0x0010, "StudyID"),
    (0x0008, 0x1030, "StudyDescription"),
    (0x0008, 0x0050, "AccessionNumber"),
    (0x0020, 0x000D, "StudyInstanceUID"),
    (0x0032, 0x1060, "RequestedProcedureDescription"),
    (0x0008, 0x0080, "InstitutionName"),
    (0x0032, 0x1032, "RequestingPhysician"),
    (0x0008, 0x0090, "ReferringPhysicianName"),
)
SERIES_TAGS = (
    (0x0008, 0x0021, "SeriesDate"),
    (0x0008, 0x0031, "SeriesTime"),
    (0x0008, 0x0060, "Modality"),
    (0x0008, 0x0070, "Manufacturer"),
    (0x0008, 0x1010, "StationName"),
    (0x0008, 0x103E, "SeriesDescription"),
    (0x0018, 0x0015, "BodyPartExamined"),
    (0x0018, 0x0024, "SequenceName"),
    (0x0018, 0x1030, "ProtocolName"),
    (0x0020, 0x0011, "SeriesNumber"),
    (0x0018, 0x1090, "CardiacNumberOfImages"),
    (0x0020, 0x1002, "ImagesInAcquisition"),
    (0x0020, 0x0105, "NumberOfTemporalPositions"),
    (0x0054, 0x0081, "NumberOfSlices"),
    (0x0054, 0x0101, "NumberOfTimeSlices"),
    (0x0020, 0x000E, "SeriesInstanceUID"),
    (0x0020, 0x0037, "ImageOrientationPatient"),
    (0x0054, 0x1000, "SeriesType"),
    (0x0008, 0x1070, "OperatorsName"),
    (0x0040, 0x0254, "PerformedProcedureStepDescription"),
    (0x0018, 0x1400, "AcquisitionDeviceProcessingDescription"),
    (0x0018, 0x0010, "ContrastBolusAgent"),
)
INSTANCE_TAGS = (
    (0x0008, 0x0012, "InstanceCreationDate"),
    (0x0008, 0x0013, "InstanceCreationTime"),
    (0x0020, 0x0012, "AcquisitionNumber"),
    (0x0054, 0x1330, "ImageIndex"),
    (0x0020, 0x0013, "InstanceNumber"),
    (0x0028, 0x0008, "NumberOfFrames"),
    (0x0020, 0x0100, "TemporalPositionIdentifier"),
    (0x0008, 0x0018, "SOPInstanceUID"),
    (0x0020, 0x0032, "ImagePositionPatient"),
    (0x0020, 0x4000, "ImageComments"),
    (0x0020, 0x0037, "ImageOrientationPatient"),
)
LEVELS = {"Patient": PATIENT_TAGS, "Study": STUDY_TAGS, "Series": SERIES_TAGS, "Instance": INSTANCE_TAGS}
# The same as pydicom tags, made once (a ``BaseTag`` is looked up without conversion).
_DATASET_TAGS = {level: tuple((Tag(group, element), name) for group, element, name in tags)
                 for level, tags in LEVELS.items()}
# Every element ``index_tags_of_dataset`` reads (SpecificCharacterSet aside), in tag order.
DATASET_TAGS = tuple(sorted({tag for tags in _DATASET_TAGS.values() for tag, _name in tags}))

IndexTags = dict[str, dict[str, str]]


def normalize(value: str) -> str:
    """Strip DICOM padding (spaces, NUL) around each backslash-separated value."""
    return "\\".join(part.strip(" \x00") for part in value.split("\\"))


def _text_of(dataset: Dataset, tag: BaseTag, encodings: list[str]) -> str | None:
    element = dataset.get_item(tag)  # None when absent (one lookup, not ``in`` and another)
    if element is None:
        return None
    raw = element.value
    if raw is None:
        return ""
    vr = element.VR or _dictionary_vr(tag)
    if isinstance(raw, bytes) and vr not in _BINARY_VRS:
        return normalize(decode_bytes(raw, encodings, set()))
    # An element pydicom already converted: rebuild the DICOM string form.
    try:
        value = dataset[tag].value
    except Exception:
        # A malformed element (e.g. PatientSex encoded as FD with 2 bytes): digest its raw bytes.
        # Orthanc stored the file, so it is sealed; its index tags will simply not match this
        # digest, and query verification reports the instance.
        return normalize(raw.decode("latin-1") if isinstance(raw, bytes) else str(raw))
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return normalize("\\".join(_scalar(v) for v in value))
    return normalize(_scalar(value))


# Binary numbers: Orthanc renders them as decimal text (multiple values joined by "\\").
_BINARY_VRS = frozenset({"US", "UL", "SS", "SL", "FL", "FD", "UV", "SV"})


def _dictionary_vr(tag: int) -> str:
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return "UN"


def _scalar(value: Any) -> str:
    original = getattr(value, "original_string", None)
    if isinstance(original, str):
        return original
    return str(value)


def index_tags_of_dataset(dataset: Dataset) -> IndexTags:
    """The index tags of an instance, per level, from its dataset (parsed from the stored bytes).

    Args:
        dataset: the instance's dataset (``stop_before_pixels`` is enough).

    Returns:
        ``{"Patient": {name: value}, "Study": …, "Series": …, "Instance": …}``.
    """
    charset = dataset.get("SpecificCharacterSet", None)
    encodings = convert_encodings(charset if charset else "ISO_IR 6")
    result: IndexTags = {}
    for level, tags in _DATASET_TAGS.items():
        values: dict[str, str] = {}
        for tag, name in tags:
            text = _text_of(dataset, tag, encodings)
            if text is not None:
                values[name] = text
        result[level] = values
    return result


def index_tags_of_orthanc(
    patient: Mapping[str, Any], study: Mapping[str, Any], series: Mapping[str, Any], instance: Mapping[str, Any]
) -> IndexTags:
    """The index tags as Orthanc's index holds them (``MainDicomTags`` of each level).

    Args:
        patient: ``PatientMainDicomTags`` (of ``GET /studies/{id}``) or ``MainDicomTags`` of the patient.
        study: ``MainDicomTags`` of ``GET /studies/{id}``.
        series: ``MainDicomTags`` of ``GET /series/{id}``.
        instance: ``MainDicomTags`` of ``GET /instances/{id}``.

    Returns:
        The same shape as ``index_tags_of_dataset``; tags outside the level's list are ignored.
    """
    sources = {"Patient": patient, "Study": study, "Series": series, "Instance": instance}
    result: IndexTags = {}
    for level, tags in LEVELS.items():
        source = sources[level]
        values: dict[str, str] = {}
        for _group, _element, name in tags:
            value = source.get(name)
            if isinstance(value, str):
                values[name] = normalize(value)
        result[level] = values
    return result


def canonical_index_tags(tags: IndexTags) -> bytes:
    """Sorted-key compact JSON of the index tags (UTF-8)."""
    return json.dumps(tags, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def index_tags_digest(tags: IndexTags) -> str:
    """SHA-256 (hex) of the canonical index tags."""
    return hashlib.sha256(canonical_index_tags(tags)).hexdigest()


def level_digest(tags: IndexTags, level: str) -> str:
    """SHA-256 (hex) of one level's canonical tags (for per-level comparison).

    Raises:
        KeyError: ``level`` is not Patient, Study, Series or Instance (a caller bug).
    """
    return hashlib.sha256(canonical_index_tags({level: tags[level]})).hexdigest()
