"""Forward the package's ``logging`` records to Orthanc's log."""

from __future__ import annotations

import logging
from typing import Any

PACKAGE = "orthanc_hardening"


class OrthancLogHandler(logging.Handler):
    """A logging handler that writes through ``orthanc.LogInfo/LogWarning/LogError``."""

    def __init__(self, orthanc: Any) -> None:
        super().__init__()
        self._orthanc = orthanc

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = "[hardening] " + self.format(record)
            if record.levelno >= logging.ERROR:
                self._orthanc.LogError(message)
            elif record.levelno >= logging.WARNING:
                self._orthanc.LogWarning(message)
            else:
                self._orthanc.LogInfo(message)
        except Exception:
            self.handleError(record)


def install_logging(orthanc: Any) -> None:
    """Attach one ``OrthancLogHandler`` to the package logger (idempotent)."""
    logger = logging.getLogger(PACKAGE)
    if any(isinstance(h, OrthancLogHandler) for h in logger.handlers):
        return
    logger.addHandler(OrthancLogHandler(orthanc))
    logger.setLevel(logging.INFO)
    logger.propagate = False
