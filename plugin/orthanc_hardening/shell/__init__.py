"""The imperative shell: the only code that talks to Orthanc.

``install(orthanc)`` reads the configuration and builds every feature (``shell/plugin.py``). An
invalid configuration, an unusable key or a store that cannot be opened stops Orthanc from
starting: one log line names the key or the store, then the exception propagates and Orthanc
exits without serving.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from orthanc_hardening.config import check_python_threads, load_config
from orthanc_hardening.errors import ConfigError, IntegrityError, KeyRegistryError, StoreUnavailableError
from orthanc_hardening.shell.guard import use_capabilities
from orthanc_hardening.shell.logsink import install_logging
from orthanc_hardening.shell.orthanc_api import PinnedOrthanc, unwrap
from orthanc_hardening.shell.plugin import Plugin, build

logger = logging.getLogger(__name__)


def install(orthanc: Any) -> Plugin:
    """Wire orthanc-hardening into a running Orthanc.

    Args:
        orthanc: the ``orthanc`` module of the Python plugin (or a fake in tests).

    Returns:
        The plugin's features, for tests.

    Raises:
        ConfigError: the configuration is invalid; Orthanc must not start.
        StoreUnavailableError: a store cannot be opened; Orthanc must not start.
        KeyRegistryError: the key registry does not verify; Orthanc must not start.
        AuditChainError: the audit log does not extend its witness; Orthanc must not start.
    """
    orthanc = PinnedOrthanc(unwrap(orthanc))
    use_capabilities(orthanc.capabilities)
    install_logging(orthanc)
    orthanc_config = json.loads(orthanc.GetConfiguration())
    try:
        config = load_config(orthanc_config)
        check_python_threads(orthanc_config, orthanc.capabilities.loader_threads)
        plugin = build(orthanc, config, orthanc_config)
    except ConfigError as exc:
        orthanc.LogError(f"orthanc-hardening refuses to start: {exc.key}: {exc.problem}")
        raise
    except KeyRegistryError as exc:
        orthanc.LogError(f"orthanc-hardening refuses to start: key registry: {exc}")
        raise
    except IntegrityError as exc:  # the audit log does not extend what its witness saw
        orthanc.LogError(f"orthanc-hardening refuses to start: {type(exc).__name__}: {exc}")
        raise
    except StoreUnavailableError as exc:
        orthanc.LogError(f"orthanc-hardening refuses to start: {exc}")
        raise
    logger.warning("orthanc-hardening started in %s mode", config.mode.value)
    return plugin
