"""``docker-compose.yml`` and its Dockerfiles, checked without a Docker engine.

The Compose file is validated against the Compose specification's JSON schema (vendored in
``tests/data``, see ``compose_spec.README.md``); every bind-mounted path, build context and
Dockerfile must exist in the repository; every image is pinned to a version; the security
settings the deployment relies on are present.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
SCHEMA = REPO / "tests" / "data" / "compose_spec.json"
SCHEMA_SHA256 = "0dc04bd346dcfee1b1419628fff79937bbf076925f298f272a2b490e2b112bac"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(SCHEMA.read_text())
    return loaded


def _dockerfiles(compose: dict[str, Any]) -> list[Path]:
    found = []
    for service in compose["services"].values():
        build = service.get("build")
        if isinstance(build, dict):
            found.append(REPO / build.get("context", ".") / build.get("dockerfile", "Dockerfile"))
    return found


def _from_images(dockerfile: Path) -> list[str]:
    return [
        line.split()[1]
        for line in dockerfile.read_text().splitlines()
        if line.strip().upper().startswith("FROM ")
    ]


def _is_pinned(image: str) -> bool:
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    return bool(name) and "/" not in tag and tag not in ("latest", "") and bool(re.search(r"\d", tag))


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


def test_every_bind_mount_exists_in_the_repository(compose: dict[str, Any]) -> None:
    named = set(compose.get("volumes", {}))
    checked = 0
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume["source"] if isinstance(volume, dict) else volume.split(":", 1)[0]
            if source in named:
                continue
            assert source.startswith("./"), f"{name}: {source} is neither a named volume nor a repository path"
            assert (REPO / source).exists(), f"{name}: {source} does not exist"
            checked += 1
    assert checked >= 2  # orthanc.json and the PostgreSQL init script


def test_every_named_volume_used_is_declared(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes", {}))
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume["source"]
            if not source.startswith(("./", "/")):
                assert source in declared, f"{name}: volume {source} is not declared"


def test_every_build_context_and_dockerfile_exists(compose: dict[str, Any]) -> None:
    dockerfiles = _dockerfiles(compose)
    assert dockerfiles
    for dockerfile in dockerfiles:
        assert dockerfile.is_file(), f"{dockerfile} is missing"


def test_every_file_a_dockerfile_copies_exists(compose: dict[str, Any]) -> None:
    for dockerfile in _dockerfiles(compose):
        for line in dockerfile.read_text().splitlines():
            if line.startswith(("COPY ", "ADD ")) and "--from" not in line:
                *sources, _target = line.split()[1:]
                for source in sources:
                    assert (REPO / source).exists(), f"{dockerfile.name}: {source} does not exist"


def test_every_image_is_pinned_to_a_version(compose: dict[str, Any]) -> None:
    images = [s["image"] for s in compose["services"].values() if "image" in s and "build" not in s]
    for dockerfile in _dockerfiles(compose):
        images += _from_images(dockerfile)
    assert any(image.startswith("orthancteam/orthanc:") for image in images)
    for image in images:
        assert _is_pinned(image), f"{image} is not pinned to a version"


@pytest.mark.parametrize("image", ["postgres", "postgres:latest", "orthancteam/orthanc:latest", "debian:bookworm"])
def test_unpinned_images_are_recognised(image: str) -> None:
    assert not _is_pinned(image)


def test_orthanc_service_is_hardened(compose: dict[str, Any]) -> None:
    orthanc = compose["services"]["orthanc"]
    env = orthanc["environment"]
    assert env["ORTHANC__HARDENING__MODE"] == "enforce"
    # Orthanc's index in PostgreSQL, but never its storage: the files must go through the
    # plugin's sealed storage area.
    assert env["ORTHANC__POSTGRESQL__ENABLE_INDEX"] == "true"
    assert env["ORTHANC__POSTGRESQL__ENABLE_STORAGE"] == "false"
    assert env["ORTHANC__HARDENING__AUDIT__SYSLOG__TLS"] == "true"
    assert "./orthanc.json:/etc/orthanc/orthanc.json:ro" in orthanc["volumes"]
    assert "healthcheck" in orthanc
    assert orthanc["depends_on"]["init"]["condition"] == "service_completed_successfully"
    assert orthanc["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "pg_isready" in " ".join(compose["services"]["postgres"]["healthcheck"]["test"])


def test_no_password_is_written_in_the_compose_file(compose: dict[str, Any]) -> None:
    text = COMPOSE.read_text()
    assert "POSTGRES_PASSWORD: ${POSTGRES_PASSWORD:?" in text
    for value in compose["services"]["postgres"]["environment"].values():
        assert "password" not in str(value).lower() or str(value).startswith("${")


def test_mounted_orthanc_json_leaves_per_instance_keys_to_the_environment(compose: dict[str, Any]) -> None:
    # Orthanc refuses a key defined twice; orthanc.json must not carry what varies per instance.
    text = "\n".join(
        line for line in (REPO / "orthanc.json").read_text().splitlines() if not line.strip().startswith("//")
    )
    for key in ("HttpPort", "DicomPort", "DicomAet", "RegisteredUsers"):
        assert f'"{key}"' not in text
    env = compose["services"]["orthanc"]["environment"]
    assert {"ORTHANC__HTTP_PORT", "ORTHANC__DICOM_PORT", "ORTHANC__DICOM_AET"} <= set(env)
