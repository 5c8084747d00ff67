"""The image's configuration rules as ``tests/support/orthanc_image.py`` restates them.

The static and end-to-end tests of the deployment trust this re-implementation, so each rule is
pinned here against the facts read in the image's builder repository (orthanc-server/
orthanc-builder, tag 26.8.1, ``docker/orthanc/``): the examples are the ones its code and
tables give, or follow from them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.support import orthanc_image as image
from tests.support.orthanc_image import ImageConfigError, ImageLayout, generate


def layout_with(tmp_path: Path, files: dict[str, str] | None = None, secrets: dict[str, str] | None = None,
                run_plugins: bool = False) -> ImageLayout:
    layout = ImageLayout(root=str(tmp_path))
    for folder, content in ((layout.config_dir, files or {}), (layout.secrets_dir, secrets or {})):
        layout.path(folder).mkdir(parents=True, exist_ok=True)
        for name, text in content.items():
            (layout.path(folder) / name).write_text(text)
    for folder in (layout.plugins_available, layout.plugins_dir):
        layout.path(folder).mkdir(parents=True, exist_ok=True)
    if run_plugins:
        layout.path(layout.run_plugins_dir).mkdir(parents=True)
    return layout


USERS = {"RegisteredUsers": {"admin": "x" * 20}}


@pytest.mark.parametrize(("name", "key"), [
    # helpers.py: "transforms QUERY_RETRIEVE_SIZE into QueryRetrieveSize".
    ("ORTHANC__DICOM_QUERY_RETRIEVE_SIZE", ("DicomQueryRetrieveSize",)),
    ("ORTHANC__HTTP_PORT", ("HttpPort",)),
    ("ORTHANC__DICOM_AET", ("DicomAet",)),
    ("ORTHANC__SSL_ENABLED", ("SslEnabled",)),
    ("ORTHANC__POSTGRESQL__ENABLE_INDEX", ("PostgreSQL", "EnableIndex")),
    ("ORTHANC__MYSQL__HOST", ("MySQL", "Host")),
    ("ORTHANC__HARDENING__AUDIT__SYSLOG__CA_CERTIFICATE", ("Hardening", "Audit", "Syslog", "CaCertificate")),
    # The conversion would give HttpsCaCertificates: the alias table fixes it.
    ("ORTHANC__HTTPS_CA_CERTIFICATES", ("HttpsCACertificates",)),
    ("ORTHANC__POSTGRESQL", ("PostgreSQL",)),
    # Legacy names map to the old keys (and are refused, see below).
    ("DICOM_PORT", ("DicomPort",)),
    ("PG_PASSWORD", ("PostgreSQL", "Password")),
])
def test_variable_names_map_to_keys(name: str, key: tuple[str, ...]) -> None:
    assert image.key_path(name) == key


def test_names_the_rule_cannot_convert_are_refused() -> None:
    with pytest.raises(ValueError, match="empty word"):
        image.key_path("ORTHANC__HTTP_PORT_")
    with pytest.raises(ValueError, match="not a configuration variable"):
        image.key_path("HARDENING_HOME")


def test_values_are_typed_by_json() -> None:
    assert image.typed("8443") == 8443
    assert image.typed("true") is True and image.typed("false") is False
    assert image.typed('["/usr/share/orthanc/plugins"]') == ["/usr/share/orthanc/plugins"]
    assert image.typed("20261201") == 20261201
    assert image.typed(" 12 ") == 12
    assert math.isnan(image.typed("NaN"))
    assert image.typed("null") is None
    assert image.typed("enforce") == "enforce"
    assert image.typed("0123") == "0123"  # not valid JSON: stays a string


def test_envsubst_forms(tmp_path: Path) -> None:
    env = {"HOME_DIR": "/h", "EMPTY": ""}
    assert image.envsubst("$HOME_DIR ${HOME_DIR} ${UNSET} $UNSET.", env) == "/h /h  ."
    assert image.envsubst("${EMPTY:-d} ${EMPTY-d} ${UNSET-d} ${UNSET:-$HOME_DIR}", env) == "d  d /h"
    assert image.envsubst(r"\$HOME_DIR $0 $1", env) == r"\$HOME_DIR generateConfiguration.py "


def test_a_dollar_in_a_configuration_file_is_substituted_even_in_a_password(tmp_path: Path) -> None:
    layout = layout_with(tmp_path, {"a.json": json.dumps({"RegisteredUsers": {"admin": "pa$w-rd-1234567"}})})
    assert generate({}, layout).config["RegisteredUsers"] == {"admin": "pa-rd-1234567"}


def test_comments_are_removed_outside_strings_only() -> None:
    text = '{"Url": "https://x/y", /* block */ "A": 1 // line\n}'
    assert json.loads(image.strip_comments(text)) == {"Url": "https://x/y", "A": 1}


def test_merge_objects_recursively_and_replace_other_values() -> None:
    base = {"A": {"B": 1, "C": [1]}, "D": "x"}
    image.merge(base, {"A": {"C": [2], "E": True}, "D": "y"})
    assert base == {"A": {"B": 1, "C": [2], "E": True}, "D": "y"}
    image.merge(base, {"D": "z", "F": 1}, overwrite=False)
    assert base["D"] == "y" and base["F"] == 1
    with pytest.raises(TypeError):
        image.merge(base, {"D": {"G": 1}})


def test_variables_merge_over_files_and_json_over_files(tmp_path: Path) -> None:
    layout = layout_with(tmp_path, {"orthanc.json": json.dumps({
        **USERS, "DicomModalities": {"M": {"AET": "M", "Host": "10.0.0.1", "Port": 104}}, "HttpPort": 1})})
    env = {"ORTHANC__HTTP_PORT": "8443", "ORTHANC__DICOM_MODALITIES": '{"M": {"Host": "10.0.0.2"}}',
           "ORTHANC_JSON": '{"PostgreSQL": {"Password": "20261201"}}'}
    config = generate(env, layout).config
    assert config["HttpPort"] == 8443
    assert config["DicomModalities"] == {"M": {"AET": "M", "Host": "10.0.0.2", "Port": 104}}
    assert config["PostgreSQL"]["Password"] == "20261201"
    assert config["PostgreSQL"]["EnableIndex"] is True  # the plugin's defaults fill in


def test_defaults_never_override(tmp_path: Path) -> None:
    layout = layout_with(tmp_path, {"orthanc.json": json.dumps({**USERS, "Plugins": ["/x"],
                                                                "StorageDirectory": "/s"})})
    config = generate({"ORTHANC__POSTGRESQL__ENABLE_STORAGE": "true"}, layout).config
    assert config["Plugins"] == ["/x"] and config["StorageDirectory"] == "/s"
    assert config["PostgreSQL"]["EnableStorage"] is True
    bare = generate({}, layout_with(tmp_path / "bare", {"o.json": json.dumps(USERS)})).config
    root = str(tmp_path / "bare")
    assert bare["Plugins"] == [root + "/run/orthanc/plugins", root + "/usr/share/orthanc/plugins"]
    assert bare["RemoteAccessAllowed"] is True and bare["AuthenticationEnabled"] is True


def test_which_plugins_are_enabled(tmp_path: Path) -> None:
    layout = layout_with(tmp_path, {"o.json": json.dumps(USERS)})
    assert generate({}, layout).enabled_plugins == ["Gdcm", "OrthancExplorer2"]  # on by default
    enabled = generate({"ORTHANC__PYTHON_SCRIPT": "/p.py", "DICOM_WEB_PLUGIN_ENABLED": "true",
                        "ORTHANC__POSTGRESQL__HOST": "db", "GDCM_PLUGIN_ENABLED": "false"}, layout).enabled_plugins
    assert enabled == ["DicomWeb", "PostgreSQL", "Python", "OrthancExplorer2"]
    # The web viewers share a section: only their variable enables them.
    assert "OrthancWebViewer" not in generate({"ORTHANC__WEB_VIEWER__X": "1"}, layout).enabled_plugins


def test_plugins_are_linked_into_run_orthanc_plugins_only_when_it_exists(tmp_path: Path) -> None:
    for run_plugins in (False, True):
        layout = layout_with(tmp_path / str(run_plugins), {"o.json": json.dumps(USERS)}, run_plugins=run_plugins)
        (layout.path(layout.plugins_available) / "libOrthancPython.so").write_bytes(b"so")
        result = generate({"PYTHON_PLUGIN_ENABLED": "true"}, layout, link=True)
        folder = layout.run_plugins_dir if run_plugins else layout.plugins_dir
        assert result.linked_libs == [layout.path(folder) / "libOrthancPython.so"]
        assert set(result.missing_libs) == {"libOrthancGdcm.so", "libOrthancExplorer2.so"}


def test_deprecated_names_stop_the_image(tmp_path: Path) -> None:
    layout = layout_with(tmp_path, {"o.json": json.dumps(USERS)})
    for env in ({"DICOM_PORT": "4242"}, {"DICOM_AET": "A"}, {"PG_ENABLED": "true"}, {"DW_ENABLED": "true"}):
        with pytest.raises(ImageConfigError) as raised:
            generate(env, layout)
        assert raised.value.status == image.EXIT_DEPRECATED == 254


def test_no_user_stops_the_image_and_orthanc_password_adds_one(tmp_path: Path) -> None:
    layout = layout_with(tmp_path, {"o.json": "{}"})
    with pytest.raises(ImageConfigError) as raised:
        generate({}, layout)
    assert raised.value.status == image.EXIT_NO_USER == 253
    assert generate({"ORTHANC_PASSWORD": "pw"}, layout).config["RegisteredUsers"] == {"orthanc": "pw"}
    with_users = layout_with(tmp_path / "u", {"o.json": json.dumps(USERS)})
    users = generate({"ORTHANC_PASSWORD": "orthanc"}, with_users).config["RegisteredUsers"]
    assert users == {"admin": "x" * 20, "orthanc": "orthanc"}


def test_bad_json_stops_the_image(tmp_path: Path) -> None:
    with pytest.raises(ImageConfigError) as raised:
        generate({"ORTHANC_JSON": "{not json"}, layout_with(tmp_path, {"o.json": json.dumps(USERS)}))
    assert raised.value.status == image.EXIT_ERRORS


def test_secrets_are_values_or_configuration_files(tmp_path: Path) -> None:
    layout = layout_with(tmp_path, {"o.json": "{}"}, secrets={
        "users.json": json.dumps(USERS),  # a *.json secret is a configuration file
        "ORTHANC__HTTP_PORT": "8443\n",  # a secret named like a variable is its value, typed
        "db": "20261201\n",  # named by a *_SECRET variable
    })
    config = generate({"ORTHANC__POSTGRESQL__PASSWORD_SECRET": "db"}, layout).config
    assert config["RegisteredUsers"] == USERS["RegisteredUsers"]
    assert config["HttpPort"] == 8443
    assert config["PostgreSQL"]["Password"] == 20261201  # typed: a number
