"""Data stored before sealing began: which unsealed attachments are legacy, and which to seal.

An attachment without a seal is *legacy* only when it is in the signed **legacy inventory**:
the attachments Orthanc's index held, unsealed, when sealing began, each entry (attachment
uuid, content type, instance id) signed with the seal key (``LegacyEntry``). The inventory is
taken once, when the plugin first runs (``plan_inventory``): on a fresh installation it is
empty, so nothing is ever legacy and every unsealed attachment is refused, whatever
``UnsealedPolicy`` says. Anything else stored without a seal had its seal removed: an incident,
never served as legacy and never sealed now.

Why an attacker who can edit one row cannot forge it: deleting a seal row and backdating the
instance's ``ReceptionDate`` used to make tampered bytes "legacy"; now neither fact is asked.
The inventory entry must exist *and* carry a valid signature over the attachment's uuid, type
and instance, and the index must still name that attachment for that instance; a forged entry
needs the seal key. An installation upgraded from a version without inventory builds it once
by the older rule (``ReceptionDate`` before the signed start of sealing), which is audited.

The REST route ``POST /hardening/seal-existing``, the offline command ``seal-existing`` and
the storage read decide with these functions (one planner: ``plan_legacy_sealing``).

Pure: the caller reads the index and the stores and passes what they say.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from orthanc_hardening.config import UnsealedPolicy
from orthanc_hardening.errors import SealInvalidError, SealMissingError
from orthanc_hardening.seal.keys import SigningKey, Verifier

INVENTORY_CONTEXT = b"orthanc-hardening/legacy-inventory/v1\x00"


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
            f"attachment {uuid} (type {content_type}) has no seal and is not in the signed legacy inventory: "
            "it was stored after sealing began, or its seal was removed"
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
                        is_provably_legacy: Callable[[StoredAttachment], bool]) -> LegacyPlan:
    """Sort attachments into those to seal, those already sealed and those refused.

    Args:
        attachments: what the index lists.
        is_sealed: whether the seal store has a seal for ``(uuid, content_type)``.
        is_provably_legacy: whether the signed legacy inventory holds the attachment, for this
            instance (``check_legacy_entry``); ``lambda _a: True`` only when the plugin never ran.
    """
    to_seal: list[StoredAttachment] = []
    refused: list[StoredAttachment] = []
    already = 0
    for attachment in attachments:
        if is_sealed(attachment.uuid, attachment.content_type):
            already += 1
        elif is_provably_legacy(attachment):
            to_seal.append(attachment)
        else:
            refused.append(attachment)
    return LegacyPlan(tuple(to_seal), already, tuple(refused))


# -- the signed legacy inventory ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LegacyEntry:
    """One attachment Orthanc held, unsealed, when sealing began."""

    uuid: str
    content_type: int
    instance_id: str

    def signed_bytes(self) -> bytes:
        """What the entry's signature covers (domain-separated canonical JSON)."""
        body = {"content_type": int(self.content_type), "instance_id": self.instance_id, "uuid": self.uuid}
        return INVENTORY_CONTEXT + json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")


def sign_legacy_entry(entry: LegacyEntry, signer: SigningKey) -> str:
    """The stored signature of an inventory entry, ``key_id:base64``."""
    return f"{signer.key_id}:{base64.b64encode(signer.sign(entry.signed_bytes())).decode('ascii')}"


def verify_legacy_entry(entry: LegacyEntry, signature: str, verifier: Verifier) -> None:
    """Verify an inventory entry's signature.

    Raises:
        SealInvalidError: the signature is malformed or does not verify.
        UnknownKeyError: it was made by a key that is not trusted.
    """
    kid, _, encoded = signature.partition(":")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SealInvalidError(f"legacy inventory entry of {entry.uuid} has a malformed signature") from exc
    verifier.verify(kid, entry.signed_bytes(), raw)


def check_legacy_entry(attachment: StoredAttachment, entry: LegacyEntry | None, signature: str,
                       verifier: Verifier) -> None:
    """Check that an unsealed attachment is provably legacy: inventoried, signed, for this instance.

    Args:
        attachment: the attachment as the index names it now (instance, type, uuid).
        entry: the inventory's entry for ``(uuid, content type)``, or ``None``.
        signature: the entry's stored signature.
        verifier: the trusted keys.

    Raises:
        SealMissingError: not in the inventory, or inventoried for another instance (its seal
            was removed, or the index points another instance at a legacy file).
        SealInvalidError: the entry's signature does not verify (a forged entry).
        UnknownKeyError: the entry was signed by an untrusted key.
    """
    if entry is None:
        raise SealMissingError(
            f"attachment {attachment.uuid} (type {attachment.content_type}) has no seal and is not in the signed "
            "legacy inventory: it was stored after sealing began, or its seal was removed")
    verify_legacy_entry(entry, signature, verifier)
    if (entry.uuid, int(entry.content_type), entry.instance_id) != (
            attachment.uuid, int(attachment.content_type), attachment.instance_id):
        raise SealMissingError(
            f"attachment {attachment.uuid} (type {attachment.content_type}) is inventoried as legacy for instance "
            f"{entry.instance_id}, but the index names it for {attachment.instance_id}")


class InventoryRule(enum.Enum):
    """How the legacy inventory is taken, once."""

    # The plugin starts sealing now: whatever the index holds unsealed predates it.
    BEFORE_SEALING = "before-sealing"
    # An installation upgraded from a version without inventory: the older rule, once (audited).
    RECEPTION_DATE = "reception-date"


def plan_inventory(attachments: Iterable[StoredAttachment], is_sealed: Callable[[str, int], bool],
                   rule: InventoryRule, sealing_since: str) -> list[LegacyEntry]:
    """The entries of the legacy inventory, taken once from what the index holds.

    Args:
        attachments: every attachment the index lists.
        is_sealed: whether the seal store has a seal for ``(uuid, content_type)``.
        rule: ``BEFORE_SEALING`` on the first start of sealing; ``RECEPTION_DATE`` on an upgrade.
        sealing_since: the verified start of sealing (used by ``RECEPTION_DATE``).
    """
    entries = []
    for attachment in attachments:
        if is_sealed(attachment.uuid, attachment.content_type):
            continue
        if rule is InventoryRule.RECEPTION_DATE and not received_before(attachment.received_at, sealing_since):
            continue
        entries.append(LegacyEntry(attachment.uuid, int(attachment.content_type), attachment.instance_id))
    return entries


def default_unsealed_policy(unsealed_legacy: int) -> UnsealedPolicy:
    """The ``UnsealedPolicy`` of an installation that does not set it, from its legacy inventory.

    A fresh installation (no instance stored before sealing began) and one whose legacy
    attachments ``seal-existing`` has all sealed have nothing to migrate: ``refuse``. One that
    still holds unsealed legacy attachments keeps serving them, flagged, until they are sealed.

    Args:
        unsealed_legacy: how many attachments of the signed legacy inventory are still unsealed.
    """
    return UnsealedPolicy.SERVE_AND_FLAG if unsealed_legacy > 0 else UnsealedPolicy.REFUSE
