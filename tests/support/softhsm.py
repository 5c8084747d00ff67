"""A SoftHSM token in a temporary directory (Debian's softhsm2), for PKCS#11 signing keys in tests."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

MODULE = "/usr/lib/softhsm/libsofthsm2.so"
PIN = "4321-hardening"
SO_PIN = "8765-officer"


@dataclass(frozen=True)
class SoftHSM:
    """One initialised token: its configuration file (``SOFTHSM2_CONF``), label and PIN."""

    conf: Path
    label: str
    pin: str = PIN

    def uri(self, object_label: str) -> str:
        """The RFC 7512 URI of a key object in this token."""
        return f"pkcs11:token={self.label};object={object_label}?module-path={MODULE}"


def make_softhsm(directory: Path, label: str = "hardening") -> SoftHSM:
    """Create a token directory and configuration and initialise one token in it."""
    tokens = directory / "tokens"
    tokens.mkdir(parents=True, exist_ok=True)
    conf = directory / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n")
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", label, "--pin", PIN, "--so-pin", SO_PIN],
                   env={"SOFTHSM2_CONF": str(conf), "PATH": "/usr/bin:/bin"}, check=True, capture_output=True,
                   timeout=60)
    return SoftHSM(conf, label)
