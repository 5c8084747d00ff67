"""Fixed keys and times for the seal unit tests."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from orthanc_hardening.seal.keys import KeyRing, Signer

NOW = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def fixed_signer(label: str = "current") -> Signer:
    seed = hashlib.sha256(f"orthanc-hardening unit key {label}".encode()).digest()
    return Signer.of(ed25519.Ed25519PrivateKey.from_private_bytes(seed))


@pytest.fixture
def signer() -> Signer:
    return fixed_signer()


@pytest.fixture
def keyring(signer: Signer) -> KeyRing:
    return KeyRing(signer)
