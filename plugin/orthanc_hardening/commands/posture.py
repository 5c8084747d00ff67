"""``python -m orthanc_hardening posture CONFIG``: the posture report without a running Orthanc.

Reads an Orthanc configuration as Orthanc does (one JSON file, or every ``*.json`` file of a
directory merged; ``//`` and ``/* */`` comments allowed; ``${VAR}`` replaced from the
environment), gathers the host facts (file modes, certificates, the libssl probe against the
Orthanc executable) and prints a table or JSON. Exit code 1 when a critical check fails, so
that CI pipelines can gate on it; 2 when the configuration cannot be read.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from orthanc_hardening.config import SECTION, HardeningConfig, load_config
from orthanc_hardening.errors import ConfigError
from orthanc_hardening.services import host_probe as host
from orthanc_hardening.services.tls_probe import measure_endpoints
from orthanc_hardening.tls.posture import PostureReport, Status, files_to_inspect, inspect_posture

DEFAULT_ORTHANC = Path("/usr/sbin/Orthanc")
_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def strip_comments(text: str) -> str:
    """Remove ``//`` and ``/* */`` comments outside JSON strings (Orthanc accepts them)."""
    out: list[str] = []
    index, length = 0, len(text)
    in_string = False
    while index < length:
        char = text[index]
        if in_string:
            out.append(char)
            if char == "\\" and index + 1 < length:
                out.append(text[index + 1])
                index += 2
                continue
            if char == '"':
                in_string = False
            index += 1
        elif char == '"':
            in_string = True
            out.append(char)
            index += 1
        elif text.startswith("//", index):
            end = text.find("\n", index)
            index = length if end < 0 else end
        elif text.startswith("/*", index):
            end = text.find("*/", index + 2)
            index = length if end < 0 else end + 2
        else:
            out.append(char)
            index += 1
    return "".join(out)


def substitute_environment(value: Any, env: Mapping[str, str]) -> Any:
    """Replace ``${VAR}`` in every string of a parsed configuration, as Orthanc does."""
    if isinstance(value, str):
        return _ENV_REFERENCE.sub(lambda m: env.get(m.group(1), ""), value)
    if isinstance(value, list):
        return [substitute_environment(item, env) for item in value]
    if isinstance(value, dict):
        return {key: substitute_environment(item, env) for key, item in value.items()}
    return value


def load_orthanc_configuration(path: Path, env: Mapping[str, str]) -> tuple[dict[str, Any], Path]:
    """Read an Orthanc configuration file or directory.

    Args:
        path: a JSON file, or a directory whose ``*.json`` files are merged (top-level keys).
        env: the environment for ``${VAR}`` substitution.

    Returns:
        The configuration and the directory relative paths are resolved against.

    Raises:
        ConfigError: the path cannot be read, a file is not JSON, or a key appears twice.
    """
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix == ".json" and p.is_file())
        base = path
    else:
        files = [path]
        base = path.parent
    merged: dict[str, Any] = {}
    for file in files:
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(str(file), f"cannot be read: {exc.strerror}") from exc
        try:
            parsed = json.loads(strip_comments(text))
        except ValueError as exc:
            raise ConfigError(str(file), f"is not valid JSON: {exc}") from exc
        if not isinstance(parsed, dict):
            raise ConfigError(str(file), "must hold a JSON object")
        for key, value in parsed.items():
            if key in merged:
                raise ConfigError(key, f"is set twice (again in {file.name})")
            merged[key] = value
    return substitute_environment(merged, env), base.resolve()


def build_report(
    config_path: Path,
    env: Mapping[str, str],
    now: dt.datetime,
    orthanc_binary: Path | None,
    library_path: str | None,
    measure: bool = False,
) -> tuple[PostureReport, str]:
    """Load a configuration, gather the host facts and run the checks.

    With ``measure``, the HTTPS and DICOM TLS endpoints the configuration names are measured on
    loopback (``services/tls_probe.py``): a running Orthanc on this host is judged by what it
    accepts; a stopped one gets "could not be measured".

    Returns:
        The report and the plugin mode (``"enforce"``, ``"monitor"`` or ``"not configured"``).

    Raises:
        ConfigError: the configuration cannot be read or its ``Hardening`` section is invalid.
    """
    config, base = load_orthanc_configuration(config_path, env)
    hardening: HardeningConfig | None = load_config(config) if SECTION in config else None
    wanted = files_to_inspect(config, hardening, base)
    libssl = None
    if orthanc_binary is not None and orthanc_binary.exists():
        libssl = host.probe_libssl_with(library_path, host.civetweb_of_binary(orthanc_binary))
    tls = measure_endpoints(config, base) if measure else None
    facts = host.gather_host_facts(wanted, base, libssl, tls=tls)
    report = inspect_posture(config, hardening, facts, now)
    return report, hardening.mode.value if hardening is not None else "not configured"


_MARK = {Status.PASS: "PASS", Status.WARN: "WARN", Status.FAIL: "FAIL"}


def render_table(report: PostureReport, mode: str, color: bool) -> str:
    """Return the report as a fixed-width table (one block per check that is not a pass)."""
    paint = {
        Status.PASS: "\033[32m",
        Status.WARN: "\033[33m",
        Status.FAIL: "\033[31m",
    }
    reset = "\033[0m" if color else ""
    width = max(len(c.id) for c in report.checks)
    lines = [f"{'STATUS':<6}  {'SEVERITY':<8}  {'CHECK':<{width}}  EVIDENCE"]
    for check in report.checks:
        mark = _MARK[check.status]
        shown = f"{paint[check.status]}{mark:<6}{reset}" if color else f"{mark:<6}"
        lines.append(f"{shown}  {check.severity.value:<8}  {check.id:<{width}}  {check.evidence}")
        if check.status is not Status.PASS and check.remedy:
            lines.append(f"{'':<6}  {'':<8}  {'':<{width}}  -> {check.remedy}")
    critical = report.critical_failures
    lines.append("")
    lines.append(
        f"mode: {mode}; {len(report.failed)} failed, "
        f"{sum(c.status is Status.WARN for c in report.checks)} warnings, "
        f"{len(critical)} critical"
        + (f" ({', '.join(c.id for c in critical)})" if critical else "")
    )
    if report.certificate_days_left is not None:
        lines.append(f"certificate days left: {report.certificate_days_left}")
    return "\n".join(lines)


def run(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """Print the report; return 1 when a critical check fails, else 0."""
    orthanc_binary = None if args.no_orthanc_probe else Path(args.orthanc)
    report, mode = build_report(
        Path(args.config),
        os.environ,
        dt.datetime.now(dt.timezone.utc),
        orthanc_binary,
        args.ld_library_path,
        measure=args.measure_tls,
    )
    if args.format == "json":
        lockdown = [c.id for c in report.critical_failures] if mode == "enforce" else []
        out.write(json.dumps(report.to_json(mode, lockdown), indent=2) + "\n")
    else:
        color = args.color == "always" or (args.color == "auto" and out.isatty())
        out.write(render_table(report, mode, color) + "\n")
    return 1 if report.critical_failures else 0


def register(subparsers: Any) -> None:
    """Add the ``posture`` command."""
    parser = subparsers.add_parser(
        "posture",
        help="report the security posture of an Orthanc configuration (exit 1 on a critical failure)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", help="orthanc.json, or a directory of JSON files as Orthanc accepts")
    parser.add_argument("--format", choices=("table", "json"), default="table")
    parser.add_argument("--color", choices=("auto", "always", "never"), default="auto")
    parser.add_argument(
        "--orthanc",
        default=str(DEFAULT_ORTHANC),
        help="the Orthanc executable to probe for Debian's civetweb/OpenSSL 3 crash (default %(default)s)",
    )
    parser.add_argument(
        "--ld-library-path",
        default=None,
        help="LD_LIBRARY_PATH Orthanc runs with (default: this shell's), e.g. build/libssl-shim",
    )
    parser.add_argument("--no-orthanc-probe", action="store_true", help="skip the libssl probe")
    parser.add_argument("--measure-tls", action="store_true",
                        help="measure the TLS versions and suites the configured endpoints (a running Orthanc on "
                             "this host) accept on loopback")
    parser.set_defaults(handler=run)
