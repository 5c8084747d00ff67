"""DICOMweb answers the same with the plugin: QIDO-RS with every kind of matching, WADO-RS
metadata and retrieval, WADO-URI (orthanc-dicomweb on every server)."""

from __future__ import annotations

import pytest

from tests.compat.conftest import STUDIES, Trio
from tests.compat.test_rest import assert_same

STUDY_1, STUDY_4 = STUDIES[0][3], STUDIES[3][3]

QIDO = [
    "/dicom-web/studies",
    "/dicom-web/studies?PatientID=CMP-1",
    "/dicom-web/studies?PatientName=*oe*",
    "/dicom-web/studies?PatientName=doe*&fuzzymatching=false",
    "/dicom-web/studies?StudyDate=20240101-20251231",
    "/dicom-web/studies?00100020=CMP-2",
    "/dicom-web/studies?ModalitiesInStudy=MR",
    "/dicom-web/studies?AccessionNumber=ACC-1,ACC-3",
    "/dicom-web/studies?limit=2&offset=1",
    "/dicom-web/studies?includefield=StudyDescription&includefield=00081030",
    "/dicom-web/studies?includefield=all",
    "/dicom-web/series",
    "/dicom-web/series?Modality=CT",
    f"/dicom-web/studies/{STUDY_1}/series",
    f"/dicom-web/studies/{STUDY_1}/series?SeriesDescription=Series*",
    f"/dicom-web/studies/{STUDY_4}/instances",
    f"/dicom-web/studies/{STUDY_4}/series/{STUDY_4}.2/instances",
    "/dicom-web/instances?InstanceNumber=2",
    "/dicom-web/studies?StudyInstanceUID=1.2.3.unknown",
    "/dicom-web/studies?NotAKeyword=1",
]
WADO = [
    f"/dicom-web/studies/{STUDY_1}/metadata",
    f"/dicom-web/studies/{STUDY_4}/series/{STUDY_4}.2/metadata",
    f"/dicom-web/studies/{STUDY_4}/series/{STUDY_4}.2/instances/{STUDY_4}.2.1/metadata",
    f"/dicom-web/studies/{STUDY_1}/series/{STUDY_1}.1",
    f"/dicom-web/studies/{STUDY_4}/series/{STUDY_4}.1/instances/{STUDY_4}.1.2",
    f"/dicom-web/studies/{STUDY_1}/series/{STUDY_1}.2/instances/{STUDY_1}.2.1/frames/1",
    f"/dicom-web/studies/{STUDY_1}/series/{STUDY_1}.1/instances/{STUDY_1}.1.1/rendered",
    "/dicom-web/studies/1.2.3.unknown/metadata",
    f"/wado?requestType=WADO&studyUID={STUDY_1}&seriesUID={STUDY_1}.1&objectUID={STUDY_1}.1.2"
    "&contentType=application/dicom",
    f"/wado?requestType=WADO&studyUID={STUDY_1}&seriesUID={STUDY_1}.1&objectUID={STUDY_1}.1.2",
    "/wado?requestType=WADO&objectUID=1.2.3.unknown&contentType=application/dicom",
]


@pytest.mark.parametrize("path", QIDO)
def test_qido_answers_like_plain_orthanc(trio: Trio, path: str) -> None:
    assert_same(trio, "GET", path)


@pytest.mark.parametrize("path", WADO)
def test_wado_answers_like_plain_orthanc(trio: Trio, path: str) -> None:
    assert_same(trio, "GET", path)
