"""Synthetic DICOM instances made with pydicom, for tests and benchmarks."""

from __future__ import annotations

import io
import random

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

_SOP_CLASSES = {"CT": CTImageStorage, "MR": MRImageStorage}


def new_uid() -> str:
    """A fresh random DICOM UID."""
    return generate_uid()


def make_instance(
    patient_id: str = "P-001",
    patient_name: str = "Doe^John",
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    modality: str = "CT",
    rows: int = 64,
    cols: int = 64,
    instance_number: int = 1,
    study_description: str = "Chest CT",
    series_description: str = "Axial",
    seed: int | None = None,
    accession_number: str | None = None,
    study_date: str = "20260101",
    character_set: str | None = None,
    with_sequence: bool = False,
    with_private_tag: bool = False,
    body_part: str | None = None,
) -> bytes:
    """Return the bytes of one synthetic image instance (Explicit VR Little Endian, 16-bit).

    ``character_set`` sets Specific Character Set (e.g. ``ISO_IR 100``, ``ISO_IR 192``), and the
    names are encoded in it; ``with_sequence`` adds a Request Attributes Sequence (0040,0275);
    ``with_private_tag`` a private creator block.
    """
    sop_class = _SOP_CLASSES[modality]
    sop_uid = sop_uid or new_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = meta
    if character_set:
        ds.SpecificCharacterSet = character_set
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.PatientID = patient_id
    ds.PatientName = patient_name
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid or new_uid()
    ds.SeriesInstanceUID = series_uid or new_uid()
    ds.StudyID = "1"
    ds.StudyDate = study_date
    ds.StudyTime = "120000"
    ds.AccessionNumber = accession_number if accession_number is not None else "ACC" + patient_id[-6:]
    ds.StudyDescription = study_description
    ds.SeriesDescription = series_description
    ds.Modality = modality
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance_number
    ds.ImagePositionPatient = [0.0, 0.0, float(instance_number)]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [0.7, 0.7]
    ds.SliceThickness = 1.0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    if body_part:
        ds.BodyPartExamined = body_part
    if with_sequence:
        item = Dataset()
        item.RequestedProcedureID = "RP-" + patient_id[-4:]
        item.ScheduledProcedureStepID = "SPS-1"
        ds.RequestAttributesSequence = [item]
    if with_private_tag:
        block = ds.private_block(0x0009, "ORTHANC-HARDENING TEST", create=True)
        block.add_new(0x01, "LO", "private value")
    generator = random.Random(seed if seed is not None else sop_uid)
    ds.PixelData = generator.randbytes(rows * cols * 2)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def make_series(count: int, **kwargs: object) -> list[bytes]:
    """Return ``count`` instances of one series (same study and series UIDs)."""
    study_uid = kwargs.pop("study_uid", None) or new_uid()
    series_uid = kwargs.pop("series_uid", None) or new_uid()
    return [
        make_instance(study_uid=study_uid, series_uid=series_uid, instance_number=i + 1, **kwargs)  # type: ignore[arg-type]
        for i in range(count)
    ]
