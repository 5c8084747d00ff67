"""The signed start of sealing: when this plugin first sealed data on this Orthanc.

An attachment without a seal is *legacy* (stored before the plugin, served under
``Hardening.UnsealedPolicy``) only if Orthanc received its instance before this time;
otherwise its seal was removed. The time is signed with the seal key, so editing it in the
seal database is detected (the caller then treats every unsealed attachment as tampered).
Format: Orthanc's ``YYYYMMDDTHHMMSS`` (UTC), as in its ``ReceptionDate`` metadata. No I/O here.
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime

from orthanc_hardening.errors import IntegrityError
from orthanc_hardening.seal.keys import SigningKey, Verifier

META_NAME = "sealing_since"
META_SIGNATURE = "sealing_since_signature"
CONTEXT = b"orthanc-hardening/sealing-since/v1\x00"


def orthanc_time(now: datetime) -> str:
    """``YYYYMMDDTHHMMSS`` in UTC.

    Raises:
        ValueError: ``now`` is naive.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now.astimezone(UTC).strftime("%Y%m%dT%H%M%S")


def sign_epoch(value: str, signer: SigningKey) -> str:
    """The stored signature form ``key_id:base64``."""
    return f"{signer.key_id}:{base64.b64encode(signer.sign(CONTEXT + value.encode('ascii'))).decode('ascii')}"


def verify_epoch(value: str, stored_signature: str, keyring: Verifier) -> None:
    """Verify the signed start of sealing.

    Raises:
        UnknownKeyError: signed by a key that is not trusted.
        SealInvalidError: the signature does not verify or is malformed.
    """
    from orthanc_hardening.errors import SealInvalidError

    kid, _, signature = stored_signature.partition(":")
    try:
        raw = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SealInvalidError("the start of sealing carries a malformed signature") from exc
    keyring.verify(kid, CONTEXT + value.encode("ascii"), raw)


__all__ = ["CONTEXT", "META_NAME", "META_SIGNATURE", "IntegrityError", "orthanc_time", "sign_epoch", "verify_epoch"]
