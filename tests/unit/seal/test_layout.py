"""Orthanc's storage layout: the pathlib and the string forms name the same file, and refuse the same."""

from __future__ import annotations

from pathlib import Path

import pytest

from orthanc_hardening.seal.layout import attachment_file, attachment_path

UUID = "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9"


@pytest.mark.parametrize("root", ["/var/lib/orthanc/db", "/var/lib/orthanc/db/", "/", "relative/db"])
def test_the_string_form_names_the_same_file(root):
    assert attachment_file(str(Path(root)), UUID) == str(attachment_path(Path(root), UUID))
    assert attachment_file(str(Path(root)), UUID).endswith("/0f/1e/" + UUID)


@pytest.mark.attack
@pytest.mark.parametrize("uuid", ["../../etc/passwd", UUID.upper(), UUID + "/x", "", "0f/1e"])
def test_both_forms_refuse_what_is_not_a_uuid(uuid):
    with pytest.raises(ValueError):
        attachment_path(Path("/db"), uuid)
    with pytest.raises(ValueError):
        attachment_file("/db", uuid)
