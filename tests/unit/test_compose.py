"""``docker-compose.yml`` and its Dockerfiles, checked without a Docker engine.

Two kinds of check. The Compose file against the Compose specification's JSON schema (vendored
in ``tests/data``, see ``compose_spec.README.md``), the repository paths it and the Dockerfiles
name, pinned images. And the deployment against how the images it uses really work, from
facts read in their sources (``tests/support/orthanc_image.py`` for orthancteam/orthanc, the
comments below for postgres and debian): a real image tag, ``ENTRYPOINT`` and ``CMD``, the
folder the image links plugins into, no deprecated variable, every ``ORTHANC__…`` variable
giving the key and JSON type Orthanc and the plugin expect, the configuration the image
generates from the mounted ``orthanc.json`` and the variables (including the generated secrets),
the health checks, the dependency step, the build context.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from packaging.requirements import Requirement
from psycopg.conninfo import conninfo_to_dict

from orthanc_hardening.config import load_config
from tests.support import orthanc_image
from tests.support.deployment import (
    COMPOSE,
    ORTHANC_DOCKERFILE,
    REPO,
    SYSLOG_DOCKERFILE,
    ContainerTree,
    Dockerfile,
    compose_interpolations,
    container_environment,
    script_path_defaults,
    service_dockerfile,
    service_environment,
    service_mounts,
)
from tests.support.deployment import compose as load_compose
from tests.support.docker_scripts import load

SCHEMA = REPO / "tests" / "data" / "compose_spec.json"
SCHEMA_SHA256 = "0dc04bd346dcfee1b1419628fff79937bbf076925f298f272a2b490e2b112bac"
LOCK = REPO / "docker" / "requirements.lock"

# orthancteam/orthanc tags and what they hold (the builder repository's git tags and
# release-notes-docker-images.md, August 2026). There is no 24.12.1.
IMAGE_TAGS = {
    "26.8.1": {"orthanc": "1.13.0", "python_plugin": "7.1", "python": "3.14", "base": "ubuntu 26.04"},
    "26.8.0": {"orthanc": "1.13.0", "python_plugin": "7.1", "python": "3.14", "base": "ubuntu 26.04"},
    "26.7.0": {"orthanc": "1.12.11", "python_plugin": "7.1", "python": "3.14", "base": "ubuntu 26.04"},
    "25.1.0": {"orthanc": "1.12.5", "python_plugin": "4.3", "python": "3.11", "base": "debian bookworm"},
    "24.12.0": {"orthanc": "1.12.5", "python_plugin": "4.3", "python": "3.11", "base": "debian bookworm"},
}
# The base image's own ENTRYPOINT and CMD (docker/orthanc/Dockerfile of the builder repository).
IMAGE_ENTRYPOINT = ["/docker-entrypoint.sh"]
IMAGE_CMD = ["/tmp/orthanc.json"]
# What the orthanc service's variables must give: key -> JSON type (Orthanc's documented
# configuration, the PostgreSQL plugin's, and the plugin's "Hardening" section).
EXPECTED_KEYS: dict[str, type | tuple[type, ...]] = {
    "HttpPort": int,
    "DicomPort": int,
    "DicomAet": str,
    "Plugins": list,
    "PythonScript": str,
    "DicomModalities": dict,
    "PostgreSQL.Host": str,
    "PostgreSQL.Port": int,
    "PostgreSQL.Database": str,
    "PostgreSQL.Username": str,
    "PostgreSQL.EnableIndex": bool,
    "PostgreSQL.EnableStorage": bool,
    "PostgreSQL.Lock": bool,
    "PostgreSQL.MaximumConnectionRetries": int,
    "PostgreSQL.ConnectionRetryInterval": int,
    "DatabaseServerIdentifier": str,
    "Hardening.Mode": str,
    "Hardening.Audit.Syslog.Host": str,
    "Hardening.Audit.Syslog.Port": int,
    "Hardening.Audit.Syslog.Tls": bool,
    "Hardening.Audit.Syslog.CaCertificate": str,
    "Hardening.Audit.Syslog.Certificate": str,
    "Hardening.Audit.Syslog.PrivateKey": str,
}
# A password the image would make a JSON number if it went through an ORTHANC__ variable.
NUMERIC_PASSWORD = "20261201093000123456"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = compose["services"]
    return found


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(SCHEMA.read_text())
    return loaded


@pytest.fixture(scope="module")
def orthanc_dockerfile() -> Dockerfile:
    return Dockerfile(ORTHANC_DOCKERFILE)


def _dockerfiles(compose: dict[str, Any]) -> list[Dockerfile]:
    return [d for s in compose["services"].values() if (d := service_dockerfile(s)) is not None]


def _is_pinned(image: str) -> bool:
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    return bool(name) and "/" not in tag and tag not in ("latest", "") and bool(re.search(r"\d", tag))


def _orthanc_services(services: dict[str, Any]) -> list[str]:
    return [n for n, s in services.items() if (d := service_dockerfile(s)) and d.path == ORTHANC_DOCKERFILE]


# -- the Compose file as a file ---------------------------------------------------------------


def test_vendored_schema_is_the_unchanged_upstream_file() -> None:
    assert hashlib.sha256(SCHEMA.read_bytes()).hexdigest() == SCHEMA_SHA256


def test_compose_file_is_valid_against_the_compose_specification(compose: dict[str, Any], schema: dict) -> None:
    validator = jsonschema.Draft201909Validator(schema)
    errors = sorted(validator.iter_errors(compose), key=lambda error: list(error.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_schema_catches_a_broken_compose_file(compose: dict[str, Any], schema: dict) -> None:
    # The validation above would be worthless if the schema accepted anything.
    broken = json.loads(json.dumps(compose))
    broken["services"]["orthanc"]["healthcheck"]["interval"] = 30
    broken["services"]["orthanc"]["no_such_key"] = True
    validator = jsonschema.Draft201909Validator(schema)
    assert len(list(validator.iter_errors(broken))) >= 2


def test_every_bind_mount_exists_in_the_repository(services: dict[str, Any]) -> None:
    checked = 0
    for name, service in services.items():
        for mount in service_mounts(service):
            if mount.is_bind:
                assert mount.source.startswith("./"), f"{name}: {mount.source} is outside the repository"
                assert (REPO / mount.source).exists(), f"{name}: {mount.source} does not exist"
                assert mount.read_only, f"{name}: {mount.source} is mounted writable"
                checked += 1
    assert checked >= 2  # orthanc.json and the PostgreSQL init script


def test_every_named_volume_used_is_declared(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes", {}))
    for name, service in compose["services"].items():
        for mount in service_mounts(service):
            if not mount.is_bind:
                assert mount.source in declared, f"{name}: volume {mount.source} is not declared"


def test_every_build_context_dockerfile_and_copied_file_exists(compose: dict[str, Any]) -> None:
    dockerfiles = _dockerfiles(compose)
    assert {d.path for d in dockerfiles} == {ORTHANC_DOCKERFILE, SYSLOG_DOCKERFILE}
    for dockerfile in dockerfiles:
        for sources, _destination in dockerfile.copies:
            for source in sources:
                assert (REPO / source).exists(), f"{dockerfile.path.name}: {source} does not exist"


def test_every_image_is_pinned_to_a_version(compose: dict[str, Any]) -> None:
    images = [s["image"] for s in compose["services"].values() if "image" in s and "build" not in s]
    images += [d.base_image for d in _dockerfiles(compose)]
    assert any(image.startswith("orthancteam/orthanc:") for image in images)
    for image in images:
        assert _is_pinned(image), f"{image} is not pinned to a version"


@pytest.mark.parametrize("image", ["postgres", "postgres:latest", "orthancteam/orthanc:latest", "debian:bookworm"])
def test_unpinned_images_are_recognised(image: str) -> None:
    assert not _is_pinned(image)


def test_no_secret_is_written_in_the_compose_file(services: dict[str, Any]) -> None:
    # Nothing to set on the host: the init service generates every secret, in volumes.
    assert compose_interpolations(COMPOSE.read_text()) == []
    for name, service in services.items():
        for variable, value in service_environment(service).items():
            if re.search(r"PASSWORD|PASSPHRASE|SECRET|TOKEN", variable):
                assert variable.endswith("_FILE") and value.startswith("/"), f"{name}: {variable} holds a secret"
            assert not re.search(r"://[^/@]*:[^/@]*@", value), f"{name}: {variable} carries a password in a URL"


# -- the orthancteam/orthanc image: tag, entry point, plugins, variables ----------------------


def test_orthanc_image_is_a_real_current_tag(orthanc_dockerfile: Dockerfile) -> None:
    name, _, tag = orthanc_dockerfile.base_image.partition(":")
    assert name == "orthancteam/orthanc"
    assert tag in IMAGE_TAGS, f"{tag} is not an orthancteam/orthanc tag (known: {', '.join(IMAGE_TAGS)})"
    # The forky target tests exactly what this tag runs.
    assert IMAGE_TAGS[tag]["orthanc"] == "1.13.0" and IMAGE_TAGS[tag]["python_plugin"] == "7.1"


def test_entrypoint_keeps_the_single_argument_the_image_entry_point_needs(
    orthanc_dockerfile: Dockerfile, services: dict[str, Any]
) -> None:
    entrypoint = orthanc_dockerfile.exec_form("ENTRYPOINT")
    assert entrypoint == ["/usr/share/orthanc-hardening/docker/entrypoint.sh"]
    # Setting ENTRYPOINT drops the base image's CMD: it must be written again, after it.
    assert orthanc_dockerfile.cmd_after_entrypoint() == IMAGE_CMD
    for name in _orthanc_services(services):
        if name == "init":
            continue
        assert "command" not in services[name] and "entrypoint" not in services[name], name
    script = (REPO / "docker" / "entrypoint.sh").read_text()
    assert '"${HARDENING_IMAGE_ENTRYPOINT:-/docker-entrypoint.sh}"' in script
    assert script.rstrip().endswith('exec "$image_entrypoint" "$@"')
    assert IMAGE_ENTRYPOINT == ["/docker-entrypoint.sh"]


def test_plugins_setting_names_the_folder_the_image_links_into(
    orthanc_dockerfile: Dockerfile, services: dict[str, Any]
) -> None:
    layout = orthanc_image.ImageLayout()
    # The image links into /run/orthanc/plugins only when that folder exists: neither the
    # Dockerfile nor the Compose file creates it.
    assert layout.run_plugins_dir not in ORTHANC_DOCKERFILE.read_text()
    assert all(m.target != layout.run_plugins_dir for m in service_mounts(services["orthanc"]))
    plugins = orthanc_image.typed(container_environment(services["orthanc"])["ORTHANC__PLUGINS"])
    assert plugins == [layout.plugins_dir]


def test_no_variable_the_image_refuses_or_reads_as_a_secret(services: dict[str, Any]) -> None:
    exported = set(re.findall(r"^\s*export\s+([A-Z_][A-Z0-9_]*)", (REPO / "docker" / "entrypoint.sh").read_text(),
                              re.M))
    assert exported == {"ORTHANC_JSON", "HARDENING_KEY_PASSPHRASE"}
    for name in _orthanc_services(services):
        names = set(container_environment(services[name])) | exported
        deprecated = names & orthanc_image.DEPRECATED_NAMES
        assert not deprecated, f"{name}: the image (26.7.0 and later) refuses to start with {sorted(deprecated)}"
        assert not [n for n in names if n.endswith("_SECRET")], f"{name}: *_SECRET names a file in /run/secrets"
    for mount in service_mounts(services["orthanc"]):
        # /run/secrets/*.json would be read as configuration files, ORTHANC__* files as values.
        assert not mount.target.startswith("/run/secrets"), mount


def test_every_orthanc_variable_gives_the_expected_key_and_type(services: dict[str, Any]) -> None:
    env = container_environment(services["orthanc"])
    keys = orthanc_image.variables_setting(env)
    assert set(keys.values()) == set(EXPECTED_KEYS), "a variable was added or removed: update EXPECTED_KEYS"
    for variable, key in keys.items():
        value = orthanc_image.typed(env[variable])
        expected = EXPECTED_KEYS[key]
        assert isinstance(value, expected) and not (expected is int and isinstance(value, bool)), (variable, value)
    assert orthanc_image.typed(env["ORTHANC__POSTGRESQL__ENABLE_STORAGE"]) is False
    assert orthanc_image.typed(env["ORTHANC__POSTGRESQL__ENABLE_INDEX"]) is True
    assert orthanc_image.typed(env["ORTHANC__HARDENING__AUDIT__SYSLOG__TLS"]) is True


def test_a_number_like_password_in_an_orthanc_variable_would_not_stay_a_string() -> None:
    # Why the secrets go through ORTHANC_JSON: these would reach Orthanc as numbers or booleans.
    assert orthanc_image.typed(NUMERIC_PASSWORD) == int(NUMERIC_PASSWORD)
    assert orthanc_image.typed("1e5") == 100000.0
    assert math.isnan(orthanc_image.typed("NaN"))
    assert orthanc_image.typed("true") is True
    assert orthanc_image.typed(json.dumps({"Password": NUMERIC_PASSWORD})) == {"Password": NUMERIC_PASSWORD}


# -- the configuration the image generates for the orthanc service ----------------------------


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory, services: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The orthanc service's configuration, generated by the image's rules from what Compose gives it.

    The container's tree holds the mounted orthanc.json; the init service's outputs are stand-ins
    (accounts, a number-like PostgreSQL password); docker/instance_config.py makes ORTHANC_JSON
    from them, as docker/entrypoint.sh does.
    """
    tree = ContainerTree(tmp_path_factory.mktemp("orthanc-tree"), tmp_path_factory.mktemp("volumes"))
    tree.mount(service_mounts(services["orthanc"]))
    home = tree.volumes / "hardening-home"
    (home / "credentials.json").write_text(json.dumps({"admin": "a" * 24, "auditor": "b" * 24, "user": "c" * 24}))
    (tree.volumes / "db-secret" / "password").write_text(NUMERIC_PASSWORD)
    env = container_environment(services["orthanc"])
    instance_config = load("instance_config")
    document = json.dumps(instance_config.instance_config(
        instance_config.read_credentials(home / "credentials.json"),
        instance_config.read_password(tree.volumes / "db-secret" / "password"),
        env["HARDENING_AUDIT_DATABASE"],
        env["HARDENING_DATABASE"],
    ))
    env["ORTHANC_JSON"] = document
    result = orthanc_image.generate(env, orthanc_image.ImageLayout(root=str(tree.root)))
    yield {"config": result.config, "plugins": result.enabled_plugins, "env": env, "tree": tree}


def test_generated_configuration_keeps_the_hardened_settings_of_orthanc_json(generated: dict[str, Any]) -> None:
    config = generated["config"]
    mounted = json.loads(orthanc_image.strip_comments((REPO / "orthanc.json").read_text()))
    for key in ("SslEnabled", "AuthenticationEnabled", "DicomTlsEnabled", "DicomTlsRemoteCertificateRequired",
                "MaximumStorageCacheSize", "ExecuteLuaEnabled", "RestApiWriteToFileSystemEnabled", "WebDavEnabled"):
        assert config[key] == mounted[key], key
    assert config["MaximumStorageCacheSize"] == 0
    assert config["HttpPort"] == 8443 and config["DicomPort"] == 4242 and config["DicomAet"] == "HARDENED"
    # The image starts Orthanc in /startup: the script path must not be relative.
    assert config["PythonScript"] == "/usr/share/orthanc-hardening/plugin/hardening.py"
    assert config["StorageDirectory"] == "/var/lib/orthanc-hardening/storage"  # ${HARDENING_HOME} substituted


def test_every_variable_in_orthanc_json_is_set_for_envsubst(generated: dict[str, Any]) -> None:
    # The image runs envsubst on the file: an unset variable becomes "" without a warning.
    names = set(re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", (REPO / "orthanc.json").read_text()))
    assert names and names <= set(generated["env"]), names - set(generated["env"])


def test_generated_configuration_has_orthanc_explorer_2_with_the_audit_trail_buttons(generated: dict[str, Any]) -> None:
    config = generated["config"]
    mounted = json.loads(orthanc_image.strip_comments((REPO / "orthanc.json").read_text()))
    assert "OrthancExplorer2" in generated["plugins"]
    explorer = config["OrthancExplorer2"]
    assert explorer["UiOptions"]["CustomButtons"] == mounted["OrthancExplorer2"]["UiOptions"]["CustomButtons"]
    assert explorer["Enable"] is True and explorer["IsDefaultOrthancUI"] is True
    urls = [b["Url"] for group in explorer["UiOptions"]["CustomButtons"].values() for b in group]
    assert urls == ["/hardening/ui/?study={UUID}", "/hardening/ui/?series={UUID}"]


def test_generated_configuration_enables_python_postgresql_and_dicomweb(generated: dict[str, Any]) -> None:
    assert {"Python", "PostgreSQL", "DicomWeb", "OrthancExplorer2"} <= set(generated["plugins"])
    postgres = generated["config"]["PostgreSQL"]
    assert postgres["EnableIndex"] is True and postgres["EnableStorage"] is False
    assert postgres["Host"] == "postgres" and postgres["Port"] == 5432 and postgres["Username"] == "orthanc"
    # The number-like password stays a string: it went through ORTHANC_JSON.
    assert postgres["Password"] == NUMERIC_PASSWORD


def test_generated_accounts_and_development_modality(generated: dict[str, Any]) -> None:
    config = generated["config"]
    assert config["RegisteredUsers"] == {"admin": "a" * 24, "auditor": "b" * 24, "user": "c" * 24}
    mounted = json.loads(orthanc_image.strip_comments((REPO / "orthanc.json").read_text()))
    expected = {**mounted["DicomModalities"]["DEVSCU"], "Host": "172.29.60.1"}
    assert config["DicomModalities"] == {"DEVSCU": expected}


def test_generated_audit_database_url_carries_the_password_percent_encoded(generated: dict[str, Any]) -> None:
    url = generated["config"]["Hardening"]["Audit"]["Database"]
    parsed = conninfo_to_dict(url)
    assert parsed == {"user": "orthanc", "password": NUMERIC_PASSWORD, "host": "postgres", "port": "5432",
                      "dbname": "hardening_audit"}
    # The plugin's store (Hardening.Database) in the same database, with the same password.
    assert conninfo_to_dict(generated["config"]["Hardening"]["Database"]) == parsed


def test_generated_hardening_section_is_accepted_by_the_plugin(generated: dict[str, Any], tmp_path: Path) -> None:
    config = json.loads(json.dumps(generated["config"]))
    syslog = config["Hardening"]["Audit"]["Syslog"]
    # The plugin checks that these files exist; only their paths are the container's.
    for key in ("CaCertificate", "Certificate", "PrivateKey"):
        assert syslog[key].startswith("/var/lib/orthanc-hardening/tls/")
        stand_in = tmp_path / Path(syslog[key]).name
        stand_in.write_text("x")
        syslog[key] = str(stand_in)
    parsed = load_config(config)
    assert parsed.is_enforcing
    assert parsed.audit.syslog is not None and parsed.audit.syslog.host == "syslog" and parsed.audit.syslog.port == 6514
    assert parsed.audit.database.startswith("postgresql://orthanc:")
    assert str(parsed.data_directory) == "/var/lib/orthanc-hardening/hardening"


def test_no_key_is_set_in_two_places(generated: dict[str, Any], services: dict[str, Any]) -> None:
    # The image's result would depend on the environment's order.
    generated_keys = set()
    for top, value in json.loads(generated["env"]["ORTHANC_JSON"]).items():
        stack = [(top, value)]
        while stack:
            key, item = stack.pop()
            if isinstance(item, dict):
                stack += [(f"{key}.{k}", v) for k, v in item.items()]
            else:
                generated_keys.add(key)
    from_variables = set(orthanc_image.variables_setting(container_environment(services["orthanc"])).values())
    assert not generated_keys & from_variables
    keys = list(orthanc_image.variables_setting(container_environment(services["orthanc"])).values())
    assert len(keys) == len(set(keys))


# -- the other services against their images -------------------------------------------------


def test_postgres_service_matches_the_postgres_image(services: dict[str, Any]) -> None:
    postgres = services["postgres"]
    image, _, tag = postgres["image"].partition(":")
    assert image == "postgres" and int(tag.split(".")[0]) >= 18
    mounts = {m.target: m for m in service_mounts(postgres)}
    # From PostgreSQL 18 the image keeps the cluster in /var/lib/postgresql/18/docker and its
    # entry point refuses a volume at /var/lib/postgresql/data.
    assert mounts["/var/lib/postgresql"].source == "postgres-data"
    assert "/var/lib/postgresql/data" not in mounts
    env = service_environment(postgres)
    assert "POSTGRES_PASSWORD" not in env
    password_file = env["POSTGRES_PASSWORD_FILE"]
    secret = next(m for m in mounts.values() if password_file.startswith(m.target + "/"))
    assert secret.source == "db-secret" and secret.read_only
    # The same file, at the same place, in the orthanc and init services (the scripts' default).
    defaults = script_path_defaults([REPO / "docker" / "entrypoint.sh", REPO / "docker" / "init.sh"])
    assert defaults["HARDENING_DB_PASSWORD_FILE"] == password_file
    for name in ("init", "orthanc"):
        assert any(m.source == "db-secret" and m.target == secret.target for m in service_mounts(services[name]))
    init_sql = mounts["/docker-entrypoint-initdb.d/10-audit.sql"]
    audit_database = re.search(r"CREATE DATABASE (\w+) OWNER (\w+)", (REPO / init_sql.source).read_text())
    assert audit_database is not None
    orthanc = service_environment(services["orthanc"])
    url = conninfo_to_dict(orthanc["HARDENING_AUDIT_DATABASE"])
    assert url == {"user": env["POSTGRES_USER"], "host": "postgres", "port": "5432", "dbname": audit_database[1]}
    assert audit_database[2] == env["POSTGRES_USER"] == orthanc["ORTHANC__POSTGRESQL__USERNAME"]
    assert orthanc["ORTHANC__POSTGRESQL__DATABASE"] == env["POSTGRES_DB"]
    assert orthanc["ORTHANC__POSTGRESQL__HOST"] == "postgres"
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])


def test_syslog_settings_match_the_collector(services: dict[str, Any]) -> None:
    orthanc = service_environment(services["orthanc"])
    conf = (REPO / "docker" / "syslog" / "rsyslog.conf").read_text()
    assert orthanc["ORTHANC__HARDENING__AUDIT__SYSLOG__HOST"] == "syslog" == service_environment(
        services["init"])["SYSLOG_HOSTNAME"]
    assert f'port="{orthanc["ORTHANC__HARDENING__AUDIT__SYSLOG__PORT"]}"' in conf
    assert orthanc["ORTHANC__HARDENING__AUDIT__SYSLOG__TLS"] == "true"
    assert 'streamDriver.authMode="x509/certvalid"' in conf and 'maxMessageSize="64k"' in conf
    assert re.search(r'input\(type="imtcp"[^)]*ruleset="atna"', conf)
    # The collector's TLS files are the syslog-tls volume, the only one of the deployment it mounts.
    tls = next(m for m in service_mounts(services["syslog"]) if m.source == "syslog-tls")
    assert tls.read_only
    assert {m.source for m in service_mounts(services["syslog"])} == {"syslog-tls", "audit-log"}
    for name in ("ca.pem", "server.crt", "server.key"):
        assert f'"{tls.target}/{name}"' in conf
    init_tls = next(m for m in service_mounts(services["init"]) if m.source == "syslog-tls")
    assert script_path_defaults([REPO / "docker" / "init.sh"])["HARDENING_SYSLOG_TLS_DIR"] == init_tls.target
    # Orthanc's client certificate is devsetup's, in the hardening-home volume.
    home = next(m for m in service_mounts(services["orthanc"]) if m.source == "hardening-home").target
    for key, name in (("CA_CERTIFICATE", "ca.pem"), ("CERTIFICATE", "client.pem"), ("PRIVATE_KEY", "client.key")):
        assert orthanc[f"ORTHANC__HARDENING__AUDIT__SYSLOG__{key}"] == f"{home}/tls/{name}"


def test_script_defaults_are_the_paths_of_the_deployment(orthanc_dockerfile: Dockerfile,
                                                         services: dict[str, Any]) -> None:
    scripts = [*sorted((REPO / "docker").glob("*.sh")), *sorted((REPO / "docker").glob("*.py"))]
    defaults = script_path_defaults(scripts)
    assert defaults["HARDENING_HOME"] == orthanc_dockerfile.env["HARDENING_HOME"]
    assert defaults["HARDENING_SITE_PACKAGES"] == orthanc_dockerfile.env["HARDENING_SITE_PACKAGES"]
    assert defaults["HARDENING_GENERATED_CONFIG"] == IMAGE_CMD[0]
    assert defaults["HARDENING_IMAGE_ENTRYPOINT"] == IMAGE_ENTRYPOINT[0]
    for name in ("init", "orthanc"):
        assert any(m.source == "hardening-home" and m.target == defaults["HARDENING_HOME"]
                   for m in service_mounts(services[name]))


def test_networks_keep_postgresql_and_the_collector_internal(compose: dict[str, Any], services: dict[str, Any]) -> None:
    assert compose["networks"]["backend"]["internal"] is True
    assert services["postgres"]["networks"] == ["backend"] and services["syslog"]["networks"] == ["backend"]
    assert "ports" not in services["postgres"] and "ports" not in services["syslog"]
    assert services["init"]["network_mode"] == "none"
    assert sorted(services["orthanc"]["networks"]) == ["backend", "frontend"]
    gateway = compose["networks"]["frontend"]["ipam"]["config"][0]["gateway"]
    modalities = orthanc_image.typed(service_environment(services["orthanc"])["ORTHANC__DICOM_MODALITIES"])
    assert modalities == {"DEVSCU": {"Host": gateway}}
    depends = services["orthanc"]["depends_on"]
    assert depends["init"]["condition"] == "service_completed_successfully"
    assert depends["postgres"]["condition"] == "service_healthy" and depends["syslog"]["condition"] == "service_healthy"


def test_health_checks_use_only_what_the_images_have(orthanc_dockerfile: Dockerfile,
                                                     services: dict[str, Any]) -> None:
    healthcheck = orthanc_dockerfile.last("HEALTHCHECK")
    assert healthcheck is not None
    command = json.loads(healthcheck.arguments[healthcheck.arguments.index("CMD") + 3:].strip())
    # The image has python3 (no curl): the script uses the standard library only.
    assert command == services["orthanc"]["healthcheck"]["test"][1:] == [
        "python3", "/usr/share/orthanc-hardening/docker/healthcheck.py"]
    assert any(d == "/usr/share/orthanc-hardening/docker/" and "docker/healthcheck.py" in s
               for s, d in orthanc_dockerfile.copies)
    imports = set(re.findall(r"^(?:import|from) (\w+)", (REPO / "docker" / "healthcheck.py").read_text(), re.M))
    assert imports <= set(sys.stdlib_module_names) | {"__future__"}, imports
    syslog = Dockerfile(SYSLOG_DOCKERFILE)
    check = syslog.last("HEALTHCHECK")
    assert check is not None and check.arguments.endswith('CMD ["/usr/local/bin/syslog-healthcheck"]')
    assert (["docker/syslog/healthcheck.sh"], "/usr/local/bin/syslog-healthcheck") in syslog.copies
    # debian:*-slim has bash and grep, not pgrep, ps, pidof, openssl or curl.
    script = (REPO / "docker" / "syslog" / "healthcheck.sh").read_text()
    for tool in ("pgrep", "pidof", "ps ", "openssl", "curl", "nc "):
        assert tool not in script.split("\n", 6)[-1], tool
    assert "healthcheck" not in services["syslog"]
    assert syslog.base_image == "debian:13.6-slim"


def test_python_dependencies_are_hash_pinned_wheels_for_their_own_folder(orthanc_dockerfile: Dockerfile) -> None:
    run = " ".join(i.arguments for i in orthanc_dockerfile.all("RUN"))
    assert "install-python-deps.sh /usr/share/orthanc-hardening/build/requirements.lock " \
           f"{orthanc_dockerfile.env['HARDENING_SITE_PACKAGES']}" in re.sub(r"\s+", " ", run)
    script = (REPO / "docker" / "install-python-deps.sh").read_text()
    for option in ("--only-binary=:all:", "--require-hashes", '--target "$target"', "--no-cache-dir"):
        assert option in script, option
    # PEP 668: the image's Python is left alone, not forced.
    assert "--break-system-packages" not in script and "--break-system-packages" not in run
    for dockerfile in (orthanc_dockerfile, Dockerfile(SYSLOG_DOCKERFILE)):
        for instruction in dockerfile.all("RUN"):
            if "apt-get install" in instruction.arguments:
                assert "--no-install-recommends" in instruction.arguments


def test_lock_file_pins_every_runtime_requirement_with_hashes() -> None:
    text = LOCK.read_text()
    entries = re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)((?:\s*\\\s*--hash=sha256:[0-9a-f]{64})+)", text, re.M)
    pinned = {re.sub(r"[-_.]+", "-", name).lower(): version for name, version, _ in entries}
    assert len(entries) == len(re.findall(r"^[A-Za-z0-9]", text, re.M)), "an entry without a hash"
    for line in (REPO / "requirements.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        requirement = Requirement(line)
        name = re.sub(r"[-_.]+", "-", requirement.name).lower()
        assert name in pinned, f"{requirement.name} is not in docker/requirements.lock"
        assert requirement.specifier.contains(pinned[name]), (requirement, pinned[name])
        for extra in requirement.extras:
            assert pinned[f"{name}-{extra}"] == pinned[name], f"{name}[{extra}]"


def _ignored(patterns: list[str], path: str) -> bool:
    # .dockerignore: the last matching pattern decides; "!" re-includes; a directory pattern
    # covers what is below it.
    result = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.removeprefix("!").rstrip("/")
        regex = fnmatch.translate(pattern).replace(".*", "[^/]*").replace("[^/]*[^/]*", ".*")
        parts = path.split("/")
        if any(re.fullmatch(regex, "/".join(parts[: i + 1])) for i in range(len(parts))) or \
                (pattern.startswith("**/") and any(fnmatch.fnmatch(p, pattern[3:]) for p in parts)):
            result = not negated
    return result


@pytest.mark.parametrize("dockerfile", [ORTHANC_DOCKERFILE, SYSLOG_DOCKERFILE], ids=lambda p: p.parent.name)
def test_build_context_sends_what_is_copied_and_no_development_secret(dockerfile: Path) -> None:
    ignore = dockerfile.with_name(dockerfile.name + ".dockerignore")
    patterns = [line.strip() for line in ignore.read_text().splitlines() if line.strip() and not line.startswith("#")]
    for sources, _destination in Dockerfile(dockerfile).copies:
        for source in sources:
            files = [p for p in (REPO / source).rglob("*") if p.is_file()] if (REPO / source).is_dir() else \
                [REPO / source]
            for file in files:
                relative = file.relative_to(REPO).as_posix()
                if "__pycache__" not in relative:
                    assert not _ignored(patterns, relative), f"{relative} is copied but left out of the context"
    for secret in ("var/credentials.json", "var/keys/seal-key.pem", ".venv/bin/python", ".git/config",
                   "build/libssl-shim/libssl.so", "plugin/orthanc_hardening/__pycache__/x.pyc"):
        assert _ignored(patterns, secret), secret
