"""The audit hash chain and its signed checkpoints (DESIGN.md §7).

Each stored event carries ``seq`` (1, 2, 3 …), ``prev_hash`` and
``hash = SHA-256(prev_hash || canonical(row without hash))``; the first row's ``prev_hash``
is 32 zero bytes. Every N events or T seconds the writer signs a checkpoint
``(seq, hash, time, key_id)`` with the signing key. ``inspect_chain`` replays the chain and the
checkpoints and reports every finding without raising; ``verify_chain`` raises
``AuditChainError`` naming the first broken sequence number (or checkpoint).

What this detects: an edited, deleted, reordered or inserted row anywhere (the hashes no longer
link), a truncated tail up to the last checkpoint (a checkpoint names a row that is gone), a
chain rebuilt by someone without the key (its checkpoints are signed by an untrusted key or
not signed at all). What it cannot detect alone: rows dropped together with the checkpoints
after them, back to an earlier valid checkpoint — export the checkpoints off the host
(syslog) to cover that. Pure: no I/O, no clock; the caller passes rows, checkpoints, a
verifier and ``now``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from json.encoder import encode_basestring_ascii

from orthanc_hardening.audit.event import Action, AuditEvent, EventCode, Outcome, Transport
from orthanc_hardening.canonical import canonical_json
from orthanc_hardening.errors import AuditChainError, IntegrityError
from orthanc_hardening.seal.keys import SigningKey, Verifier
from orthanc_hardening.timefmt import format_time, parse_time

FORMAT_VERSION = 1
GENESIS_HASH = "0" * 64
CHECKPOINT_DOMAIN = "orthanc-hardening audit checkpoint"


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One row of the audit store: the event plus its place in the chain."""

    seq: int
    event: AuditEvent
    prev_hash: str
    hash: str
    # The row's fields as hashed (set by ``link``), so the store does not encode them twice.
    fields: dict[str, object] | None = field(default=None, compare=False, repr=False)

    def as_dict(self) -> dict[str, object]:
        """The row as a flat JSON-ready mapping (the export and REST shape)."""
        row = row_fields(self.seq, self.event, self.prev_hash)
        row["event_name"] = self.event.event.display_name
        row["hash"] = self.hash
        return row


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signed statement that the chain up to ``seq`` has head ``hash``."""

    seq: int
    hash: str
    time: str
    key_id: str
    signature: str  # base64

    def signed_bytes(self) -> bytes:
        """The exact bytes the signature covers."""
        return checkpoint_bytes(self.seq, self.hash, self.time, self.key_id)


def row_fields(seq: int, event: AuditEvent, prev_hash: str) -> dict[str, object]:
    """The row without its hash, as the canonical encoding sees it (DESIGN.md §7)."""
    return {
        "v": FORMAT_VERSION,
        "seq": seq,
        "time": _row_time(event.time),
        "event": event.event.code,
        "action": event.action.value,
        "outcome": event.outcome.value,
        "user": event.user,
        "roles": list(event.roles),
        "source_ip": event.source_ip,
        "calling_aet": event.calling_aet,
        "called_aet": event.called_aet,
        "transport": event.transport.value,
        "route": event.route,
        "patient_id": event.patient_id,
        "study_uid": event.study_uid,
        "series_uid": event.series_uid,
        "instance_count": event.instance_count,
        "detail": event.detail,
        "prev_hash": prev_hash,
    }


def _row_time(moment: datetime) -> str:
    """``format_time(moment)``, without ``strftime`` for the usual case (a UTC time after year 999)."""
    if moment.tzinfo is not UTC or moment.year < 1000:
        return format_time(moment)
    return (f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T{moment.hour:02d}:{moment.minute:02d}:"
            f"{moment.second:02d}.{moment.microsecond:06d}Z")


def canonical(fields: dict[str, object]) -> bytes:
    """Canonical encoding: sorted-key, compact, ASCII-only JSON."""
    return canonical_json(fields)


# The keys of ``row_fields`` in sorted order, each with its encoded ``"key":`` prefix.
_ROW_KEYS = tuple((key, encode_basestring_ascii(key) + ":") for key in sorted(
    ("v", "seq", "time", "event", "action", "outcome", "user", "roles", "source_ip", "calling_aet",
     "called_aet", "transport", "route", "patient_id", "study_uid", "series_uid", "instance_count",
     "detail", "prev_hash")))
_ROW_KEY_SET = frozenset(key for key, _ in _ROW_KEYS)


def canonical_row(fields: dict[str, object]) -> bytes:
    """``canonical(fields)`` for a row of ``row_fields``: the same bytes, built without the generic encoder.

    The hot path of every append and every verification. Each value is encoded as ``json.dumps``
    encodes it (strings by the same ASCII escaper, exact ints by their decimal form, a list of
    strings as ``["a","b"]``); a row with any other key or value type is handed to the generic
    encoder, so the bytes are ``canonical(fields)`` in every case (``tests/unit`` compares them).
    """
    if len(fields) != len(_ROW_KEYS) or not _ROW_KEY_SET.issuperset(fields):
        return canonical_json(fields)
    parts = []
    for key, prefix in _ROW_KEYS:
        value = fields[key]
        kind = type(value)
        if kind is str:
            parts.append(prefix + encode_basestring_ascii(value))  # type: ignore[arg-type]
        elif kind is int:
            parts.append(prefix + int.__repr__(value))  # type: ignore[arg-type]
        elif kind is list and all(type(item) is str for item in value):  # type: ignore[attr-defined]
            parts.append(prefix + "[" + ",".join(map(encode_basestring_ascii, value)) + "]")  # type: ignore[call-overload]
        else:
            return canonical_json(fields)
    return ("{" + ",".join(parts) + "}").encode("ascii")


def row_hash(seq: int, event: AuditEvent, prev_hash: str) -> str:
    """``SHA-256(prev_hash || canonical(row without hash))`` as hex.

    Raises:
        ValueError: ``prev_hash`` is not 64 hex digits (a caller bug or a corrupt row).
    """
    previous = bytes.fromhex(prev_hash)
    if len(previous) != 32:
        raise ValueError("prev_hash must be 32 bytes of hex")
    return hashlib.sha256(previous + canonical_row(row_fields(seq, event, prev_hash))).hexdigest()


def link(previous: StoredEvent | None, event: AuditEvent, head: tuple[int, str] | None = None) -> StoredEvent:
    """Append ``event`` after ``previous`` (or after ``head = (seq, hash)``, or at the start)."""
    if previous is not None:
        seq, prev = previous.seq, previous.hash
    elif head is not None:
        seq, prev = head
    else:
        seq, prev = 0, GENESIS_HASH
    fields = row_fields(seq + 1, event, prev)
    digest = hashlib.sha256(bytes.fromhex(prev) + canonical_row(fields)).hexdigest()
    return StoredEvent(seq + 1, event, prev, digest, fields)


def checkpoint_bytes(seq: int, head_hash: str, time: str, kid: str) -> bytes:
    """The bytes a checkpoint signature covers (domain-separated from seals)."""
    return canonical({"domain": CHECKPOINT_DOMAIN, "v": FORMAT_VERSION, "seq": seq, "hash": head_hash,
                      "time": time, "key_id": kid})


def make_checkpoint(head: StoredEvent | tuple[int, str], signer: SigningKey, now: datetime) -> Checkpoint:
    """Sign the chain head ``head`` (a row or ``(seq, hash)``) with ``signer`` at ``now``."""
    seq, head_hash = (head.seq, head.hash) if isinstance(head, StoredEvent) else head
    time = format_time(now)
    signature = signer.sign(checkpoint_bytes(seq, head_hash, time, signer.key_id))
    return Checkpoint(seq, head_hash, time, signer.key_id, base64.b64encode(signature).decode("ascii"))


def event_from_fields(fields: dict[str, object]) -> AuditEvent:
    """Rebuild an ``AuditEvent`` from stored fields.

    Raises:
        ValueError: a field is malformed (unknown code, bad time, wrong type).
    """
    raw_roles = fields.get("roles", [])
    roles: list[object] = list(json.loads(raw_roles) if raw_roles else []) if isinstance(raw_roles, str) \
        else list(raw_roles) if isinstance(raw_roles, list | tuple) else []
    return AuditEvent(
        time=parse_time(str(fields["time"])),
        event=EventCode.from_code(str(fields["event"])),
        action=Action(str(fields["action"])),
        outcome=Outcome(int(str(fields["outcome"]))),
        transport=Transport(str(fields["transport"])),
        user=str(fields.get("user", "")),
        roles=tuple(str(r) for r in roles),
        source_ip=str(fields.get("source_ip", "")),
        calling_aet=str(fields.get("calling_aet", "")),
        called_aet=str(fields.get("called_aet", "")),
        route=str(fields.get("route", "")),
        patient_id=str(fields.get("patient_id", "")),
        study_uid=str(fields.get("study_uid", "")),
        series_uid=str(fields.get("series_uid", "")),
        instance_count=int(str(fields.get("instance_count", 0))),
        detail=str(fields.get("detail", "")),
    )


@dataclass(frozen=True, slots=True)
class ChainReport:
    """What ``inspect_chain`` found. ``ok`` is true only when nothing is wrong."""

    ok: bool
    rows: int
    last_seq: int
    head_hash: str
    checkpoints: int
    last_checkpoint_seq: int
    unsigned_tail: int
    first_broken_seq: int | None
    problems: tuple[str, ...] = field(default_factory=tuple)
    key_ids: tuple[str, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form for ``/hardening/audit/verify`` and the CLI."""
        return {
            "ok": self.ok,
            "rows": self.rows,
            "last_seq": self.last_seq,
            "head_hash": self.head_hash,
            "checkpoints": self.checkpoints,
            "last_checkpoint_seq": self.last_checkpoint_seq,
            "unsigned_tail": self.unsigned_tail,
            "first_broken_seq": self.first_broken_seq,
            "problems": list(self.problems),
            "key_ids": list(self.key_ids),
        }


_MAX_PROBLEMS = 100


def inspect_chain(rows: Iterable[StoredEvent], checkpoints: Iterable[Checkpoint], verifier: Verifier) -> ChainReport:
    """Replay the chain and the checkpoints; report every finding. Never raises on bad data.

    Args:
        rows: every stored row, in ascending ``seq`` order as the store returns them.
        checkpoints: every stored checkpoint (any order).
        verifier: accepts the current and trusted keys only.

    Returns:
        The report; ``first_broken_seq`` is the smallest sequence number at which the chain or a
        checkpoint stops matching.
    """
    problems: list[str] = []
    broken: list[int] = []

    def fail(seq: int, message: str) -> None:
        broken.append(seq)
        if len(problems) < _MAX_PROBLEMS:
            problems.append(message)

    hashes: dict[int, str] = {}
    checkpoint_list = list(checkpoints)
    wanted_seqs = {cp.seq for cp in checkpoint_list}

    expected_seq = 1
    previous_hash = GENESIS_HASH
    count = 0
    for row in rows:
        count += 1
        if row.seq != expected_seq:
            if row.seq > expected_seq:
                fail(expected_seq, f"seq {expected_seq}: row missing (next row is seq {row.seq})")
            else:
                fail(row.seq, f"seq {row.seq}: out of order or duplicated (expected seq {expected_seq})")
        if not hmac.compare_digest(row.prev_hash, previous_hash):
            fail(row.seq, f"seq {row.seq}: prev_hash does not match the hash of the row before it")
        try:
            computed = row_hash(row.seq, row.event, row.prev_hash)
        except ValueError:
            computed = ""
        if not hmac.compare_digest(computed, row.hash):
            fail(row.seq, f"seq {row.seq}: row content does not match its hash (edited)")
        previous_hash = row.hash
        expected_seq = row.seq + 1
        if row.seq in wanted_seqs:
            hashes[row.seq] = row.hash
    last_seq = expected_seq - 1

    key_ids: set[str] = set()
    valid_checkpoints: list[int] = []
    for cp in sorted(checkpoint_list, key=lambda c: c.seq):
        label = f"checkpoint at seq {cp.seq}"
        try:
            signature = base64.b64decode(cp.signature, validate=True)
            verifier.verify(cp.key_id, cp.signed_bytes(), signature)
        except IntegrityError as exc:
            fail(cp.seq, f"{label}: signature not accepted ({type(exc).__name__}: {exc})")
            continue
        except ValueError:
            fail(cp.seq, f"{label}: signature is not base64")
            continue
        key_ids.add(cp.key_id)
        if cp.seq > last_seq:
            fail(last_seq + 1, f"{label}: rows after seq {last_seq} are missing (truncated)")
            continue
        stored = hashes.get(cp.seq)
        if stored is None or not hmac.compare_digest(stored, cp.hash):
            fail(cp.seq, f"{label}: chain hash at seq {cp.seq} differs from the signed one")
            continue
        valid_checkpoints.append(cp.seq)

    if count and not valid_checkpoints:
        fail(1, "no checkpoint signed by a trusted key covers the chain")
    last_cp = max(valid_checkpoints, default=0)
    first = min(broken) if broken else None
    return ChainReport(
        ok=not broken,
        rows=count,
        last_seq=last_seq,
        head_hash=previous_hash if count else GENESIS_HASH,
        checkpoints=len(checkpoint_list),
        last_checkpoint_seq=last_cp,
        unsigned_tail=max(0, last_seq - last_cp),
        first_broken_seq=first,
        problems=tuple(problems),
        key_ids=tuple(sorted(key_ids)),
    )


def verify_chain(rows: Iterable[StoredEvent], checkpoints: Iterable[Checkpoint], verifier: Verifier) -> ChainReport:
    """Verify the chain and its checkpoints.

    Returns:
        The (good) report.

    Raises:
        AuditChainError: anything is wrong; the message names the first broken sequence number
            and the first problem found.
    """
    report = inspect_chain(rows, checkpoints, verifier)
    if not report.ok:
        first = report.problems[0] if report.problems else "chain does not verify"
        raise AuditChainError(f"audit chain broken at seq {report.first_broken_seq}: {first}")
    return report
