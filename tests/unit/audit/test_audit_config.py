"""The audit keys of the "Hardening" configuration section."""

from __future__ import annotations

import pytest

from orthanc_hardening.config import load_config
from orthanc_hardening.errors import ConfigError


def test_refuse_unattributed_reads_defaults_to_false() -> None:
    assert load_config({}).audit.refuse_unattributed_reads is False
    assert load_config({"Hardening": {"Audit": {"RefuseUnattributedReads": True}}}).audit.refuse_unattributed_reads


def test_refuse_unattributed_reads_must_be_a_boolean() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config({"Hardening": {"Audit": {"RefuseUnattributedReads": "yes"}}})
    assert caught.value.key == "Hardening.Audit.RefuseUnattributedReads"
