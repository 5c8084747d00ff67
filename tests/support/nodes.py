"""Several hardened Orthanc nodes forming one archive, for integration tests.

``start_cluster`` starts one PostgreSQL server (``tests/support/postgres.py``), creates the
archive's database, and starts ``count`` hardened Orthanc nodes on it: Orthanc's index through
Orthanc's PostgreSQL plugin (``PostgreSQL.EnableIndex``, ``EnableStorage: false``, ``Lock:
false``), the files in one shared ``StorageDirectory`` (written and read by the plugin's
storage area), the same signing key, passphrase and accounts, and ``Hardening.Database`` (with
the audit trail) set to the same database. Each node keeps its own home, ports and
log. ``Cluster.stop()`` stops every node and then PostgreSQL, also after a failed start.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.postgres import PostgresServer
from tests.support.server import DICOMWEB_PLUGIN, PYTHON_PLUGIN, OrthancServer, Pki, deep_merge, make_server

POSTGRESQL_INDEX_PLUGIN = "/usr/share/orthanc/plugins/libOrthancPostgreSQLIndex.so"
ARCHIVE_DATABASE = "archive"
# What `make run` generates for a node (commands/devnode.py); tests/unit checks they agree.
MAXIMUM_CONNECTION_RETRIES = 10


def node_config(database_url: str, storage: Path, name: str) -> dict[str, Any]:
    """The Orthanc keys that make a node of the archive (merged over the test base config).

    Args:
        database_url: libpq URL of the archive's database.
        storage: the shared storage folder.
        name: this node's ``DatabaseServerIdentifier`` (Orthanc 1.11 and later; 1.10 ignores it).
    """
    return {
        "StorageDirectory": str(storage),
        "DatabaseServerIdentifier": name,
        "PostgreSQL": {
            "EnableIndex": True,
            "EnableStorage": False,
            "ConnectionUri": database_url,
            # Several Orthanc on one index: no exclusive lock; retries on serialization
            # conflicts and on a lost connection (PostgreSQL plugin 4.0 and later). The retry
            # count is the one `make run` generates (commands/devnode.py): with 3, concurrent
            # REST ingests into one series exhaust Orthanc's retries of a serialization conflict
            # and it answers 503 (OrthancStatus 42), plain Orthanc as well (bench/RESULTS.md).
            "Lock": False,
            "MaximumConnectionRetries": MAXIMUM_CONNECTION_RETRIES,
            "ConnectionRetryInterval": 1,
            "IndexConnectionsCount": 2,
        },
    }


@dataclass
class Cluster:
    """One PostgreSQL, one storage folder, several hardened nodes."""

    postgres: PostgresServer
    storage: Path
    database_url: str
    nodes: list[OrthancServer] = field(default_factory=list)

    def stop(self) -> None:
        """Stop every node, then PostgreSQL, and remove its files; safe to call twice."""
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.stop()
        self.postgres.destroy()


def prepare_node(
    home: Path,
    pki: Pki,
    cluster: Cluster,
    name: str,
    config: Mapping[str, Any] | None = None,
    hardening: Mapping[str, Any] | None = None,
    first: OrthancServer | None = None,
    plugin: bool = True,
) -> OrthancServer:
    """Prepare (not start) one node of ``cluster`` in ``home``.

    A node after the first joins it: it takes the first node's signing key, passphrase and
    accounts (what ``make run`` with ``HARDENING_JOIN`` does), so seals made on one node verify
    on every other. ``plugin=False`` makes a plain Orthanc node (same index, storage folder, TLS
    and accounts; only Orthanc's PostgreSQL plugin loaded), for benchmarks.
    """
    if first is not None:
        home.mkdir(parents=True, exist_ok=True)
        for relative in ("keys/seal-key.pem", "keys/passphrase", "credentials.json"):
            target = home / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(first.home / relative, target)
    merged = deep_merge(node_config(cluster.database_url, cluster.storage, name), config or {})
    if not plugin:
        merged["Plugins"] = [POSTGRESQL_INDEX_PLUGIN]
        return make_server(home, pki, config=merged, plugin=False)
    # The plugin's stores and the audit trail in the same database (Hardening.Database).
    shared_store = {"Database": cluster.database_url, "Audit": {"Database": cluster.database_url}}
    hardening = deep_merge(shared_store, hardening or {})
    # deep_merge replaces lists: the node's list names every plugin it loads.
    merged["Plugins"] = [PYTHON_PLUGIN, DICOMWEB_PLUGIN, POSTGRESQL_INDEX_PLUGIN]
    return make_server(home, pki, config=merged, hardening=hardening)


@contextlib.contextmanager
def start_cluster(
    root: Path,
    pki: Pki,
    count: int = 2,
    config: Mapping[str, Any] | None = None,
    hardening: Mapping[str, Any] | None = None,
    plugin: bool = True,
) -> Iterator[Cluster]:
    """Start PostgreSQL and ``count`` nodes under ``root``; stop them all on exit (also on failure).

    ``plugin=False``: plain Orthanc nodes (see ``prepare_node``).
    """
    postgres = PostgresServer().start()
    cluster = Cluster(postgres=postgres, storage=root / "shared-storage", database_url="")
    try:
        cluster.database_url = postgres.create_database(ARCHIVE_DATABASE)
        cluster.storage.mkdir(parents=True, exist_ok=True)
        first: OrthancServer | None = None
        for number in range(count):
            name = f"node-{chr(ord('a') + number)}"
            node = prepare_node(root / name, pki, cluster, name, config, hardening, first, plugin)
            cluster.nodes.append(node)
            # One node at a time: the first creates the schema of Orthanc's index.
            node.start()
            first = first or node
        yield cluster
    finally:
        cluster.stop()
