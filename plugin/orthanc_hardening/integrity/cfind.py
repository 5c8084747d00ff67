"""C-FIND and QIDO-RS pieces without I/O: Orthanc's C-FIND answer, rebuilt; QIDO match keys.

A plugin that registers a C-FIND handler replaces Orthanc's own, so the plugin answers exactly
as Orthanc's ``OrthancFindRequestHandler`` does (read from Orthanc 1.10.1, 1.12.7 and 1.13.0),
while Orthanc itself does the matching (``/tools/find``):

* ``parse_query`` reads the query as Orthanc hands it to a plugin: every key with its value,
  sequence keys as empty values, empty numeric keys as null.
* ``find_bodies`` turns it into the ``/tools/find`` requests whose intersection is Orthanc's own
  C-FIND lookup: PN keys match with ``CaseSensitivePN``, every other key case-sensitively (DICOM
  PS3.4 C.2.2.2), an empty value is universal, group-length keys are ignored; with the resource
  finder (Orthanc 1.12.5+) every key is a requested tag and ``TimezoneOffsetFromUTC`` does not
  match.
* ``needs_instance_tags`` says when Orthanc before 1.12.5 answers from one instance's tags instead
  of the index (a non-index key or a sequence key in the query); ``counters_of`` computes the
  counters it adds (``ModalitiesInStudy``, ``NumberOfStudyRelatedInstances``, …).
* ``answer_elements`` builds one answer (Retrieve AE Title, the query's level, every key with its
  value or empty, sequences copied) and ``answer_dataset`` encodes it as a DICOM file.

``qido_keyword`` names the DICOM keyword of a QIDO-RS match key.
"""

from __future__ import annotations

import enum
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element

from orthanc_hardening.errors import BadRequestError

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


# -- the query --------------------------------------------------------------------------------

QUERY_RETRIEVE_LEVEL = 0x00080052
SPECIFIC_CHARACTER_SET = 0x00080005
RETRIEVE_AE_TITLE = 0x00080054
TIMEZONE_OFFSET = 0x00080201
MODALITIES_IN_STUDY = 0x00080061
SOP_CLASSES_IN_STUDY = 0x00080062
PATIENT_STUDIES, PATIENT_SERIES, PATIENT_INSTANCES = 0x00201200, 0x00201202, 0x00201204
STUDY_SERIES, STUDY_INSTANCES, SERIES_INSTANCES = 0x00201206, 0x00201208, 0x00201209
COUNTERS = frozenset({MODALITIES_IN_STUDY, SOP_CLASSES_IN_STUDY, PATIENT_STUDIES, PATIENT_SERIES,
                      PATIENT_INSTANCES, STUDY_SERIES, STUDY_INSTANCES, SERIES_INSTANCES})
_COUNTERS_OF_LEVEL = {
    "Patient": (PATIENT_STUDIES, PATIENT_SERIES, PATIENT_INSTANCES),
    "Study": (STUDY_SERIES, STUDY_INSTANCES, SOP_CLASSES_IN_STUDY, MODALITIES_IN_STUDY),
    "Series": (SERIES_INSTANCES,),
}

# Orthanc's StringToResourceType (case-insensitive); IMAGE is the standard name of the instance level.
_LEVELS = {"PATIENT": "Patient", "STUDY": "Study", "SERIES": "Series", "INSTANCE": "Instance", "IMAGE": "Instance"}

# The index ("main DICOM") tags of Orthanc before 1.12.5, every level (DicomMap.cpp, db v6).
_INDEX_KEYWORDS = (
    "PatientName", "PatientBirthDate", "PatientSex", "OtherPatientIDs", "PatientID",
    "StudyDate", "StudyTime", "StudyID", "StudyDescription", "AccessionNumber", "StudyInstanceUID",
    "RequestedProcedureDescription", "InstitutionName", "RequestingPhysician", "ReferringPhysicianName",
    "SeriesDate", "SeriesTime", "Modality", "Manufacturer", "StationName", "SeriesDescription",
    "BodyPartExamined", "SequenceName", "ProtocolName", "SeriesNumber", "CardiacNumberOfImages",
    "ImagesInAcquisition", "NumberOfTemporalPositions", "NumberOfSlices", "NumberOfTimeSlices",
    "SeriesInstanceUID", "ImageOrientationPatient", "SeriesType", "OperatorsName",
    "PerformedProcedureStepDescription", "AcquisitionDeviceProcessingDescription", "ContrastBolusAgent",
    "InstanceCreationDate", "InstanceCreationTime", "AcquisitionNumber", "ImageIndex", "InstanceNumber",
    "NumberOfFrames", "TemporalPositionIdentifier", "SOPInstanceUID", "ImagePositionPatient", "ImageComments",
)
INDEX_TAGS = frozenset(int(tag_for_keyword(keyword)) for keyword in _INDEX_KEYWORDS)  # type: ignore[arg-type]


def tag_key(tag: int) -> str:
    """Orthanc's name of a tag in ``/tools/find`` and short JSON: ``gggg,eeee`` (lower-case hex)."""
    return f"{tag >> 16:04x},{tag & 0xFFFF:04x}"


def vr_of(tag: int) -> str:
    """The VR of ``tag`` in the DICOM dictionary (the first of "US or SS"), or ``UN``."""
    try:
        return str(dictionary_VR(tag)).split(" or ")[0]
    except KeyError:
        return "UN"


@dataclass(frozen=True, slots=True)
class FindKey:
    """One key of a C-FIND query: its tag and value (``None``: null, e.g. an empty ``Rows``)."""

    tag: int
    value: str | None

    @property
    def vr(self) -> str:
        return vr_of(self.tag)

    @property
    def is_sequence(self) -> bool:
        return self.vr == "SQ"

    @property
    def constraint(self) -> str:
        """The matching value, ``""`` when the key matches everything (empty, null, a sequence)."""
        if self.value is None or self.is_sequence or self.tag & 0xFFFF == 0:
            return ""
        return self.value


@dataclass(frozen=True, slots=True)
class FindQuery:
    """A C-FIND query: its level (Orthanc's name and the value sent) and its other keys, in order."""

    level: str
    level_value: str
    keys: tuple[FindKey, ...]

    def has(self, tag: int) -> bool:
        return any(key.tag == tag for key in self.keys)


def parse_query(elements: Iterable[tuple[int, str | None]]) -> FindQuery:
    """The query from ``(tag, value)`` pairs as Orthanc gives them to a plugin.

    Raises:
        BadRequestError: no ``QueryRetrieveLevel``, or not a level Orthanc knows.
    """
    level_value: str | None = None
    keys: list[FindKey] = []
    for tag, value in elements:
        if tag == QUERY_RETRIEVE_LEVEL:
            level_value = value
        elif tag != SPECIFIC_CHARACTER_SET:
            keys.append(FindKey(tag, value))
    if level_value is None:
        raise BadRequestError("QueryRetrieveLevel", "C-FIND request without the tag 0008,0052 (QueryRetrieveLevel)")
    level = _LEVELS.get(level_value.strip().upper())
    if level is None:
        raise BadRequestError("QueryRetrieveLevel", f"unknown level {level_value!r}")
    return FindQuery(level, level_value, tuple(keys))


def find_bodies(query: FindQuery, case_sensitive_pn: bool, resource_finder: bool) -> list[dict[str, Any]]:
    """The ``/tools/find`` bodies whose answers, intersected, are Orthanc's C-FIND matches.

    The first body is expanded (and, with the resource finder, asks for every key as a requested
    tag); a second one, for person names matched case-insensitively, only names ids.
    """
    exact: dict[str, str] = {}
    names: dict[str, str] = {}
    for key in query.keys:
        if not key.constraint or (resource_finder and key.tag == TIMEZONE_OFFSET):
            continue
        (names if key.vr == "PN" and not case_sensitive_pn else exact)[tag_key(key.tag)] = key.constraint
    first: dict[str, Any] = {"Level": query.level, "Query": exact, "Expand": True, "CaseSensitive": True}
    if resource_finder:
        first["RequestedTags"] = sorted({tag_key(key.tag) for key in query.keys if key.tag != TIMEZONE_OFFSET})
    if not names:
        return [first]
    if not exact:
        first["Query"], first["CaseSensitive"] = names, False
        return [first]
    return [first, {"Level": query.level, "Query": names, "Expand": False, "CaseSensitive": False}]


def needs_instance_tags(query: FindQuery) -> bool:
    """Orthanc before 1.12.5 answers from one instance's tags when a key is not an index tag."""
    return any(key.is_sequence or (key.tag not in INDEX_TAGS and key.tag not in COUNTERS) for key in query.keys)


def counters_of(query: FindQuery) -> tuple[int, ...]:
    """The counters Orthanc before 1.12.5 computes for this query (only those of its level)."""
    return tuple(tag for tag in _COUNTERS_OF_LEVEL.get(query.level, ()) if query.has(tag))


def joined(values: Iterable[str]) -> str:
    """A multi-valued counter as Orthanc stores it: distinct values, sorted, backslash-separated."""
    return "\\".join(sorted(set(values)))


# -- the answer -------------------------------------------------------------------------------

# A value as Orthanc's JSON gives it: text, a sequence (list of items, each tag -> value), or absent.
Value = str | list[Any] | None


def lookup(tag: int, *sources: Mapping[str, Any]) -> Value:
    """The value of ``tag`` in Orthanc JSON maps keyed by ``gggg,eeee`` or by keyword."""
    names = (tag_key(tag), tag_key(tag).upper(), str(keyword_for_tag(tag) or ""))
    for source in sources:
        for name in names:
            if name and name in source:
                value = source[name]
                if isinstance(value, dict) and "Value" in value:  # Orthanc's "full" form
                    value = value["Value"]
                if isinstance(value, (str, list)):
                    return value
                return None
    return None


class Sequences(enum.Enum):
    """How an Orthanc version answers a sequence key (read from each version's handler)."""

    COPY_OR_OMIT = "copy-or-omit"  # before 1.12.5: the instance's sequence, or nothing
    OMIT_OR_EMPTY = "omit-or-empty"  # 1.12.5 to 1.12.x: nothing when it has one (a copy bug), else empty
    COPY_OR_EMPTY = "copy-or-empty"  # 1.13: the resource's sequence, or an empty one

    @classmethod
    def of(cls, resource_finder: bool, orthanc_1_13: bool) -> Sequences:
        if orthanc_1_13:
            return cls.COPY_OR_EMPTY
        return cls.OMIT_OR_EMPTY if resource_finder else cls.COPY_OR_OMIT


def answer_elements(query: FindQuery, values: Mapping[int, Value], retrieve_aet: str,
                    sequences: Sequences) -> dict[int, Value]:
    """One C-FIND answer, as Orthanc builds it (``AddAnswer`` / ``LookupVisitorV2::Apply``).

    ``values`` holds the resource's value for each key (absent or ``None``: answered empty) and
    the computed counters; ``sequences`` says how this Orthanc answers sequence keys.
    """
    answer: dict[int, Value] = {RETRIEVE_AE_TITLE: retrieve_aet, QUERY_RETRIEVE_LEVEL: query.level_value}
    for key in query.keys:
        value = values.get(key.tag)
        if key.is_sequence:
            present = isinstance(value, list)
            if present and sequences is not Sequences.OMIT_OR_EMPTY:
                answer[key.tag] = value
            elif not present and sequences is not Sequences.COPY_OR_OMIT:
                answer[key.tag] = []
        else:
            answer[key.tag] = value if isinstance(value, str) else ""
    for tag in COUNTERS:
        if tag in values and query.has(tag):
            answer[tag] = values[tag]
    return answer


_FIND_SOP_CLASS = "1.2.840.10008.5.1.4.1.2.2.1"  # Study Root Query/Retrieve Information Model - FIND
_LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_TAG_KEY = re.compile(r"[0-9a-fA-F]{4},[0-9a-fA-F]{4}")
_NUMBERS = {"US": "<H", "SS": "<h", "UL": "<I", "SL": "<i", "FL": "<f", "FD": "<d", "SV": "<q", "UV": "<Q"}


def _element(tag: int, vr: str, value: bytes) -> bytes:
    # PS3.5 §7.1.2: explicit VR little endian; values padded to even length (UI with NUL, text with space).
    if len(value) % 2:
        value += b"\x00" if vr in ("UI", "OB", "UN") else b" "
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr.encode("ascii")
    if vr in _LONG_VRS:
        return head + b"\x00\x00" + struct.pack("<I", len(value)) + value
    return head + struct.pack("<H", len(value)) + value


def _number_bytes(vr: str, text: str) -> bytes:
    """A numeric value from Orthanc's text form (``512``, ``1\\2``); empty when it does not parse."""
    pack = _NUMBERS[vr]
    try:
        numbers = [float(part) if pack in ("<f", "<d") else int(part) for part in text.split("\\") if part.strip()]
        return b"".join(struct.pack(pack, number) for number in numbers)
    except (ValueError, struct.error):
        return b""


def _item_value(vr: str, text: str) -> Any:
    """A value of a sequence item for pydicom, from Orthanc's text form."""
    if vr not in _NUMBERS:
        return text
    try:
        numbers = [float(part) if _NUMBERS[vr] in ("<f", "<d") else int(part) for part in text.split("\\")]
    except ValueError:
        return None
    return numbers[0] if len(numbers) == 1 else numbers


def _item_dataset(item: Mapping[str, Any]) -> Dataset:
    """A sequence item from Orthanc's JSON (tags by ``gggg,eeee`` or keyword)."""
    dataset = Dataset()
    for name, value in item.items():
        tag = int(name.replace(",", ""), 16) if _TAG_KEY.fullmatch(name) else tag_for_keyword(name)
        if tag is None:
            continue
        if isinstance(value, dict) and "Value" in value:
            value = value["Value"]
        vr = vr_of(tag)
        if isinstance(value, list):
            dataset.add(DataElement(tag, "SQ", [_item_dataset(sub) for sub in value if isinstance(sub, dict)]))
        elif isinstance(value, str) and vr not in _BINARY_VRS:
            dataset.add(DataElement(tag, vr, _item_value(vr, value)))
    return dataset


def _sequence_bytes(tag: int, items: Sequence[Any]) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    element = DataElement(tag, "SQ", [_item_dataset(item) for item in items if isinstance(item, dict)])
    write_data_element(buffer, element, encodings=["utf-8"])
    return buffer.getvalue()


def answer_dataset(answer: Mapping[int, Value]) -> bytes:
    """One C-FIND answer as a small DICOM file (explicit VR little endian, UTF-8).

    Encoded by hand (sequences through pydicom): Orthanc's ``CreateDicom`` and a whole pydicom
    dataset both cost about a millisecond per answer, which a C-FIND over a thousand studies
    cannot afford. Numbers are encoded from their text; binary values are answered empty, as
    Orthanc answers them.
    """
    elements: dict[int, bytes] = {SPECIFIC_CHARACTER_SET: _element(SPECIFIC_CHARACTER_SET, "CS", b"ISO_IR 192")}
    for tag, value in answer.items():
        if tag >> 16 < 0x0008 or tag == SPECIFIC_CHARACTER_SET:
            continue
        vr = vr_of(tag)
        if vr == "SQ" or isinstance(value, list):
            elements[tag] = _sequence_bytes(tag, value if isinstance(value, list) else [])
            continue
        text = value if isinstance(value, str) else ""
        if vr in _NUMBERS:
            encoded = _number_bytes(vr, text)
        elif vr in _BINARY_VRS:
            encoded = b""
        else:
            encoded = text.encode("utf-8")
        elements[tag] = _element(tag, vr, encoded)
    body = b"".join(elements[tag] for tag in sorted(elements))
    meta = (_element(0x00020001, "OB", b"\x00\x01") + _element(0x00020002, "UI", _FIND_SOP_CLASS.encode())
            + _element(0x00020003, "UI", b"2.25.1") + _element(0x00020010, "UI", b"1.2.840.10008.1.2.1"))
    return b"\x00" * 128 + b"DICM" + _element(0x00020000, "UL", struct.pack("<I", len(meta))) + meta + body
