"""The imperative shell: the only code that talks to Orthanc.

``install(orthanc)`` reads the configuration, opens the stores, and wires every feature into
Orthanc's callbacks. An invalid configuration stops Orthanc from starting: one log line names
the key and the problem, then the exception propagates and Orthanc exits without serving.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from orthanc_hardening.config import load_config
from orthanc_hardening.errors import ConfigError
from orthanc_hardening.shell import tls_gate
from orthanc_hardening.shell.guard import use_capabilities
from orthanc_hardening.shell.hooks import install_hooks
from orthanc_hardening.shell.logsink import install_logging
from orthanc_hardening.shell.metrics import Metrics
from orthanc_hardening.shell.orthanc_api import PinnedOrthanc, unwrap
from orthanc_hardening.shell.runtime import Runtime

logger = logging.getLogger(__name__)


def install(orthanc: Any) -> Runtime:
    """Wire orthanc-hardening into a running Orthanc.

    Args:
        orthanc: the ``orthanc`` module of the Python plugin (or a fake in tests).

    Returns:
        The runtime, for tests.

    Raises:
        ConfigError: the configuration is invalid; Orthanc must not start.
    """
    orthanc = PinnedOrthanc(unwrap(orthanc))
    use_capabilities(orthanc.capabilities)
    install_logging(orthanc)
    orthanc_config = json.loads(orthanc.GetConfiguration())
    try:
        config = load_config(orthanc_config)
        runtime = Runtime(orthanc=orthanc, config=config, orthanc_config=orthanc_config, metrics=Metrics(orthanc))
        # Orthanc serves a URI with the first plugin route that matches it: the TLS routes
        # (the lockdown catch-all above all) are registered before any other feature's.
        tls_gate.install_early(runtime)
        for feature in _features():
            feature(runtime)
    except ConfigError as exc:
        orthanc.LogError(f"orthanc-hardening refuses to start: {exc.key}: {exc.problem}")
        raise
    install_hooks(runtime)
    logger.warning("orthanc-hardening started in %s mode", config.mode.value)
    return runtime


def _features() -> list[Any]:
    # Order matters: the storage area loads the signing keys (which the audit checkpoints use
    # too) and must be registered during initialisation; query verification and the scrub
    # build on the seal store; then the audit store, which records the start event and hooks
    # into reads and writes; then the TLS gatekeepers; the review page and syslog export last.
    from orthanc_hardening.shell import audit_hooks, query, review, scrub, storage, tls_gate

    return [storage.install, query.install, scrub.install, audit_hooks.install, tls_gate.install, review.install]
