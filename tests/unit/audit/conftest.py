"""Fixed keys, a fixed clock and event factories for the audit unit tests."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from orthanc_hardening.audit.event import Action, AuditEvent, EventCode, Outcome, Transport
from orthanc_hardening.seal.keys import KeyRing, Signer

NOW = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)


def signer_from_seed(seed: int) -> Signer:
    return Signer.of(Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32))


@pytest.fixture
def signer() -> Signer:
    return signer_from_seed(1)


@pytest.fixture
def other_signer() -> Signer:
    return signer_from_seed(2)


@pytest.fixture
def keyring(signer: Signer) -> KeyRing:
    return KeyRing(signer)


class FixedClock:
    """A clock that advances one millisecond per call (no real time)."""

    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=1)
        return self.now


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock()


def make_event(n: int = 0, series: str = "1.2.3.4", user: str = "alice", **kw: object) -> AuditEvent:
    fields: dict[str, object] = {
        "time": NOW + timedelta(seconds=n), "event": EventCode.INSTANCES_ACCESSED, "action": Action.READ,
        "outcome": Outcome.SUCCESS, "transport": Transport.REST, "user": user, "source_ip": "10.0.0.1",
        "route": f"GET /instances/{n}/file", "patient_id": "P-1", "study_uid": "1.2.3", "series_uid": series,
        "instance_count": 1, "detail": f"event {n}",
    }
    fields.update(kw)
    return AuditEvent(**fields)  # type: ignore[arg-type]


@pytest.fixture
def event_factory() -> Callable[..., AuditEvent]:
    return make_event


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "audit.db"
