"""The two Orthanc nodes of ``docker-compose.yml``: what they share, and what each keeps its own.

Nodes of one archive share Orthanc's index (PostgreSQL, unlocked), the files (one storage
volume), the plugin's store (``Hardening.Database``) and the trust (taken from node 1's home);
each keeps its home (server certificate and key, witness file, ``DataDirectory`` with its spool
and SQLite caches), its published ports and its ``DatabaseServerIdentifier``. Checked without
a Docker engine; the forky test (tests/integration/test_docker_deployment.py) runs both.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.support.deployment import REPO, Mount, compose, container_environment, service_mounts
from tests.support.orthanc_image import lookup, strip_comments

NODES = ("orthanc", "orthanc-2")
# What differs between the nodes' environments, and nothing else.
PER_NODE_VARIABLES = {"ORTHANC__DATABASE_SERVER_IDENTIFIER", "HARDENING_JOIN"}


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    found: dict[str, Any] = compose()["services"]
    return found


@pytest.fixture(scope="module")
def orthanc_json() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(strip_comments((REPO / "orthanc.json").read_text()))
    return loaded


def volume_at(service: dict[str, Any], path: str) -> Mount:
    """The mount that holds container ``path`` (the deepest one whose target contains it)."""
    holding = [m for m in service_mounts(service) if path == m.target or path.startswith(m.target.rstrip("/") + "/")]
    assert holding, f"{path} is on no mount"
    return max(holding, key=lambda m: len(m.target))


def container_path(env: dict[str, str], value: str) -> str:
    return value.replace("${HARDENING_HOME}", env["HARDENING_HOME"])


def test_the_second_node_runs_the_first_ones_image_and_configuration(services: dict[str, Any]) -> None:
    first, second = services["orthanc"], services["orthanc-2"]
    assert second["image"] == first["image"] and second["build"] == first["build"]
    assert second["healthcheck"] == first["healthcheck"]
    assert first["restart"] == second["restart"] == "unless-stopped"
    env1, env2 = (container_environment(services[name]) for name in NODES)
    differing = {name for name in env1.keys() | env2.keys() if env1.get(name) != env2.get(name)}
    assert differing == PER_NODE_VARIABLES
    assert {m.target: m.source for m in service_mounts(first)}.get("/etc/orthanc/orthanc.json") == \
        {m.target: m.source for m in service_mounts(second)}.get("/etc/orthanc/orthanc.json")


def test_each_node_has_its_own_identity_among_the_index_servers(services: dict[str, Any]) -> None:
    identifiers = [container_environment(services[name])["ORTHANC__DATABASE_SERVER_IDENTIFIER"] for name in NODES]
    assert len(set(identifiers)) == len(NODES) and all(identifiers)


def test_both_nodes_share_one_unlocked_postgresql_index_without_its_storage(services: dict[str, Any]) -> None:
    for name in NODES:
        env = container_environment(services[name])
        assert env["ORTHANC__POSTGRESQL__LOCK"] == "false", name  # a locked index admits one Orthanc
        assert env["ORTHANC__POSTGRESQL__ENABLE_INDEX"] == "true"
        assert env["ORTHANC__POSTGRESQL__ENABLE_STORAGE"] == "false"  # would bypass the seals
        assert (env["ORTHANC__POSTGRESQL__HOST"], env["ORTHANC__POSTGRESQL__DATABASE"]) == ("postgres", "orthanc")


def test_both_nodes_keep_the_plugins_store_in_the_database_postgresql_creates(services: dict[str, Any]) -> None:
    created = re.findall(r"CREATE DATABASE (\w+)", (REPO / "docker" / "postgres" / "init-audit.sql").read_text())
    urls = {container_environment(services[name])["HARDENING_DATABASE"] for name in NODES}
    audit = {container_environment(services[name])["HARDENING_AUDIT_DATABASE"] for name in NODES}
    assert len(urls) == 1 and urls == audit  # one store and one chain for the archive
    assert next(iter(urls)).rsplit("/", 1)[1] in created


def test_the_files_are_shared_and_each_home_is_its_own(services: dict[str, Any], orthanc_json: dict[str, Any]) -> None:
    storage, homes, data, witnesses, server_keys = set(), set(), set(), set(), set()
    for name in NODES:
        service, env = services[name], container_environment(services[name])
        storage.add(volume_at(service, container_path(env, orthanc_json["StorageDirectory"])).source)
        homes.add(volume_at(service, env["HARDENING_HOME"]).source)
        data.add(volume_at(service, container_path(env, lookup(orthanc_json, "Hardening.DataDirectory"))).source)
        witnesses.add(volume_at(service, container_path(
            env, lookup(orthanc_json, "Hardening.Audit.WitnessFile"))).source)
        server_keys.add(volume_at(service, container_path(env, orthanc_json["SslCertificate"])).source)
        assert not volume_at(service, container_path(env, orthanc_json["StorageDirectory"])).read_only
    assert storage == {"orthanc-storage"}
    assert len(homes) == len(NODES) and homes == data == witnesses == server_keys
    assert not storage & homes


def test_the_second_node_joins_the_first_read_only(services: dict[str, Any]) -> None:
    second = services["orthanc-2"]
    join = container_environment(second)["HARDENING_JOIN"]
    mount = volume_at(second, join)
    assert mount.target == join and mount.read_only
    assert mount.source == volume_at(services["orthanc"], container_environment(services["orthanc"])[
        "HARDENING_HOME"]).source
    assert "HARDENING_JOIN" not in container_environment(services["orthanc"])
    # It joins a running node: node 1 started (its key registry exists) and is healthy.
    assert second["depends_on"]["orthanc"] == {"condition": "service_healthy"}
    assert second["depends_on"]["init"] == services["orthanc"]["depends_on"]["init"]


def test_the_nodes_publish_different_host_ports(services: dict[str, Any]) -> None:
    published = [port.split(":")[0] for name in NODES for port in services[name]["ports"]]
    assert len(published) == len(set(published)) == 2 * len(NODES)
    for name in NODES:
        targets = sorted(int(port.split(":")[1]) for port in services[name]["ports"])
        env = container_environment(services[name])
        assert targets == sorted([int(env["ORTHANC__HTTP_PORT"]), int(env["ORTHANC__DICOM_PORT"])])
