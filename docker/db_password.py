#!/usr/bin/env python3
"""Create the deployment's PostgreSQL password once, in a file only root reads.

``db_password.py FILE``: when FILE does not exist, write 32 random characters from the URL-safe
alphabet (letters, digits, ``-``, ``_``) with mode 0600; when it exists, keep it (a restart, or
an operator's own password written there before the first start) after checking it.

The file is read by the postgres service (``POSTGRES_PASSWORD_FILE``: its entry point reads it
as root before it drops to the postgres user, and sets the password when the cluster is
created) and by the orthanc service's entry point (``docker/instance_config.py``). It lives in
its own volume, so the postgres service sees this file and nothing else of the deployment.

Checked: one line, at most 100 characters (the postgres image warns above), and none of space,
tab, backslash or quotes. Orthanc's PostgreSQL plugin hands libpq a ``key=value`` connection
string without quoting: with Debian's orthanc-postgresql 5.0, ``a b`` fails ("missing "=" after
"b" in connection info string") and ``a\\b`` fails authentication. Standard library only.
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

MAXIMUM_LENGTH = 100
FORBIDDEN = frozenset(" \t\\'\"")


class PasswordError(ValueError):
    """A password that the deployment cannot pass on unchanged; the message says why."""


def check_password(password: str) -> None:
    """Check that ``password`` reaches PostgreSQL unchanged through every component.

    Raises:
        PasswordError: empty, too long, several lines, a control character or a character of
            ``FORBIDDEN``.
    """
    if not password:
        raise PasswordError("the PostgreSQL password is empty")
    if len(password) > MAXIMUM_LENGTH:
        raise PasswordError(f"the PostgreSQL password is longer than {MAXIMUM_LENGTH} characters")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in password):
        raise PasswordError("the PostgreSQL password holds a line break or another control character")
    found = sorted(FORBIDDEN.intersection(password))
    if found:
        raise PasswordError(
            f"the PostgreSQL password holds {', '.join(map(repr, found))}, which Orthanc's PostgreSQL plugin "
            "passes to libpq unquoted; use letters, digits and punctuation other than quotes and backslash"
        )


def ensure_password(path: Path) -> bool:
    """Create ``path`` with a random password unless it exists; return whether it was created.

    Raises:
        PasswordError: the existing file holds a password that ``check_password`` refuses.
        OSError: the file cannot be read or written.
    """
    if path.exists():
        text = path.read_text(encoding="utf-8")
        check_password(text[:-1] if text.endswith("\n") else text)
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    # token_urlsafe(24) gives 32 characters of [A-Za-z0-9_-]: 192 random bits.
    password = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(password)
    return True


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: db_password.py FILE", file=sys.stderr)
        return 2
    path = Path(argv[0])
    try:
        created = ensure_password(path)
    except (PasswordError, OSError) as exc:
        print(f"orthanc-hardening init: {path}: {exc}", file=sys.stderr)
        return 1
    os.chmod(path, 0o600)
    print(f"PostgreSQL password {'created' if created else 'kept'} in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
