"""Fixtures that start real Orthanc servers (see ``tests/support/server.py``).

``start_orthanc(...)`` prepares and starts a server in a fresh temporary home; every server
started through it is stopped at teardown, also when the test fails. Integration tests
need the Debian packages and ``build/libssl-shim`` that ``make deps`` installs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.support.pki import make_pki
from tests.support.postgres import PostgresServer
from tests.support.server import SHIM_DIR, OrthancServer, Pki, make_server


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """The session's CA, server and client certificates."""
    if not (SHIM_DIR / "libssl.so").exists():
        pytest.fail(f"{SHIM_DIR}/libssl.so is missing: run `make deps` first")
    return make_pki(tmp_path_factory.mktemp("pki"))


StartOrthanc = Callable[..., OrthancServer]


def _factory(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartOrthanc]:
    servers: list[OrthancServer] = []

    def start(
        config: Mapping[str, Any] | None = None,
        hardening: Mapping[str, Any] | None = None,
        plugin: bool = True,
        env: Mapping[str, str] | None = None,
        expect_failure: bool = False,
        home: Path | None = None,
    ) -> OrthancServer:
        server = make_server(
            home or tmp_path_factory.mktemp("orthanc"), pki, config=config, hardening=hardening, plugin=plugin, env=env
        )
        servers.append(server)
        server.start(wait=not expect_failure)
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def start_orthanc(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartOrthanc]:
    """Factory fixture: start a server; all are stopped when the test ends."""
    yield from _factory(pki, tmp_path_factory)


@pytest.fixture(scope="module")
def start_orthanc_module(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartOrthanc]:
    """Like ``start_orthanc`` but servers live for the whole test module."""
    yield from _factory(pki, tmp_path_factory)


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL cluster (Debian's, on loopback) for the tests of one module; destroyed after."""
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.destroy()
