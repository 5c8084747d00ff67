"""The test and bench nodes retry Orthanc's PostgreSQL index conflicts as often as a ``make run`` node.

Orthanc answers a REST ingest 503 (OrthancStatus 42, "Database could not serialize access") once
a serialization conflict outlasts ``PostgreSQL.MaximumConnectionRetries``; plain Orthanc does too
(bench/RESULTS.md, "Several nodes"). Nodes started by the tests and by ``bench/nodes.py`` with
fewer retries than an administrator's node would measure, or fail on, what no deployment sees.
"""

from __future__ import annotations

from pathlib import Path

from orthanc_hardening.commands import devnode
from tests.support.nodes import node_config

REPO_ORTHANC_JSON = Path(__file__).resolve().parents[1].parent / "orthanc.json"


def test_test_nodes_retry_index_conflicts_as_often_as_make_run_nodes() -> None:
    generated = devnode.node_configuration(REPO_ORTHANC_JSON.read_text(), "postgresql://u@db/archive",
                                           Path("/srv/archive"))
    ours = node_config("postgresql://u@db/archive", Path("/srv/archive"), "node-a")
    for key in ("MaximumConnectionRetries", "Lock", "EnableStorage", "IndexConnectionsCount"):
        assert ours["PostgreSQL"][key] == generated["PostgreSQL"][key], key
