"""Data stored before sealing began: which unsealed attachments are legacy, and which to seal.

An attachment without a seal is *legacy* only when Orthanc's index says its instance was
received (``ReceptionDate``) before the signed start of sealing (``seal/epoch.py``), or when
the plugin never sealed anything on this Orthanc. Anything else stored without a seal had its
seal removed: an incident, never sealed now. The REST route ``POST /hardening/seal-existing``,
the offline command ``seal-existing`` and the storage read decide with these functions.

Pure: the caller reads the index and the seal store and passes what they say.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from orthanc_hardening.config import UnsealedPolicy
from orthanc_hardening.errors import SealMissingError


def received_before(received_at: str | None, sealing_since: str) -> bool:
    """Whether Orthanc received an instance before sealing began.

    Args:
        received_at: Orthanc's ``ReceptionDate`` metadata (``YYYYMMDDTHHMMSS``, UTC), or ``None``
            when unknown.
        sealing_since: when this plugin first sealed, in the same format.

    Returns:
        True only when both are known and the instance is older than sealing.
    """
    if not received_at or not sealing_since:
        return False
    return received_at[:15] < sealing_since[:15]


def is_legacy(received_at: str | None, sealing_since: str | None) -> bool:
    """Whether an unsealed attachment predates sealing (``sealing_since`` ``None``: never sealed)."""
    return sealing_since is None or received_before(received_at, sealing_since)


def check_unsealed(uuid: str, content_type: int, policy: UnsealedPolicy, legacy: bool) -> None:
    """Decide whether an attachment without a seal may be served (enforce mode).

    Args:
        uuid: the attachment.
        content_type: its content type.
        policy: ``Hardening.UnsealedPolicy``.
        legacy: the instance was received before sealing began (``is_legacy``).

    Raises:
        SealMissingError: the instance arrived after sealing began (its seal was removed), or
            the policy is ``refuse``.
    """
    if not legacy:
        raise SealMissingError(
            f"attachment {uuid} (type {content_type}) has no seal although it was stored after sealing began"
        )
    if policy is UnsealedPolicy.REFUSE:
        raise SealMissingError(
            f"attachment {uuid} (type {content_type}) is unsealed and Hardening.UnsealedPolicy is refuse"
        )


@dataclass(frozen=True, slots=True)
class StoredAttachment:
    """One attachment as Orthanc's index lists it, with its instance's ``ReceptionDate``."""

    instance_id: str
    content_type: int
    uuid: str
    received_at: str | None


class Decision(enum.Enum):
    """What ``seal-existing`` does with one attachment."""

    SEAL = "seal"
    ALREADY_SEALED = "already-sealed"
    REFUSE = "refuse"  # unsealed although stored after sealing began


@dataclass(frozen=True, slots=True)
class LegacyPlan:
    """The attachments to seal, and the counts ``seal-existing`` reports."""

    to_seal: tuple[StoredAttachment, ...]
    already_sealed: int
    refused: tuple[StoredAttachment, ...] = field(default=())

    @property
    def refused_instances(self) -> list[str]:
        return sorted({attachment.instance_id for attachment in self.refused})


def plan_legacy_sealing(attachments: Iterable[StoredAttachment], is_sealed: Callable[[str, int], bool],
                        sealing_since: str | None) -> LegacyPlan:
    """Sort attachments into those to seal, those already sealed and those refused.

    Args:
        attachments: what the index lists.
        is_sealed: whether the seal store has a seal for ``(uuid, content_type)``.
        sealing_since: the verified start of sealing, or ``None`` when the plugin never ran.
    """
    to_seal: list[StoredAttachment] = []
    refused: list[StoredAttachment] = []
    already = 0
    for attachment in attachments:
        if is_sealed(attachment.uuid, attachment.content_type):
            already += 1
        elif is_legacy(attachment.received_at, sealing_since):
            to_seal.append(attachment)
        else:
            refused.append(attachment)
    return LegacyPlan(tuple(to_seal), already, tuple(refused))
