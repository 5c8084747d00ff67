#!/usr/bin/env python3
"""Print the per-deployment Orthanc settings as one JSON document, for the image's ``ORTHANC_JSON``.

The image's entry point types the value of every ``ORTHANC__…`` variable with ``json.loads``:
a password ``20261201`` would become a number, ``true`` a boolean, ``[x]`` a list, and Orthanc
or its PostgreSQL plugin would refuse it or read something else. ``ORTHANC_JSON`` is parsed as
one JSON document, so the strings written here stay strings. It is merged over the files of
``/etc/orthanc`` like one more file.

What it holds:

- ``RegisteredUsers``: the accounts of ``credentials.json`` (made by the init service);
- ``PostgreSQL.Password``: the content of ``--db-password-file``;
- ``Hardening.Audit.Database``: ``--audit-database`` (a ``postgresql://user@host:port/db`` URL
  without password) with that password inserted, percent-encoded as RFC 3986 requires;
- ``Hardening.Database``: ``--database`` (the plugin's store, shared by the nodes of the
  archive; the same kind of URL), with the same password inserted.

An ``ORTHANC_JSON`` already in the environment (set by the operator) is kept and ours is added
to it; a key both set is refused with the key named, instead of one silently winning.

Usage: ``instance_config.py --credentials FILE [--db-password-file FILE] [--audit-database URL]
[--database URL]``.
Exits 1 with one line naming the problem. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from db_password import PasswordError, check_password


class InstanceConfigError(Exception):
    """The inputs cannot give a configuration; the message names the file, key or variable."""


def read_credentials(path: Path) -> dict[str, str]:
    """Return the accounts of ``credentials.json`` (``{"user": "password"}``).

    Raises:
        InstanceConfigError: the file is unreadable, not JSON, or not an object of strings.
    """
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InstanceConfigError(f"{path}: cannot read the accounts ({exc})") from exc
    if not isinstance(loaded, dict) or not loaded:
        raise InstanceConfigError(f"{path}: expected a JSON object of user names and passwords")
    for user, password in loaded.items():
        if not isinstance(password, str) or not password:
            raise InstanceConfigError(f"{path}: the password of {user!r} is not a non-empty string")
    return dict(loaded)


def read_password(path: Path) -> str:
    """Return the PostgreSQL password in ``path`` (one line; a final newline is not part of it).

    Raises:
        InstanceConfigError: unreadable, or a password Orthanc's PostgreSQL plugin cannot pass on.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, ValueError) as exc:
        raise InstanceConfigError(f"{path}: cannot read the PostgreSQL password ({exc})") from exc
    password = text[:-1] if text.endswith("\n") else text
    try:
        check_password(password)
    except PasswordError as exc:
        raise InstanceConfigError(f"{path}: {exc}") from exc
    return password


def audit_database_url(url: str, password: str, variable: str = "HARDENING_AUDIT_DATABASE") -> str:
    """Return ``url`` with ``password`` inserted after its user name, percent-encoded.

    Raises:
        InstanceConfigError: not a ``postgresql://user@host/db`` URL, or it carries a password
            already (the message names ``variable``).
    """
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise InstanceConfigError(f"{variable}: {parts.scheme!r} is not a PostgreSQL URL")
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at or not userinfo or not hostport:
        raise InstanceConfigError(f"{variable}: name the user and host: postgresql://user@host:port/db")
    if ":" in userinfo:
        raise InstanceConfigError(
            f"{variable}: holds a password; leave it out, the PostgreSQL password file provides it"
        )
    netloc = f"{userinfo}:{quote(password, safe='')}@{hostport}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def instance_config(
    credentials: dict[str, str], password: str | None, audit_database: str | None, database: str | None = None
) -> dict[str, Any]:
    """Return the generated keys (see the module docstring).

    Raises:
        InstanceConfigError: a database URL without a password to put in it.
    """
    config: dict[str, Any] = {"RegisteredUsers": dict(credentials)}
    if password is not None:
        config["PostgreSQL"] = {"Password": password}
    hardening: dict[str, Any] = {}
    if audit_database is not None:
        if password is None:
            raise InstanceConfigError("--audit-database needs --db-password-file")
        hardening["Audit"] = {"Database": audit_database_url(audit_database, password)}
    if database is not None:
        if password is None:
            raise InstanceConfigError("--database needs --db-password-file")
        hardening["Database"] = audit_database_url(database, password, "HARDENING_DATABASE")
    if hardening:
        config["Hardening"] = hardening
    return config


def merge_without_conflict(base: dict[str, Any], added: dict[str, Any], path: str = "") -> dict[str, Any]:
    """Return ``base`` with ``added`` merged in (objects recursively).

    Raises:
        InstanceConfigError: a key is set in both, other than as two objects; the key is named.
    """
    merged = dict(base)
    for key, value in added.items():
        name = f"{path}.{key}" if path else key
        if key not in merged:
            merged[key] = value
        elif isinstance(merged[key], dict) and isinstance(value, dict):
            merged[key] = merge_without_conflict(merged[key], value, name)
        else:
            raise InstanceConfigError(
                f"ORTHANC_JSON already sets {name}, which this entry point generates; remove it from ORTHANC_JSON"
            )
    return merged


def main(argv: list[str], environ: dict[str, str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--credentials", type=Path, required=True)
    parser.add_argument("--db-password-file", type=Path)
    parser.add_argument("--audit-database")
    parser.add_argument("--database")
    args = parser.parse_args(argv)
    try:
        password = read_password(args.db_password_file) if args.db_password_file else None
        generated = instance_config(read_credentials(args.credentials), password, args.audit_database,
                                    args.database)
        existing: Any = {}
        if environ.get("ORTHANC_JSON", "").strip():
            try:
                existing = json.loads(environ["ORTHANC_JSON"])
            except ValueError as exc:
                raise InstanceConfigError(f"ORTHANC_JSON is not plain JSON (no comments here): {exc}") from exc
            if not isinstance(existing, dict):
                raise InstanceConfigError("ORTHANC_JSON must be a JSON object")
        merged = merge_without_conflict(existing, generated)
    except InstanceConfigError as exc:
        print(f"orthanc-hardening entrypoint: {exc}", file=sys.stderr)
        return 1
    # ASCII only: any other character is escaped, so no locale can change the bytes.
    print(json.dumps(merged, ensure_ascii=True, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], dict(os.environ)))
