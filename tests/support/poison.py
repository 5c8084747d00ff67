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


def deflated_nested_instance(depth: int, syntax: str = pydicom.uid.DeflatedExplicitVRLittleEndian,
                             meta_padding: int = 0) -> bytes:
    """``nested_instance(depth)`` with its data set deflated (its items hidden), the file meta naming ``syntax``.

    ``meta_padding`` bytes lengthen the FileMetaInformationVersion, so the TransferSyntaxUID comes
    after them (a long meta group is still well formed; DCMTK reads it all).
    """
    dataset = pydicom.dcmread(io.BytesIO(nested_instance(depth)))
    dataset.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    if meta_padding:
        dataset.file_meta.FileMetaInformationVersion = b"\x00\x01" * (meta_padding // 2)
    out = io.BytesIO()
    dataset.save_as(out, enforce_file_format=True)
    if syntax == pydicom.uid.DeflatedExplicitVRLittleEndian:
        return out.getvalue()
    # The same deflated data set under another syntax's name (pydicom deflates only its own).
    return rename_syntax(out.getvalue(), pydicom.uid.DeflatedExplicitVRLittleEndian, syntax)


def rename_syntax(file: bytes, old: str, new: str) -> bytes:
    """``file`` with its file meta TransferSyntaxUID ``old`` replaced by ``new`` (group length kept exact)."""
    encode = lambda uid: uid.encode() + b"\0" * (len(uid) % 2)  # noqa: E731 - UI values are padded to even
    old_value, new_value = encode(old), encode(new)
    element = b"\x02\x00\x10\x00UI"
    start = file.index(element + len(old_value).to_bytes(2, "little") + old_value)
    grown = len(new_value) - len(old_value)
    group_length = int.from_bytes(file[140:144], "little") + grown
    renamed = (file[:start] + element + len(new_value).to_bytes(2, "little") + new_value
               + file[start + 8 + len(old_value):])
    return renamed[:140] + group_length.to_bytes(4, "little") + renamed[144:]
