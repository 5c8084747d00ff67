"""orthanc-hardening: TLS enforcement, seals, verification and an audit trail for Orthanc.

Everything in this package except ``shell/`` is pure: it never imports ``orthanc``, never
reads the clock, the environment or global configuration; callers pass them in.
"""

from __future__ import annotations

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
