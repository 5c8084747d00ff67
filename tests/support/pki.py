"""The test session's certificates, made with the same code as ``devsetup``."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from orthanc_hardening.commands.devsetup import DevFiles, ensure_pki
from tests.support.server import Pki


def make_pki(directory: Path) -> Pki:
    """Create a CA, a server and a client certificate in ``directory``."""
    files = DevFiles(directory)
    ensure_pki(files, dt.datetime.now(dt.timezone.utc))
    return Pki(files=files)
