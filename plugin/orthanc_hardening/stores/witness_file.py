"""A witness file: witnessed checkpoints appended, one line each, to a file outside ``DataDirectory``.

The plugin only ever opens it with ``O_APPEND`` and fsyncs each line. That alone does not stop
root from rewriting it; what makes it a witness is where it lives: another file system, a
file the operating system keeps append-only (``chattr +a``), a directory synchronised to
another host, or a copy an auditor takes. The README says which.
"""

from __future__ import annotations

import os
from pathlib import Path

from orthanc_hardening.audit.witness import WitnessedCheckpoint
from orthanc_hardening.errors import AuditChainError, StoreUnavailableError

_TAIL = 8192


class WitnessFile:
    """Append and read the lines of one witness file."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def append(self, line: WitnessedCheckpoint) -> None:
        """Append one line durably.

        Raises:
            StoreUnavailableError: the file cannot be written.
        """
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                os.write(fd, line.to_line())
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise StoreUnavailableError(f"witness file {self.path} cannot be written: {exc.strerror}") from exc

    def last(self) -> WitnessedCheckpoint | None:
        """The newest line (``None`` for a missing or empty file).

        Raises:
            AuditChainError: the last line is malformed.
            StoreUnavailableError: the file exists but cannot be read.
        """
        try:
            with open(self.path, "rb") as handle:
                handle.seek(0, os.SEEK_END)
                size = handle.tell()
                handle.seek(max(0, size - _TAIL))
                tail = handle.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreUnavailableError(f"witness file {self.path} cannot be read: {exc.strerror}") from exc
        lines = [line for line in tail.split(b"\n") if line.strip()]
        return WitnessedCheckpoint.from_line(lines[-1]) if lines else None

    def lines(self) -> list[WitnessedCheckpoint]:
        """Every line, in file order.

        Raises:
            AuditChainError: a line is malformed (names its line number).
            StoreUnavailableError: the file cannot be read.
        """
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise StoreUnavailableError(f"witness file {self.path} cannot be read: {exc.strerror}") from exc
        found = []
        for number, line in enumerate(data.split(b"\n"), start=1):
            if not line.strip():
                continue
            try:
                found.append(WitnessedCheckpoint.from_line(line))
            except AuditChainError as exc:
                raise AuditChainError(f"{self.path} line {number}: {exc}") from exc
        return found
