"""The start-up warning that DICOMweb under concurrent load can hang Orthanc before 1.12.2."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from orthanc_hardening.shell.plugin import dicomweb_plugins, warn_if_dicomweb_can_hang


def plugin_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "plugins"
    directory.mkdir()
    for name in ("libOrthancDicomWeb.so", "libOrthancPython.so"):
        (directory / name).write_bytes(b"")
    return directory


def test_dicomweb_plugin_is_found_in_a_plugin_directory_and_as_a_file(tmp_path: Path) -> None:
    directory = plugin_dir(tmp_path)
    assert dicomweb_plugins([str(directory)]) == [str(directory / "libOrthancDicomWeb.so")]
    assert dicomweb_plugins([str(directory / "libOrthancDicomWeb.so"), str(directory / "libOrthancPython.so")]) == [
        str(directory / "libOrthancDicomWeb.so")]
    assert dicomweb_plugins([str(tmp_path / "missing")]) == []


def test_warning_only_before_the_shared_plugin_context(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    config = {"Plugins": [str(plugin_dir(tmp_path))]}
    monkeypatch.setattr(logging.getLogger("orthanc_hardening"), "propagate", True)
    with caplog.at_level(logging.WARNING, logger="orthanc_hardening"):
        assert warn_if_dicomweb_can_hang(config, shared_plugin_context=False) is True
        assert warn_if_dicomweb_can_hang(config, shared_plugin_context=True) is False
        assert warn_if_dicomweb_can_hang({"Plugins": []}, shared_plugin_context=False) is False
        assert warn_if_dicomweb_can_hang({"Plugins": "not a list"}, shared_plugin_context=False) is False
    warnings = [r for r in caplog.records if "can hang Orthanc for good" in r.message]
    assert len(warnings) == 1 and "libOrthancDicomWeb.so" in warnings[0].message
