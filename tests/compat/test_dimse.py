"""DICOM answers the same with the plugin: C-FIND at every level with every kind of key, C-MOVE
and C-GET at every level, over DICOM TLS (pynetdicom), against the same data.

C-FIND answers are compared element by element (tag, VR, value; the character set included);
C-MOVE and C-GET by final status, sub-operation counts and the instances received (C-GET: their
bytes too).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pydicom.dataset import Dataset

from tests.compat import deliberate, timing
from tests.compat.conftest import STUDIES, Trio
from tests.support import dimse
from tests.support.scp import StorageSCP

STUDY_1, STUDY_3, STUDY_4 = STUDIES[0][3], STUDIES[2][3], STUDIES[3][3]


def query(level: str, charset: str | None = None, **keys: Any) -> Dataset:
    dataset = Dataset()
    if charset:
        dataset.SpecificCharacterSet = charset
    dataset.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(dataset, keyword, value)
    return dataset


def query_without_level(**keys: Any) -> Dataset:
    dataset = Dataset()
    for keyword, value in keys.items():
        setattr(dataset, keyword, value)
    return dataset


def empty_sequence() -> list[Dataset]:
    return []


FINDS: list[tuple[str, str, Dataset]] = [
    # Patient root, PATIENT level.
    ("patients universal", "patient", query("PATIENT", PatientID="", PatientName="", PatientBirthDate="")),
    ("patient by id", "patient", query("PATIENT", PatientID="CMP-1", PatientName="")),
    ("patient wildcard", "patient", query("PATIENT", PatientID="CMP-*", PatientSex="")),
    ("patient computed", "patient", query("PATIENT", PatientID="", NumberOfPatientRelatedStudies="",
                                          NumberOfPatientRelatedSeries="", NumberOfPatientRelatedInstances="")),
    ("patient latin-1 name", "patient", query("PATIENT", "ISO_IR 100", PatientName="M*ller*", PatientID="")),
    ("patient utf-8 name", "patient", query("PATIENT", "ISO_IR 192", PatientName="山田*", PatientID="")),
    # Study root, STUDY level.
    ("studies universal", "study", query("STUDY", StudyInstanceUID="", PatientID="", PatientName="", StudyDate="",
                                         AccessionNumber="", StudyDescription="")),
    ("study by patient", "study", query("STUDY", PatientID="CMP-1", StudyInstanceUID="")),
    ("study date range", "study", query("STUDY", StudyDate="20240101-20251231", StudyInstanceUID="")),
    ("study open date range", "study", query("STUDY", StudyDate="-20241231", StudyInstanceUID="")),
    ("study accession any", "study", query("STUDY", AccessionNumber="*", StudyInstanceUID="")),
    ("study uid list", "study", query("STUDY", StudyInstanceUID=f"{STUDY_1}\\{STUDY_4}")),
    ("study name case", "study", query("STUDY", PatientName="DOE*", StudyInstanceUID="")),
    ("study modalities", "study", query("STUDY", ModalitiesInStudy="MR", StudyInstanceUID="")),
    ("study computed", "study", query("STUDY", StudyInstanceUID="", ModalitiesInStudy="",
                                      NumberOfStudyRelatedSeries="", NumberOfStudyRelatedInstances="")),
    ("study sequence key", "study", query("STUDY", StudyInstanceUID="",
                                          RequestAttributesSequence=empty_sequence())),
    ("study binary key", "study", query("STUDY", StudyInstanceUID=STUDY_1, Rows=None)),
    ("study retrieve ae", "study", query("STUDY", StudyInstanceUID=STUDY_1, RetrieveAETitle="")),
    ("study unknown", "study", query("STUDY", StudyInstanceUID="1.2.3.unknown")),
    ("study description is case-sensitive", "study", query("STUDY", StudyDescription="chest*", StudyInstanceUID="")),
    ("study name and description", "study", query("STUDY", PatientName="doe*", StudyDescription="Chest*",
                                                   StudyInstanceUID="")),
    ("study sop classes", "study", query("STUDY", StudyInstanceUID="", SOPClassesInStudy="")),
    ("study without a level", "study", query_without_level(StudyInstanceUID=STUDY_1)),
    ("study unknown level", "study", query("FRAME", StudyInstanceUID=STUDY_1)),
    # SERIES level.
    ("series of a study", "study", query("SERIES", StudyInstanceUID=STUDY_1, SeriesInstanceUID="", Modality="",
                                         SeriesDescription="", SeriesNumber="")),
    ("series modality", "study", query("SERIES", StudyInstanceUID=STUDY_4, Modality="MR", SeriesInstanceUID="")),
    ("series wildcard", "study", query("SERIES", StudyInstanceUID=STUDY_4, SeriesDescription="*2",
                                       SeriesInstanceUID="")),
    ("series computed", "study", query("SERIES", StudyInstanceUID=STUDY_1, SeriesInstanceUID="",
                                       NumberOfSeriesRelatedInstances="")),
    ("series with study keys", "study", query("SERIES", StudyInstanceUID=STUDY_1, SeriesInstanceUID="",
                                              StudyDescription="", PatientName="", AccessionNumber="")),
    ("series sequence key", "study", query("SERIES", StudyInstanceUID=STUDY_4, SeriesInstanceUID="",
                                           RequestAttributesSequence=empty_sequence())),
    # IMAGE level (the standard name Orthanc's own SCU sends).
    ("image level in lower case", "study", query("image", StudyInstanceUID=STUDY_1, SeriesInstanceUID=f"{STUDY_1}.2",
                                                 SOPInstanceUID="")),
    ("image rows match", "study", query("IMAGE", StudyInstanceUID=STUDY_1, SeriesInstanceUID=f"{STUDY_1}.1",
                                        SOPInstanceUID="", Rows=64)),
    ("image rows mismatch", "study", query("IMAGE", StudyInstanceUID=STUDY_1, SeriesInstanceUID=f"{STUDY_1}.1",
                                           SOPInstanceUID="", Rows=32)),
    ("images of a series", "study", query("IMAGE", StudyInstanceUID=STUDY_4, SeriesInstanceUID=f"{STUDY_4}.1",
                                          SOPInstanceUID="", InstanceNumber="", SOPClassUID="")),
    ("image by number", "study", query("IMAGE", StudyInstanceUID=STUDY_1, SeriesInstanceUID=f"{STUDY_1}.1",
                                       InstanceNumber="2", SOPInstanceUID="")),
    ("image binary key", "study", query("IMAGE", StudyInstanceUID=STUDY_3, SeriesInstanceUID=f"{STUDY_3}.1",
                                        SOPInstanceUID="", Rows=None, Columns=None)),
]


def elements(dataset: Dataset) -> list[tuple[str, str, str]]:
    return sorted((str(element.tag), element.VR, repr(element.value)) for element in dataset)


def normalised_find(server: Any, name: str, model: str,
                    request: Dataset) -> tuple[int, list[list[tuple[str, str, str]]]]:
    status, matches = timing.timed("C-FIND", name, lambda: dimse.c_find(server, request, model=model))
    return status, sorted(elements(match) for match in matches)


@pytest.mark.parametrize(("name", "model", "request_dataset"), FINDS, ids=[f[0] for f in FINDS])
def test_cfind_answers_like_plain_orthanc(trio: Trio, name: str, model: str, request_dataset: Dataset) -> None:
    plain = normalised_find(trio.plain, "plain", model, request_dataset)
    for label, server in zip(timing.SERVERS[1:], trio.hardened, strict=True):
        assert normalised_find(server, label, model, request_dataset) == plain, f"{name} differs in {label} mode"


RETRIEVES: list[tuple[str, str, Dataset]] = [
    ("patient", "patient", query("PATIENT", PatientID="CMP-1")),
    ("study", "study", query("STUDY", StudyInstanceUID=STUDY_4)),
    ("two studies", "study", query("STUDY", StudyInstanceUID=f"{STUDY_1}\\{STUDY_3}")),
    ("study by accession", "study", query("STUDY", AccessionNumber="ACC-3")),
    ("series", "study", query("SERIES", StudyInstanceUID=STUDY_1, SeriesInstanceUID=f"{STUDY_1}.2")),
    ("image", "study", query("IMAGE", StudyInstanceUID=STUDY_4, SeriesInstanceUID=f"{STUDY_4}.2",
                             SOPInstanceUID=f"{STUDY_4}.2.1")),
    ("empty study uid only", "study", query("STUDY", StudyInstanceUID="")),
    ("patient level with accession", "patient", query("PATIENT", AccessionNumber="ACC-1")),
    ("unknown study", "study", query("STUDY", StudyInstanceUID="1.2.3.unknown")),
]


def summary(result: dimse.RetrieveResult, with_bytes: bool) -> tuple[int, int, int, Any]:
    received = dict(sorted(result.received.items())) if with_bytes else sorted(result.received)
    return result.status, result.completed, result.failed, received


@pytest.mark.parametrize(("name", "model", "request_dataset"), RETRIEVES, ids=[r[0] for r in RETRIEVES])
def test_cget_answers_like_plain_orthanc(trio: Trio, name: str, model: str, request_dataset: Dataset) -> None:
    def got(label: str, server: Any) -> tuple[int, int, int, Any]:
        return summary(timing.timed("C-GET", label, lambda: dimse.c_get_query(server, request_dataset, model=model)),
                       with_bytes=True)

    plain = got("plain", trio.plain)
    for label, server in zip(timing.SERVERS[1:], trio.hardened, strict=True):
        answer = got(label, server)
        assert answer == plain, f"C-GET {name} differs in {label} mode: {answer[:3]} != {plain[:3]}"


@pytest.fixture
def receivers(trio: Trio) -> Iterator[dict[str, StorageSCP]]:
    scps = {server.home.name: StorageSCP(port=server.modality_port, pki=server.pki) for server in trio.all}
    for scp in scps.values():
        scp.start()
    try:
        yield scps
    finally:
        for scp in scps.values():
            scp.stop()


@pytest.mark.parametrize(("name", "model", "request_dataset"), RETRIEVES, ids=[r[0] for r in RETRIEVES])
def test_cmove_answers_like_plain_orthanc(trio: Trio, receivers: dict[str, StorageSCP], name: str, model: str,
                                          request_dataset: Dataset) -> None:
    def moved(label: str, server: Any) -> tuple[int, int, int, Any]:
        scp = receivers[server.home.name]
        scp.received.clear()
        result = timing.timed("C-MOVE", label, lambda: dimse.c_move_query(server, request_dataset, model=model))
        return result.status, result.completed, result.failed, sorted(scp.received)

    plain = moved("plain", trio.plain)
    expected = plain if dimse.move_in_steps(trio.monitor) else deliberate.single_step_move(plain)
    for label, server in zip(timing.SERVERS[1:], trio.hardened, strict=True):
        assert moved(label, server) == expected, f"C-MOVE {name} differs in {label} mode (plain: {plain})"
