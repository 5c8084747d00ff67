"""The audit fixtures (fixed keys, clock, events, a database path) for the audit writer and exporter."""

from __future__ import annotations

from tests.unit.audit.conftest import clock, db_path, event_factory, keyring, other_signer, signer

__all__ = ["clock", "db_path", "event_factory", "keyring", "other_signer", "signer"]
