"""C-FIND answer encoding and QIDO-RS match keys (``integrity/cfind.py``)."""

from __future__ import annotations

import io

import pydicom

from orthanc_hardening.integrity.cfind import answer_dataset, qido_keyword


def test_cfind_answer_is_a_valid_dicom_file() -> None:
    data = answer_dataset({"PatientName": "Doe^Jäne", "StudyInstanceUID": "1.2.3", "QueryRetrieveLevel": "STUDY",
                           "Rows": "5", "ReferencedSOPSequence": "", "NotAKeyword": "x"})
    dataset = pydicom.dcmread(io.BytesIO(data))
    assert str(dataset.PatientName) == "Doe^Jäne" and dataset.StudyInstanceUID == "1.2.3"
    assert dataset.QueryRetrieveLevel == "STUDY" and dataset.SpecificCharacterSet == "ISO_IR 192"
    assert len(dataset) == 6 and dataset.Rows is None


def test_qido_keys() -> None:
    assert qido_keyword("PatientName") == "PatientName"
    assert qido_keyword("00100020") == "PatientID"
    assert qido_keyword("limit") == "" and qido_keyword("includefield") == "" and qido_keyword("Nonsense") == ""
