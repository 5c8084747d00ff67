"""Typed wiring: every feature built at start from the objects it needs, in one place.

Each feature's ``install`` takes the features it depends on as typed arguments and returns its
own object; nothing is looked up by name, so a missing or failed dependency is an error at start
(Orthanc does not serve), never a silently skipped check. The order is the order of dependence:

1. the key ring (``stores/key_files.py``) and the signature cache;
2. the audit trail (every later feature records into it; a Security Alert needs it first);
3. the TLS gate, *before any other route* (Orthanc serves a URI with the first plugin route that
   matches: the lockdown catch-all must win), then the permission gate (first of the HTTP gates);
4. the storage area (seals, verification), then what builds on it: archives, the seal and key
   routes, the audit hooks, verified queries and C-FIND, manifests and the scrub, C-MOVE, the
   DIMSE side of the lockdown;
5. the review page and the syslog export; last, the shared callbacks (HTTP filter, C-STORE
   filter, change callback) that run the chains the features filled.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orthanc_hardening.config import HardeningConfig, take_passphrase
from orthanc_hardening.seal.keys import KeyRing
from orthanc_hardening.services.audit_export import AuditExporter
from orthanc_hardening.shell import (
    archives,
    audit_hooks,
    binding,
    body_limits,
    cmove,
    ingest_limits,
    job_routes,
    permissions,
    query,
    reset,
    review,
    scrub,
    seal_routes,
    storage,
    tls_gate,
)
from orthanc_hardening.shell.ahead import Ahead
from orthanc_hardening.shell.audit_hooks import AuditHooks, AuditTrail
from orthanc_hardening.shell.callbacks import install_callbacks
from orthanc_hardening.shell.cmove import MoveHandler
from orthanc_hardening.shell.metrics import Metrics
from orthanc_hardening.shell.orthanc_api import OrthancApi, capabilities_of
from orthanc_hardening.shell.query import QueryVerifier
from orthanc_hardening.shell.runtime import Runtime, utc_now
from orthanc_hardening.shell.scrub import ManifestService, ScrubService
from orthanc_hardening.shell.storage import SealedStorage
from orthanc_hardening.shell.tls_gate import TLSGate
from orthanc_hardening.stores import key_files
from orthanc_hardening.stores.signature_cache import SignatureCache


@dataclass(frozen=True)
class Plugin:
    """Every feature of the running plugin (for tests and for reading; built once by ``build``)."""

    runtime: Runtime
    keys: KeyRing
    cache: SignatureCache
    trail: AuditTrail
    tls: TLSGate
    storage: SealedStorage
    archives: archives.Archives
    audit: AuditHooks
    queries: QueryVerifier
    manifests: ManifestService
    scrub: ScrubService
    moves: MoveHandler
    exporter: AuditExporter | None


def load_keys(config: HardeningConfig, passphrase: bytes | None, runtime_clock: Any = utc_now) -> KeyRing:
    """The key ring: the signing key (decrypted with its passphrase) and the trusted keys.

    Raises:
        ConfigError: a key cannot be loaded.
        KeyRegistryError: the key registry or its anchor does not verify.
    """
    return key_files.load_key_ring(config.signing_key, passphrase, config.key_directory, config.trusted_keys,
                                   runtime_clock(), config.key_registry_anchor)


logger = logging.getLogger(__name__)

# Orthanc before 1.12.2 + Python plugin 4.0: README, "No single request stops, hangs or crashes it".
DICOMWEB_HANG_WARNING = (
    "Orthanc before 1.12.2 with the DICOMweb plugin loaded ({plugins}): a call of this plugin into Orthanc "
    "(HTTP filter, verified query, REST stand-in) that meets a DICOMweb read in flight can hang Orthanc for good "
    "(Python plugin 4.0 keeps Python's lock during the call; Orthanc's plugin-context lock is held by the read, "
    "which waits for Python's lock). Use Orthanc 1.12.2 or later for DICOMweb under concurrent load, or serve "
    "DICOMweb from another node (README, 'No single request stops, hangs or crashes it')")


def dicomweb_plugins(entries: Iterable[str]) -> list[str]:
    """The DICOMweb plugin files among Orthanc's ``Plugins`` entries (a directory: the files in it)."""
    found: list[str] = []
    for entry in entries:
        path = Path(str(entry))
        try:
            files = sorted(path.iterdir()) if path.is_dir() else [path]
        except OSError:
            continue
        found.extend(str(f) for f in files if "dicomweb" in f.name.lower())
    return found


def warn_if_dicomweb_can_hang(orthanc_config: Mapping[str, Any], shared_plugin_context: bool) -> bool:
    """Log, at start, that DICOMweb under concurrent load can hang this Orthanc; ``True`` when it did."""
    if shared_plugin_context:
        return False
    entries = orthanc_config.get("Plugins", [])
    plugins = dicomweb_plugins(entries if isinstance(entries, list) else [])
    if not plugins:
        return False
    logger.warning(DICOMWEB_HANG_WARNING.format(plugins=", ".join(plugins)))
    return True


def build(orthanc: OrthancApi, config: HardeningConfig, orthanc_config: Mapping[str, Any]) -> Plugin:
    """Build and register every feature (see the module docstring for the order).

    Raises:
        ConfigError: the configuration or a key is unusable.
        StoreUnavailableError: a store cannot be opened.
    """
    # Read once, then gone from the environment (children of Orthanc do not inherit it); the
    # key rotation route gets it from here.
    passphrase = take_passphrase(config, os.environ)
    keys = load_keys(config, passphrase)
    cache = SignatureCache()
    trail = audit_hooks.open_trail(orthanc, config, keys, utc_now)
    metrics = Metrics(orthanc)
    shared_context = capabilities_of(orthanc).shared_plugin_context
    if not shared_context:
        metrics.defer_pushes()  # pushed when Prometheus scrapes (shell/metrics.py)
    warn_if_dicomweb_can_hang(orthanc_config, shared_context)
    runtime = Runtime(orthanc=orthanc, config=config, orthanc_config=orthanc_config, metrics=metrics,
                      audit=trail.sink, clock=utc_now)
    tls = tls_gate.install_early(runtime)
    permissions.install(runtime)
    reset.install(runtime)
    # Uploads' hashes and identities, prepared while Orthanc parses them (shell/ahead.py).
    ahead = Ahead()
    runtime.stop_actions.append(ahead.stop)
    ingest_limits.install(runtime, ahead)
    body_limits.install(runtime)
    job_routes.install(runtime)
    sealed = storage.install(runtime, keys, cache, ahead)
    binding.install(runtime, sealed.sealed, sealed.attachments_of, sealed.index_binding)
    archive_routes = archives.install(runtime, sealed)
    seal_routes.install(runtime, sealed, passphrase)
    hooks = audit_hooks.install(runtime, trail, sealed)
    queries = query.install(runtime, sealed, hooks)
    manifests, scrubber = scrub.install(runtime, sealed)
    moves = cmove.install(runtime, hooks, tls.outgoing, sealed)
    tls_gate.install_dimse(runtime, sealed)
    exporter = review.install(runtime)
    install_callbacks(runtime)
    return Plugin(runtime, keys, cache, trail, tls, sealed, archive_routes, hooks, queries, manifests, scrubber,
                  moves, exporter)
