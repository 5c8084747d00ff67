"""DICOM files built to crash a parser: sequences nested too deep."""

from __future__ import annotations

import io

import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from tests.support.dicom import make_instance


def nested_instance(depth: int, patient_id: str = "POISON") -> bytes:
    """A valid image instance with ``depth`` nested ContentSequences (pydicom writes it; depth <= 200)."""
    dataset = pydicom.dcmread(io.BytesIO(make_instance(patient_id=patient_id)))
    inner = Dataset()
    inner.CodeValue = "X"
    for _ in range(depth):
        outer = Dataset()
        outer.ContentSequence = Sequence([inner])
        inner = outer
    dataset.ContentSequence = inner.ContentSequence
    out = io.BytesIO()
    dataset.save_as(out, enforce_file_format=True)
    return out.getvalue()


def sequence_bomb_after_pixels(depth: int) -> bytes:
    """An instance followed, after its pixel data, by ``depth`` undefined-length nested sequences."""
    opening = b"\x40\x00\x30\xa7SQ\x00\x00\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    closing = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    return make_instance(patient_id="POISON") + opening * depth + closing * depth


def deflated_nested_instance(depth: int) -> bytes:
    """``nested_instance(depth)`` in the Deflated Explicit VR Little Endian syntax (its items hidden)."""
    dataset = pydicom.dcmread(io.BytesIO(nested_instance(depth)))
    dataset.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    out = io.BytesIO()
    dataset.save_as(out, enforce_file_format=True)
    return out.getvalue()
