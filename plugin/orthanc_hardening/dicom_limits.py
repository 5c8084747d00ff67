"""Limits on DICOM files at ingest, against parser bombs that crash Orthanc's core.

Orthanc 1.10.1 segfaults on a 2 KB DICOM file whose sequences are nested 50 levels deep: on REST
upload, and, stored by C-STORE, at the first ``GET /instances/{id}/tags`` (a poison instance that
crashes the server whenever it is read). ``check_dicom_limits`` measures the deepest sequence
nesting of a file with pydicom and refuses a file nested deeper than ``MAX_SEQUENCE_DEPTH``
(real data stays well below: structured reports and RT plans reach about a dozen levels).

A file whose data set is deflated (PS3.5 A.5, and the JPIP Referenced Deflate syntaxes, which
DCMTK inflates too) hides its items from a byte count: it is inflated here and measured. Which
syntax a file is read with is taken from its file meta group only when that group is well formed
(``well_formed_meta``: every reader reads the same elements there); in any other file a deflated
syntax's UID is looked for anywhere, since a meta group can be any length before its
TransferSyntaxUID (a long FileMetaInformationVersion moved it past the first 4 KB, and Orthanc
1.10.1 still inflated and parsed the data set, and crashed).

Pure: the caller passes the bytes; no I/O here.
"""

from __future__ import annotations

import io
import zlib

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_dataset

from orthanc_hardening.errors import HostileInputError

MAX_SEQUENCE_DEPTH = 24
# What a deflated data set may inflate to before it is refused unread (a zip bomb's bound).
MAX_INFLATED_BYTES = 1 << 30

# Item tags (FFFE,E000) in little and big endian: a file nests at most as many sequences as it
# has items.
_ITEM_TAGS = (b"\xfe\xff\x00\xe0", b"\xff\xfe\xe0\x00")
# The transfer syntaxes whose data set is deflated: Deflated Explicit VR Little Endian, JPIP
# Referenced Deflate, JPIP HTJ2K Referenced Deflate.
DEFLATED_SYNTAXES = ("1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.95", "1.2.840.10008.1.2.4.205")
_DEFLATED_UIDS = tuple(uid.encode() for uid in DEFLATED_SYNTAXES)
_GROUP_LENGTH_HEADER = b"\x02\x00\x00\x00UL\x04\x00"  # (0002,0000) UL, 4 bytes: explicit VR little endian
_PARSE_ERRORS = (InvalidDicomError, ValueError, EOFError, OSError, KeyError, TypeError, AttributeError,
                 NotImplementedError, zlib.error)


def well_formed_meta(data: bytes) -> tuple[int, str] | None:
    """Where the file meta group of ``data`` ends and the transfer syntax it names, if it is well formed.

    Well formed: after the "DICM" preamble, an explicit VR little endian group 0002 that starts with
    its group length, holds no sequence, names a TransferSyntaxUID and ends exactly where its group
    length says. Any reader, DCMTK's as pydicom's, reads the same elements there. ``None`` for any
    other file (no preamble, a sloppy or hostile meta group). Never raises.
    """
    if data[128:132] != b"DICM" or data[132:140] != _GROUP_LENGTH_HEADER:
        return None
    length = int.from_bytes(data[140:144], "little")
    stream = io.BytesIO(data)
    stream.seek(144)
    try:
        meta = read_dataset(stream, is_implicit_VR=False, is_little_endian=True, bytelength=length,
                            stop_when=lambda tag, vr, _length: tag.group != 2 or vr == "SQ")
        syntax = str(meta.get("TransferSyntaxUID", "")).rstrip("\0 ")
    except Exception:  # a meta group pydicom cannot read is not well formed
        return None
    if stream.tell() != 144 + length or not syntax:
        return None
    return 144 + length, syntax


def names_deflated_syntax(data: bytes) -> bool:
    """Whether ``data`` may be read with a deflated data set: its well-formed file meta group names a
    deflated syntax, or a file without one names it anywhere (a meta group can be any length)."""
    return _names_deflated(data, well_formed_meta(data))


def _names_deflated(data: bytes, meta: tuple[int, str] | None) -> bool:
    """``names_deflated_syntax`` with ``well_formed_meta(data)`` already read."""
    region = data if meta is None else data[:meta[0]]
    return any(uid in region for uid in _DEFLATED_UIDS)


def _item_count(data: bytes) -> int:
    return sum(data.count(tag) for tag in _ITEM_TAGS)


def may_nest_deeper(data: bytes, max_depth: int = MAX_SEQUENCE_DEPTH) -> bool:
    """Whether ``data`` can nest sequences deeper than ``max_depth`` (byte searches, no parsing of its data set).

    ``False`` is certain: the file cannot be read deflated and has too few items to nest that
    deep (most images). ``True`` means it must be parsed (``check_dicom_limits``).
    """
    return names_deflated_syntax(data) or _item_count(data) > max_depth


def sequence_depth(dataset: Dataset, limit: int) -> int:
    """The deepest sequence nesting of ``dataset`` (0: no sequence), counted up to ``limit + 1``.

    Iterative, so a hostile depth cannot exhaust the stack here.
    """
    deepest = 0
    pending: list[tuple[Dataset, int]] = [(dataset, 0)]
    while pending:
        current, depth = pending.pop()
        for element in current:
            if element.VR != "SQ":
                continue
            deepest = max(deepest, depth + 1)
            if deepest > limit:
                return deepest
            pending.extend((item, depth + 1) for item in element.value)
    return deepest


def inflate(deflated: bytes) -> bytes:
    """A deflated data set, inflated (raw DEFLATE, PS3.5 A.5), up to ``MAX_INFLATED_BYTES``.

    Raises:
        HostileInputError: it inflates to more than ``MAX_INFLATED_BYTES``.
        zlib.error: it is not a DEFLATE stream.
    """
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    inflated = inflater.decompress(deflated, MAX_INFLATED_BYTES)
    if inflater.unconsumed_tail:
        raise HostileInputError(f"deflated DICOM data set inflates to more than {MAX_INFLATED_BYTES} bytes")
    return inflated


def _depth(data: bytes, max_depth: int) -> int:
    """The deepest nesting of ``data``, parsed by pydicom; a deflated data set is inflated first.

    Raises:
        HostileInputError: the file names a deflated syntax anywhere but in the TransferSyntaxUID
            of a well-formed file meta group (what DCMTK would inflate is then unknown).
    """
    meta = well_formed_meta(data)
    if not _names_deflated(data, meta):
        # Every element, also after the pixel data (DCMTK reads them all); large values deferred.
        return sequence_depth(pydicom.dcmread(io.BytesIO(data), force=True, defer_size=4096), max_depth)
    if meta is None or meta[1] not in DEFLATED_SYNTAXES:
        raise HostileInputError("DICOM file names a deflated transfer syntax outside the TransferSyntaxUID of a "
                                "well-formed file meta group, so what its data set hides cannot be checked")
    inflated = inflate(data[meta[0]:])
    if _item_count(inflated) <= max_depth:
        return 0
    # Already in memory: nothing to defer (a deferred value would need a file to read it from).
    return sequence_depth(read_dataset(io.BytesIO(inflated), is_implicit_VR=False, is_little_endian=True),
                          max_depth)


def check_dicom_limits(data: bytes, max_depth: int = MAX_SEQUENCE_DEPTH) -> None:
    """Check that a DICOM file is not nested deeper than ``max_depth`` sequences.

    A file that pydicom cannot read is left to Orthanc (which refuses it with its own error),
    unless it names a deflated syntax: what it hides cannot be measured, so it is refused. One
    whose parsing exhausts Python's recursion is refused as hostile.

    Raises:
        HostileInputError: the file is nested deeper than ``max_depth``, or names a deflated
            syntax and cannot be inflated and parsed.
    """
    if not may_nest_deeper(data, max_depth):
        return
    try:
        depth = _depth(data, max_depth)
    except RecursionError as exc:
        raise HostileInputError(f"DICOM file nested too deep to parse (limit {max_depth} sequences)") from exc
    except _PARSE_ERRORS as exc:
        if names_deflated_syntax(data):
            raise HostileInputError(f"DICOM file names a deflated transfer syntax but its data set cannot be "
                                    f"inflated and read ({type(exc).__name__}), so its nesting cannot be "
                                    f"checked") from exc
        return
    if depth > max_depth:
        raise HostileInputError(f"DICOM file nests sequences more than {max_depth} levels deep")
