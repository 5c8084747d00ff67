"""``python -m orthanc_hardening``: offline tools for administrators and auditors.

Each command group lives in ``commands/<group>.py`` and exposes ``register(subparsers)``;
a command's handler takes the parsed arguments and returns the process exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from orthanc_hardening import __version__
from orthanc_hardening.errors import HardeningError

_GROUPS = ("devsetup", "posture", "keys", "seal", "audit", "scrub")


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser with every available command group."""
    parser = argparse.ArgumentParser(prog="python -m orthanc_hardening", description=__doc__)
    parser.add_argument("--version", action="version", version=f"orthanc-hardening {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for group in _GROUPS:
        try:
            module = importlib.import_module(f"orthanc_hardening.commands.{group}")
        except ModuleNotFoundError as exc:
            if exc.name == f"orthanc_hardening.commands.{group}":
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (2 on a usage or data error)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except HardeningError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
