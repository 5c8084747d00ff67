"""Limits on DICOM files at ingest, against parser bombs that crash Orthanc's core.

Orthanc 1.10.1 segfaults on a 2 KB DICOM file whose sequences are nested 50 levels deep: on REST
upload, and, stored by C-STORE, at the first ``GET /instances/{id}/tags`` (a poison instance that
crashes the server whenever it is read). ``check_dicom_limits`` measures the deepest sequence
nesting of a file with pydicom and refuses a file nested deeper than ``MAX_SEQUENCE_DEPTH``
(real data stays well below: structured reports and RT plans reach about a dozen levels).

Pure: the caller passes the bytes; no I/O here.
"""

from __future__ import annotations

import io

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from orthanc_hardening.errors import HostileInputError

MAX_SEQUENCE_DEPTH = 24

# Item tags (FFFE,E000) in little and big endian: a file nests at most as many sequences as it
# has items. Deflated files hide theirs, so they are always parsed.
_ITEM_TAGS = (b"\xfe\xff\x00\xe0", b"\xff\xfe\xe0\x00")
_DEFLATED_SYNTAX = b"1.2.840.10008.1.2.1.99"


def may_nest_deeper(data: bytes, max_depth: int = MAX_SEQUENCE_DEPTH) -> bool:
    """Whether ``data`` can nest sequences deeper than ``max_depth`` (a byte count, no parsing).

    ``False`` is certain: the file has too few items to nest that deep (most images). ``True``
    means it must be parsed (``check_dicom_limits``).
    """
    if _DEFLATED_SYNTAX in data[:4096]:
        return True
    return sum(data.count(tag) for tag in _ITEM_TAGS) > max_depth


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


def check_dicom_limits(data: bytes, max_depth: int = MAX_SEQUENCE_DEPTH) -> None:
    """Check that a DICOM file is not nested deeper than ``max_depth`` sequences.

    A file that pydicom cannot read is left to Orthanc (which refuses it with its own error);
    one whose parsing exhausts Python's recursion is refused as hostile.

    Raises:
        HostileInputError: the file is nested deeper than ``max_depth``.
    """
    if not may_nest_deeper(data, max_depth):
        return
    try:
        # Every element, also after the pixel data (DCMTK reads them all); large values deferred.
        dataset = pydicom.dcmread(io.BytesIO(data), force=True, defer_size=4096)
        depth = sequence_depth(dataset, max_depth)
    except RecursionError as exc:
        raise HostileInputError(f"DICOM file nested too deep to parse (limit {max_depth} sequences)") from exc
    except (InvalidDicomError, ValueError, EOFError, OSError, KeyError, TypeError, AttributeError):
        return
    if depth > max_depth:
        raise HostileInputError(f"DICOM file nests sequences more than {max_depth} levels deep")
