"""Seals: signing keys, seal records over stored bytes, the index-tag digest, the seal store.

Safe high-level entry points: ``seal_attachment`` and ``verify_seal`` (``seal.record``),
``load_key_ring`` (``seal.keys``), ``identify`` (``seal.identity``).
"""

from __future__ import annotations

from orthanc_hardening.seal.identity import NO_IDENTITY, InstanceIdentity, identify
from orthanc_hardening.seal.record import Seal, seal_attachment, verify_seal
from orthanc_hardening.seal.storage_event import StorageEvent

__all__ = ["NO_IDENTITY", "InstanceIdentity", "Seal", "StorageEvent", "identify", "seal_attachment", "verify_seal"]
