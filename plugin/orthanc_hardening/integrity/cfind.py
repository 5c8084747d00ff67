"""C-FIND and QIDO-RS pieces without I/O: the DICOM answer of a C-FIND match, QIDO match keys.

``answer_dataset`` encodes one C-FIND answer as a small DICOM file (explicit VR little endian,
UTF-8); ``qido_keyword`` names the DICOM keyword of a QIDO-RS match key. The shell asks Orthanc
and verifies; these only encode and parse.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

QIDO_ROUTE = re.compile(r"/dicom-web/(?:studies/(?P<study>[^/]+)/(?:series/(?P<series>[^/]+)/)?)?"
                        r"(?P<level>studies|series|instances)")
_QIDO_IGNORED = frozenset({"limit", "offset", "fuzzymatching", "includefield"})


def qido_keyword(key: str) -> str:
    """The DICOM keyword of a QIDO-RS match key (keyword or 8 hex digits), or ``""``."""
    if key.lower() in _QIDO_IGNORED or "." in key:
        return ""
    if len(key) == 8 and all(c in "0123456789abcdefABCDEF" for c in key):
        return str(keyword_for_tag(int(key, 16)) or "")
    return key if tag_for_keyword(key) is not None else ""


_FIND_SOP_CLASS = "1.2.840.10008.5.1.4.1.2.2.1"  # Study Root Query/Retrieve Information Model - FIND
_LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI",
                       "UR", "UT"})


def _element(tag: int, vr: str, value: bytes) -> bytes:
    # PS3.5 §7.1.2: explicit VR little endian; values padded to even length (UI with NUL, text with space).
    if len(value) % 2:
        value += b"\x00" if vr in ("UI", "OB") else b" "
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr.encode("ascii")
    if vr in _LONG_VRS:
        return head + b"\x00\x00" + struct.pack("<I", len(value)) + value
    return head + struct.pack("<H", len(value)) + value


def answer_dataset(fields: Mapping[str, str]) -> bytes:
    """One C-FIND answer as a small DICOM file (explicit VR little endian, UTF-8).

    Encoded by hand: Orthanc's ``CreateDicom`` and pydicom both cost about a millisecond per
    answer, which a C-FIND over a thousand studies cannot afford. Keys that are not DICOM
    keywords are left out; a non-text key (sequences, binary numbers) is answered empty.
    """
    elements: dict[int, bytes] = {0x00080005: _element(0x00080005, "CS", b"ISO_IR 192")}
    for name, value in fields.items():
        tag = tag_for_keyword(name)
        if tag is None or tag >> 16 == 0x0002 or tag == 0x00080005:
            continue
        vr = dictionary_VR(tag).split(" or ")[0]
        encoded = value.encode("utf-8") if vr in _TEXT_VRS else b""
        elements[tag] = _element(tag, vr, encoded)
    body = b"".join(elements[tag] for tag in sorted(elements))
    meta = (_element(0x00020001, "OB", b"\x00\x01") + _element(0x00020002, "UI", _FIND_SOP_CLASS.encode())
            + _element(0x00020003, "UI", b"2.25.1") + _element(0x00020010, "UI", b"1.2.840.10008.1.2.1"))
    return b"\x00" * 128 + b"DICM" + _element(0x00020000, "UL", struct.pack("<I", len(meta))) + meta + body
