"""The event the storage area hands to read and write hooks (audit, lockdown).

``problem`` is ``""`` when the bytes verified (or were just sealed); otherwise it says why
verification failed, and the read is about to be refused (enforce) or served flagged (monitor).
``sealed`` is false for a legacy attachment served without a seal under ``serve-and-flag``.
No I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass

from orthanc_hardening.seal.record import Seal

WRITE = "write"
READ = "read"


@dataclass(frozen=True, slots=True)
class StorageEvent:
    """One storage create or read, as hooks see it."""

    uuid: str
    content_type: int
    seal: Seal | None
    problem: str
    thread: int
    operation: str = READ
    sealed: bool = True
    size: int = 0

    @property
    def is_verified(self) -> bool:
        return self.problem == "" and self.seal is not None
