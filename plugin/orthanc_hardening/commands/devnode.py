"""A ``make run`` instance as one node of an archive shared by several Orthanc (``devsetup``).

Several nodes form one archive when they share three things: Orthanc's index (in PostgreSQL,
through Orthanc's PostgreSQL plugin), the storage folder (the plugin's sealed storage area
writes and reads the files there) and the plugin's own store (``Hardening.Database``, the same
PostgreSQL database). A node that *joins* a running one also takes its trust: the development
CA (it issues its own server certificate from it), the client certificate, the accounts, the
signing key with its passphrase and the key registry, so that a seal made on one node verifies
on every other and a client trusts every node alike.

What stays per node: its home (``HARDENING_HOME``: server certificate, logs, the generated
configuration), its ports and AET, and its ``DatabaseServerIdentifier``.

The checks (``check_join_home``, ``check_postgres``, ``check_storage``) raise ``SystemExit``
with a sentence that names the variable to fix; ``node_configuration`` is pure.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from orthanc_hardening.commands.posture import strip_comments

POSTGRESQL_INDEX_PLUGIN = "/usr/share/orthanc/plugins/libOrthancPostgreSQLIndex.so"

# What a node home holds that another node takes when it joins (relative to the homes).
# The CA key comes along: the joining node issues its own server certificate from it.
JOINED_FILES = (
    "tls/ca.pem",
    "tls/ca.key",
    "tls/client.pem",
    "tls/client.key",
    "keys/seal-key.pem",
    "keys/passphrase",
    "keys/seal-key.pem.registry-anchor.json",
    "credentials.json",
)
# Required for a directory to be a node home (the anchor exists once the node has started).
REQUIRED_FILES = ("tls/ca.pem", "tls/ca.key", "keys/seal-key.pem", "keys/passphrase", "credentials.json")
# The key registry in DataDirectory ($HARDENING_HOME/hardening), copied while it is a file.
REGISTRY_FILE = "hardening/keys/registry.json"


def check_join_home(join: Path, home: Path) -> None:
    """Check that ``join`` is the home of a node (not this node's own home).

    Raises:
        SystemExit: ``join`` is missing, is ``home`` itself, or lacks a file every node home has.
    """
    if not join.is_dir():
        raise SystemExit(f"HARDENING_JOIN={join}: no such directory (give the HARDENING_HOME of a running node)")
    if join.resolve() == home.resolve():
        raise SystemExit(f"HARDENING_JOIN={join} is this node's own HARDENING_HOME: give another node's home")
    missing = [name for name in REQUIRED_FILES if not (join / name).is_file()]
    if missing:
        raise SystemExit(f"HARDENING_JOIN={join} is not the home of a node (missing {', '.join(missing)}): "
                         "give the HARDENING_HOME of a node started with make run")


def join_home(join: Path, home: Path) -> list[str]:
    """Copy the shared trust of node home ``join`` into ``home``; return what was copied.

    A file ``home`` already holds must be the same as the joined node's: a home that made its
    own CA or signing key cannot join (it would serve certificates or seals no other node
    trusts).

    Raises:
        SystemExit: ``join`` is not a node home, or ``home`` already has different trust files.
    """
    check_join_home(join, home)
    conflicting = [
        name for name in JOINED_FILES
        if (join / name).is_file() and (home / name).is_file()
        and (join / name).read_bytes() != (home / name).read_bytes()
    ]
    if conflicting:
        raise SystemExit(f"HARDENING_HOME={home} already has its own {', '.join(conflicting)}, different from "
                         f"HARDENING_JOIN={join}: a node joins with a fresh HARDENING_HOME")
    copied = []
    for name in (*JOINED_FILES, REGISTRY_FILE):
        source, target = join / name, home / name
        if source.is_file() and not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            shutil.copy2(source, target)
            copied.append(name)
    return copied


def redacted(url: str) -> str:
    """``url`` without its password (for messages)."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def check_postgres(url: str) -> None:
    """Connect once to ``url`` (libpq URL), so that a wrong URL fails before Orthanc starts.

    Raises:
        SystemExit: not a ``postgresql://`` URL, or PostgreSQL cannot be reached with it.
    """
    if not url.startswith(("postgresql://", "postgres://")):
        raise SystemExit(f"HARDENING_POSTGRES={redacted(url)}: expected a libpq URL postgresql://user@host:port/database")
    import psycopg  # the plugin's dependency, in the venv devsetup runs from

    try:
        with psycopg.connect(url, connect_timeout=5) as connection:
            connection.execute("SELECT 1")
    except psycopg.Error as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SystemExit(f"HARDENING_POSTGRES={redacted(url)}: PostgreSQL unreachable: {reason}") from exc


def check_storage(storage: Path) -> None:
    """Check that the shared storage folder exists (or can be made) and is writable.

    Raises:
        SystemExit: the folder cannot be created or written.
    """
    try:
        storage.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=storage, prefix=".node-write-check-"):
            pass
    except OSError as exc:
        raise SystemExit(f"HARDENING_STORAGE={storage}: the storage folder is not writable ({exc.strerror})") from exc


def node_configuration(base_text: str, postgres_url: str, storage: Path) -> dict[str, Any]:
    """The repository's ``orthanc.json`` (text, comments allowed) turned into a node's.

    The index moves to PostgreSQL (Orthanc's PostgreSQL plugin: ``EnableIndex``, never its
    storage, which would bypass the seals), unlocked so that several Orthanc share it, with
    retries on serialization conflicts and lost connections; the files go to the shared
    ``storage``; the plugin's store goes to the same database. ``${VAR}`` references stay for
    Orthanc to expand.

    Raises:
        ValueError: ``base_text`` is not a JSON object.
    """
    config = json.loads(strip_comments(base_text))
    if not isinstance(config, dict):
        raise ValueError("orthanc.json must hold a JSON object")
    plugins = [p for p in config.get("Plugins", []) if p != POSTGRESQL_INDEX_PLUGIN]
    config["Plugins"] = [*plugins, POSTGRESQL_INDEX_PLUGIN]
    config["StorageDirectory"] = str(storage)
    # The plugin's stores and the audit trail in the same database (Hardening.Database; the
    # audit trail's own key is set in orthanc.json, so it is set here too).
    section = config.setdefault("Hardening", {})
    section["Database"] = postgres_url
    section["Audit"] = {**section.get("Audit", {}), "Database": postgres_url}
    config["PostgreSQL"] = {
        "EnableIndex": True,
        "EnableStorage": False,
        "ConnectionUri": postgres_url,
        "Lock": False,
        "MaximumConnectionRetries": 10,
        "ConnectionRetryInterval": 2,
        "IndexConnectionsCount": 2,
    }
    return config


def write_node_configuration(path: Path, config: Mapping[str, Any]) -> None:
    """Write the generated configuration to ``path`` (mode 0600: it holds the database URL).

    ``path`` may be the link to the repository's ``orthanc.json`` a single-node run left: the
    link is removed first, never written through.
    """
    if path.is_symlink() or path.exists():
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write("// Generated by devsetup from the repository's orthanc.json for a node of a shared archive;\n"
                     "// rewritten on every start (edit the repository's orthanc.json instead).\n")
        json.dump(config, handle, indent=2)
        handle.write("\n")
