"""Verification of stored data: on read (``integrity.read.verify_read``), of query answers
(``integrity.query``), of data stored before sealing (``integrity.legacy``), and the scrub's
findings (``integrity.scrub``)."""

from __future__ import annotations

from orthanc_hardening.integrity.read import ReadCheck, verify_read

__all__ = ["ReadCheck", "verify_read"]
