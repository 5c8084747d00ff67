"""A real PostgreSQL server (Debian's package) started by a test on a free loopback port.

Debian installs the server binaries under ``/usr/lib/postgresql/<major>/bin`` (15 on bookworm,
17 on trixie, 18 on forky); the newest installed major version is used. PostgreSQL refuses to
run as root, so as root the cluster belongs to ``nobody``. ``stop()`` is safe to call twice.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.server import free_port

POSTGRES_ROOT = Path("/usr/lib/postgresql")


def postgres_bin() -> Path:
    """The ``bin`` directory of the newest PostgreSQL server installed.

    Raises:
        FileNotFoundError: no PostgreSQL server is installed (``make deps`` installs one).
    """
    versions = sorted(
        (int(path.name), path / "bin")
        for path in POSTGRES_ROOT.glob("*")
        if re.fullmatch(r"\d+", path.name) and (path / "bin" / "initdb").exists()
    )
    if not versions:
        raise FileNotFoundError(f"no PostgreSQL server under {POSTGRES_ROOT}: run `make deps`")
    return versions[-1][1]


def _as_postgres_user(args: list[str]) -> list[str]:
    return ["runuser", "-u", "nobody", "--", *args] if os.geteuid() == 0 else args


@dataclass
class PostgresServer:
    """One PostgreSQL cluster in a temporary directory, trust authentication on loopback."""

    user: str = "hardening"
    port: int = field(default_factory=free_port)
    home: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="hardening-pg-")))
    running: bool = False

    @property
    def bin(self) -> Path:
        return postgres_bin()

    @property
    def data(self) -> Path:
        return self.home / "data"

    def url(self, database: str = "postgres") -> str:
        """A libpq URL of ``database`` on this server."""
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def _pg_ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(_as_postgres_user([str(self.bin / "pg_ctl"), "-D", str(self.data), *args]),
                              check=check, capture_output=True, timeout=120)

    def start(self) -> PostgresServer:
        """Create the cluster (first time) and start it; return once it accepts connections."""
        if os.geteuid() == 0:
            shutil.chown(self.home, "nobody")
        if not self.data.exists():
            subprocess.run(_as_postgres_user([str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust",
                                              "-U", self.user]), check=True, capture_output=True, timeout=120)
        self._pg_ctl("-w", "-l", str(self.home / "log"), "-o",
                     f"-k {self.home} -p {self.port} -c listen_addresses=127.0.0.1", "start")
        self.running = True
        return self

    def stop(self, mode: str = "immediate") -> None:
        """Stop the server (``immediate`` by default: as a crash would)."""
        if self.running:
            self._pg_ctl("-m", mode, "stop", check=False)
            self.running = False

    def destroy(self) -> None:
        """Stop the server and remove its files."""
        self.stop()
        shutil.rmtree(self.home, ignore_errors=True)

    def create_database(self, name: str) -> str:
        """Create database ``name``; return its URL."""
        subprocess.run([str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, name],
                       check=True, capture_output=True, timeout=60)
        return self.url(name)
