"""The differential suite: the same requests to a plain Orthanc and to hardened ones of the same
version, same configuration but for the plugin, same data — and the answers compared.

``trio`` starts three servers once for the suite: ``plain`` (no plugin), ``monitor`` (the plugin
in monitor mode) and ``enforce`` (enforce mode, untampered data), and uploads the same dataset to
each. Tests that only read share it; a test that changes data starts servers of its own.
Orthanc's ids are hashes of the DICOM UIDs, so the same data has the same ids on every server.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.compat import timing
from tests.integration.conftest import pki, start_orthanc, start_orthanc_module  # noqa: F401 - fixtures
from tests.support.dicom import make_instance
from tests.support.server import DICOMWEB_PLUGIN, PYTHON_PLUGIN, OrthancServer

STUDIES = (
    # (patient id, patient name, character set, study uid, accession, date, modality, series count, sequence, private)
    ("CMP-1", "Doe^John", None, "1.2.826.0.1.3680043.10.543.1", "ACC-1", "20250101", "CT", 2, False, False),
    ("CMP-1", "Doe^John", None, "1.2.826.0.1.3680043.10.543.2", "ACC-2", "20250315", "MR", 1, True, False),
    ("CMP-2", "Müller^Jörg", "ISO_IR 100", "1.2.826.0.1.3680043.10.543.3", "ACC-3", "20240620", "CT", 1, False, True),
    ("CMP-3", "山田^太郎", "ISO_IR 192", "1.2.826.0.1.3680043.10.543.4", "ACC-4", "20231231", "MR", 2, True, True),
    ("CMP-4", "O'Brien^Ann", None, "1.2.826.0.1.3680043.10.543.5", "", "20260101", "CT", 1, False, False),
)
INSTANCES_PER_SERIES = 2


def dataset() -> list[bytes]:
    """The differential suite's data: several patients, studies, series and modalities, three
    character sets, instances with a sequence and with a private block, one study without an
    accession number."""
    files = []
    for patient_id, name, charset, study, accession, date, modality, series_count, sequence, private in STUDIES:
        for series in range(1, series_count + 1):
            for number in range(1, INSTANCES_PER_SERIES + 1):
                files.append(make_instance(
                    patient_id=patient_id, patient_name=name, study_uid=study, series_uid=f"{study}.{series}",
                    sop_uid=f"{study}.{series}.{number}", modality=modality, instance_number=number,
                    accession_number=accession, study_date=date, character_set=charset, with_sequence=sequence,
                    with_private_tag=private, series_description=f"Series {series}",
                    body_part="CHEST" if modality == "CT" else "HEAD"))
    return files


@dataclass(frozen=True)
class Trio:
    """A plain Orthanc and two hardened ones holding the same data."""

    plain: OrthancServer
    monitor: OrthancServer
    enforce: OrthancServer

    @property
    def hardened(self) -> tuple[OrthancServer, OrthancServer]:
        return self.monitor, self.enforce

    @property
    def all(self) -> tuple[OrthancServer, OrthancServer, OrthancServer]:
        return self.plain, self.monitor, self.enforce


PLUGINS = {"Plugins": [PYTHON_PLUGIN, DICOMWEB_PLUGIN], "DicomWeb": {"Enable": True}}


def start_trio(start) -> Trio:  # type: ignore[no-untyped-def]
    plain = start(config={"Plugins": [DICOMWEB_PLUGIN], "DicomWeb": {"Enable": True}}, plugin=False)
    monitor = start(config=PLUGINS, hardening={"Mode": "monitor"})
    enforce = start(config=PLUGINS)
    trio = Trio(plain, monitor, enforce)
    for data in dataset():
        for server in trio.all:
            server.upload(data)
    return trio


@pytest.fixture(scope="session")
def trio(pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trio]:  # type: ignore[no-untyped-def]  # noqa: F811
    from tests.integration.conftest import _factory

    factory = _factory(pki, tmp_path_factory)
    start = next(factory)
    try:
        yield start_trio(start)
    finally:
        factory.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/compat/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for line in timing.report():
        terminalreporter.write_line(line)
