"""Verification of stored data on read (``integrity.read.check_read``) and per instance."""

from __future__ import annotations

from orthanc_hardening.integrity.read import ReadCheck, SignatureCache, check_read, check_unsealed

__all__ = ["ReadCheck", "SignatureCache", "check_read", "check_unsealed"]
