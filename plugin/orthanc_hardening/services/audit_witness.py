"""The audit trail's witnesses: every signed checkpoint also goes to a place outside the audit database.

``AuditWitness`` observes the writer's checkpoints (``AuditWriter(on_checkpoint=…)``) and appends
each, as a ``WitnessedCheckpoint`` linked to the one before it, to the witness file. At start,
``check_log_extends_witness`` refuses (before the writer signs anything) a log whose head does
not extend the witness's newest checkpoint, so the plugin never blesses a rewritten log with a
checkpoint of its own. A witness that cannot be written is logged and counted; the events are
durable in the store whatever the witness does.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime

from orthanc_hardening.audit.chain import Checkpoint
from orthanc_hardening.audit.witness import WitnessedCheckpoint, check_extends, witness_checkpoint
from orthanc_hardening.errors import StoreUnavailableError
from orthanc_hardening.seal.keys import SigningKey, Verifier
from orthanc_hardening.stores.audit_store import AuditStore
from orthanc_hardening.stores.witness_file import WitnessFile

logger = logging.getLogger(__name__)


def check_log_extends_witness(store: AuditStore, witness: WitnessFile,
                              verifier: Verifier) -> WitnessedCheckpoint | None:
    """Check that the audit log extends the witness's newest checkpoint; return that checkpoint.

    Raises:
        AuditChainError: the log was cut or rewritten behind the witness's back, or the
            witness's newest line is not signed by a trusted key.
        StoreUnavailableError: the store or the witness cannot be read.
    """
    last = witness.last()
    if last is None:
        return None
    head = store.head()
    rows = store.read_after(last.seq - 1, 1) if last.seq >= 1 else []
    found = rows[0].hash if rows and rows[0].seq == last.seq else None
    check_extends(last, head, found, verifier)
    return last


class AuditWitness:
    """Appends every committed checkpoint to the witness file (the writer's ``on_checkpoint``)."""

    def __init__(self, witness: WitnessFile, last: WitnessedCheckpoint | None, signer: Callable[[], SigningKey],
                 clock: Callable[[], datetime]) -> None:
        self._witness = witness
        self._last = last
        self._signer = signer
        self._clock = clock
        self._lock = threading.Lock()
        self.failures = 0

    @property
    def last(self) -> WitnessedCheckpoint | None:
        return self._last

    def __call__(self, checkpoint: Checkpoint) -> None:
        with self._lock:
            if self._last is not None and checkpoint.seq <= self._last.seq:
                return  # a checkpoint over a head the witness already holds
            line = witness_checkpoint(checkpoint.seq, checkpoint.hash, self._last, self._signer(), self._clock())
            try:
                self._witness.append(line)
            except StoreUnavailableError as exc:
                self.failures += 1
                logger.error("audit witness not written (checkpoint at seq %d): %s", checkpoint.seq, exc)
                return
            self._last = line
