"""Witnessed checkpoints: proof, held outside the audit database, that the audit log only grew.

The model is Certificate Transparency's signed tree head (RFC 6962 §3.5) and its consistency
check: a witness keeps every checkpoint it was given; a later state of the log is consistent
with it only if the row at the checkpoint's ``seq`` still has the checkpoint's ``hash``. In a
hash chain that one comparison is the whole consistency proof: the row hash at ``seq`` commits
to every row before it (DESIGN.md §7), so any edit, deletion, insertion or renumbering at or
before ``seq`` changes it.

Each ``WitnessedCheckpoint`` carries ``seq``, the chain ``hash`` at ``seq``, the previous
witnessed checkpoint (its ``seq``, ``hash`` and the digest of its line), the time and the key;
it is signed by the audit key (domain-separated from seals, manifests and the store's own
checkpoints). The lines of one witness therefore form a chain of their own: a line removed from
the witness, or a witness line forged without the key, is seen too.

Pure: ``stores/witness_file.py`` writes and reads the lines; ``inspect_witness`` takes the
log's row hashes as a mapping; the caller passes keys and ``now``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from typing import Any

from orthanc_hardening.canonical import canonical_json
from orthanc_hardening.errors import AuditChainError, IntegrityError
from orthanc_hardening.seal.keys import SigningKey, Verifier
from orthanc_hardening.timefmt import format_time

VERSION = 1
DOMAIN = "orthanc-hardening audit witnessed checkpoint"
GENESIS = "0" * 64
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_FIELDS = ("v", "seq", "hash", "time", "key_id", "previous_seq", "previous_hash", "previous_digest", "signature")


def _canonical(fields: Mapping[str, Any]) -> bytes:
    return canonical_json(fields)


@dataclass(frozen=True, slots=True)
class WitnessedCheckpoint:
    """One signed line of a witness (see the module docstring)."""

    v: int
    seq: int
    hash: str
    time: str
    key_id: str
    previous_seq: int
    previous_hash: str
    previous_digest: str
    signature: str

    def signed_bytes(self) -> bytes:
        """The bytes the signature covers."""
        fields = asdict(self)
        del fields["signature"]
        return _canonical({"domain": DOMAIN, **fields})

    def to_line(self) -> bytes:
        """The line a witness stores (canonical JSON, newline-terminated)."""
        return _canonical(asdict(self)) + b"\n"

    def digest(self) -> str:
        """SHA-256 of the line: the next line's ``previous_digest``."""
        return hashlib.sha256(self.to_line()).hexdigest()

    @classmethod
    def from_line(cls, line: bytes | str) -> WitnessedCheckpoint:
        """Parse and validate one witness line.

        Raises:
            AuditChainError: not a witnessed checkpoint of this format.
        """
        try:
            raw = json.loads(line)
        except ValueError as exc:
            raise AuditChainError("a witness line is not JSON") from exc
        if not isinstance(raw, dict) or set(raw) != set(_FIELDS) or raw["v"] != VERSION:
            raise AuditChainError("a witness line has missing or unknown fields")
        if not all(type(raw[n]) is int and raw[n] >= 0 for n in ("seq", "previous_seq")):
            raise AuditChainError("a witness line has a malformed seq")
        if not all(isinstance(raw[n], str) and _HEX64.match(raw[n]) for n in ("hash", "previous_hash",
                                                                              "previous_digest")):
            raise AuditChainError(f"witness line at seq {raw['seq']} has a malformed hash")
        if not all(isinstance(raw[n], str) for n in ("time", "key_id", "signature")):
            raise AuditChainError(f"witness line at seq {raw['seq']} has fields of the wrong type")
        return cls(**raw)


def witness_checkpoint(seq: int, head_hash: str, previous: WitnessedCheckpoint | None, signer: SigningKey,
                       now: datetime) -> WitnessedCheckpoint:
    """Sign the chain head ``(seq, head_hash)`` as the successor of ``previous``.

    Raises:
        ValueError: ``seq`` is lower than the previous witnessed one (a caller bug: the log
            only grows).
    """
    if previous is not None and seq < previous.seq:
        raise ValueError("a witnessed checkpoint never goes back")
    unsigned = WitnessedCheckpoint(
        VERSION, seq, head_hash, format_time(now), signer.key_id,
        previous.seq if previous else 0, previous.hash if previous else GENESIS,
        previous.digest() if previous else GENESIS, "")
    signature = base64.b64encode(signer.sign(unsigned.signed_bytes())).decode("ascii")
    return replace(unsigned, signature=signature)


def _verify_signature(line: WitnessedCheckpoint, verifier: Verifier) -> None:
    try:
        verifier.verify(line.key_id, line.signed_bytes(), base64.b64decode(line.signature, validate=True))
    except (binascii.Error, ValueError) as exc:
        raise AuditChainError(f"witness line at seq {line.seq}: the signature is not base64") from exc
    except IntegrityError as exc:
        raise AuditChainError(f"witness line at seq {line.seq}: signature not accepted "
                              f"({type(exc).__name__}: {exc})") from exc


def inspect_witness(lines: Sequence[WitnessedCheckpoint], hash_at: Mapping[int, str], last_seq: int,
                    verifier: Verifier) -> list[str]:
    """Every way in which the log disagrees with what the witness saw. Never raises on bad data.

    Args:
        lines: the witness's lines, in file order.
        hash_at: the log's row hash at (at least) every ``seq`` the lines name.
        last_seq: the log's newest ``seq``.
        verifier: the current and trusted audit keys.

    Returns:
        The problems found (empty when the log extends everything the witness holds).
    """
    problems: list[str] = []
    previous: WitnessedCheckpoint | None = None
    for line in lines:
        try:
            _verify_signature(line, verifier)
        except AuditChainError as exc:
            problems.append(str(exc))
            previous = line
            continue
        if previous is not None and (line.previous_seq != previous.seq
                                     or not hmac.compare_digest(line.previous_hash, previous.hash)
                                     or not hmac.compare_digest(line.previous_digest, previous.digest())):
            problems.append(f"witness line at seq {line.seq} does not follow the line before it "
                            f"(seq {previous.seq}): witness lines removed or reordered")
        if previous is None and line.previous_digest != GENESIS:
            problems.append(f"the witness's first line (seq {line.seq}) follows a line that is gone")
        if line.seq > last_seq:
            problems.append(f"the witness saw the log at seq {line.seq}, but the log ends at seq {last_seq}: "
                            f"rows were removed")
        else:
            found = hash_at.get(line.seq)
            if found is None or not hmac.compare_digest(found, line.hash):
                problems.append(f"the log's row at seq {line.seq} is not the one the witness saw: the log was "
                                f"rewritten at or before seq {line.seq}")
        previous = line
    return problems


def check_extends(last: WitnessedCheckpoint, head: tuple[int, str] | None, hash_at_seq: str | None,
                  verifier: Verifier) -> None:
    """Check, before signing anything, that the log extends the witness's last checkpoint.

    Args:
        last: the witness's newest line.
        head: the log's ``(seq, hash)``, or ``None`` for an empty log.
        hash_at_seq: the log's row hash at ``last.seq`` (``None`` when there is no such row).
        verifier: the current and trusted audit keys.

    Raises:
        AuditChainError: the line's signature is not accepted, the log is shorter than what the
            witness saw, or its row at that ``seq`` differs (rewritten).
    """
    _verify_signature(last, verifier)
    last_seq = head[0] if head else 0
    if last.seq > last_seq:
        raise AuditChainError(f"the audit log ends at seq {last_seq}, but a witness saw it at seq {last.seq}: "
                              f"rows were removed")
    if hash_at_seq is None or not hmac.compare_digest(hash_at_seq, last.hash):
        raise AuditChainError(f"the audit log's row at seq {last.seq} is not the one a witness saw: the log was "
                              f"rewritten at or before seq {last.seq}")
