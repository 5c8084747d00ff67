"""Orthanc with the plugin stops cleanly on every target, also when its start fails.

Orthanc 1.12.7 and 1.13.0 free the plugin's callbacks without Python's lock when they finalise
the Python plugin, and stop with plugin threads possibly still running: both used to turn every
stop into a segmentation fault (exit -11/139). The plugin pins every callable it registers and
stops and joins its threads first (``shell/orthanc_api.py``, ``Runtime.stop``).
"""

from __future__ import annotations

import socket
from typing import Any

from tests.support.dicom import make_series
from tests.support.server import DICOMWEB_PLUGIN, PYTHON_PLUGIN, OrthancServer


def test_sigterm_after_work_exits_zero(start_orthanc: Any) -> None:
    server: OrthancServer = start_orthanc(config={"Plugins": [PYTHON_PLUGIN, DICOMWEB_PLUGIN]})
    instance = server.upload(make_series(1, patient_id="EXIT-1")[0])
    assert server.get(f"/instances/{instance['ID']}/file").status_code == 200
    study = instance["ParentStudy"]
    assert server.get(f"/studies/{study}/archive").status_code == 200  # runs the plugin's archive thread
    assert server.post("/hardening/scrub", json={}).status_code == 200  # and the scrub thread
    server.stop()
    assert server.returncode == 0, server.log_tail()
    assert "Orthanc has stopped" in server.log_text()
    assert "Segmentation fault" not in server.log_text()


def test_failed_start_exits_without_crashing(start_orthanc: Any) -> None:
    # The HTTP port is taken: Orthanc gives up after the plugin (and its audit writer thread)
    # started, without an ORTHANC_STOPPED change.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server: OrthancServer = start_orthanc(config={"HttpPort": taken.getsockname()[1]}, expect_failure=True)
        code = server.wait_exit(timeout=60)
    assert code > 0, f"Orthanc ended with {code} (a signal) instead of an error exit:\n{server.log_tail()}"
    assert "orthanc-hardening started" in server.log_text()
