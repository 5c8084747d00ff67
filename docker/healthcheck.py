#!/usr/bin/env python3
"""Health check of the orthanc service: healthy only while orthanc-hardening protects this Orthanc.

``GET /system`` answering 200 says little: Orthanc starts and answers it without the Python
plugin (a wrong ``Plugins`` path is only logged), with the Python plugin but without the
hardening script, on SQLite when the PostgreSQL plugin is missing, and the hardening plugin in
lockdown still lets Orthanc run. So this check asks, over HTTPS verified against the
deployment's CA, as the generated ``admin`` account:

- ``GET /system``: 200 (in lockdown the plugin answers 403 to every route, naming the failed
  checks); the storage area is the Python plugin's (the sealed storage, not PostgreSQL's or
  Orthanc's own); when ``postgresql-index`` is required, the index is a database plugin;
- ``GET /plugins``: every plugin named in ``HARDENING_HEALTHCHECK_PLUGINS`` (comma-separated,
  default ``python``) is loaded;
- ``GET /hardening/posture``: 200 with an empty ``lockdown`` (404 means the Python plugin runs
  without the hardening script).

The port and whether HTTPS is on come from the configuration the image generated
(``HARDENING_GENERATED_CONFIG``, default ``/tmp/orthanc.json``), the CA and the password from
``HARDENING_HOME``. Exit 0 when healthy; else 1, with one line per problem on stderr (Docker
shows it in ``docker inspect``). Standard library only. None of these routes is recorded in
the audit trail, so a check every 30 s does not fill it.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TIMEOUT = 3.0
# Orthanc's default HttpPort.
DEFAULT_HTTP_PORT = 8042
PYTHON_PLUGIN = "python"
INDEX_PLUGIN = "postgresql-index"


@dataclass(frozen=True, slots=True)
class Answer:
    """One HTTP answer: its status (0 when none came) and its JSON body (``None`` if not JSON)."""

    status: int
    body: Any = None
    error: str = ""


def required_plugins(environ: Mapping[str, str]) -> list[str]:
    """The plugin ids that must be loaded: ``HARDENING_HEALTHCHECK_PLUGINS``, always with ``python``."""
    names = [n.strip() for n in environ.get("HARDENING_HEALTHCHECK_PLUGINS", "").split(",") if n.strip()]
    return names if PYTHON_PLUGIN in names else [PYTHON_PLUGIN, *names]


def _describe(route: str, answer: Answer) -> str:
    if answer.status == 0:
        return f"GET {route}: no answer ({answer.error})"
    return f"GET {route} answered {answer.status}"


def _lockdown(answer: Answer) -> list[str] | None:
    body = answer.body
    if answer.status == 403 and isinstance(body, dict) and isinstance(body.get("failed_checks"), list):
        return [str(c) for c in body["failed_checks"]]
    return None


def diagnose(system: Answer, plugins: Answer, posture: Answer, required: list[str]) -> list[str]:
    """Return every reason the deployment is unhealthy (an empty list when healthy).

    Args:
        system: the answer to ``GET /system``.
        plugins: the answer to ``GET /plugins``.
        posture: the answer to ``GET /hardening/posture``.
        required: plugin ids that must be loaded.
    """
    for answer in (system, plugins, posture):
        failed = _lockdown(answer)
        if failed is not None:
            return [f"orthanc-hardening is in lockdown, failed critical checks: {', '.join(failed) or '?'}"]
    problems: list[str] = []
    if system.status != 200 or not isinstance(system.body, dict):
        problems.append(_describe("/system", system))
    else:
        storage = str(system.body.get("StorageAreaPlugin") or "Orthanc's own")
        if "OrthancPython" not in storage:
            problems.append(f"the storage area is {storage}, not the Python plugin's: files are not sealed")
        if INDEX_PLUGIN in required and not system.body.get("DatabaseBackendPlugin"):
            problems.append("the index is Orthanc's own SQLite, not PostgreSQL (DatabaseBackendPlugin is null)")
    if plugins.status != 200 or not isinstance(plugins.body, list):
        problems.append(_describe("/plugins", plugins))
    else:
        missing = [name for name in required if name not in plugins.body]
        if missing:
            problems.append(f"plugins not loaded: {', '.join(missing)} (loaded: {', '.join(map(str, plugins.body))})")
    if posture.status == 404:
        problems.append("GET /hardening/posture answered 404: the hardening plugin is not running")
    elif posture.status != 200 or not isinstance(posture.body, dict):
        problems.append(_describe("/hardening/posture", posture))
    elif posture.body.get("lockdown"):
        problems.append(f"orthanc-hardening is in lockdown: {', '.join(map(str, posture.body['lockdown']))}")
    return problems


def fetch(url: str, context: ssl.SSLContext, authorization: str) -> Answer:
    """GET ``url``; any failure becomes an ``Answer`` (status 0 when nothing came back)."""
    request = urllib.request.Request(url, headers={"Authorization": authorization, "Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, context=context, timeout=TIMEOUT) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    except (OSError, ValueError) as exc:
        return Answer(0, error=str(exc))
    try:
        return Answer(status, json.loads(raw))
    except ValueError:
        return Answer(status)


def check(environ: Mapping[str, str]) -> list[str]:
    """Run the health check; return the problems (see ``diagnose``)."""
    home = Path(environ.get("HARDENING_HOME", "/var/lib/orthanc-hardening"))
    generated = Path(environ.get("HARDENING_GENERATED_CONFIG", "/tmp/orthanc.json"))
    try:
        config = json.loads(generated.read_text(encoding="utf-8"))
        password = json.loads((home / "credentials.json").read_text(encoding="utf-8"))["admin"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return [f"cannot read the configuration or the admin password: {exc}"]
    if config.get("SslEnabled") is not True:
        return [f"HTTPS is off (SslEnabled is not true in {generated})"]
    port = config.get("HttpPort", DEFAULT_HTTP_PORT)
    context = ssl.create_default_context(cafile=str(home / "tls" / "ca.pem"))
    token = base64.b64encode(f"admin:{password}".encode()).decode("ascii")
    base = f"https://localhost:{port}"
    routes = ("/system", "/plugins", "/hardening/posture")
    answers = [fetch(base + route, context, f"Basic {token}") for route in routes]
    return diagnose(*answers, required=required_plugins(environ))


def main() -> int:
    problems = check(os.environ)
    for problem in problems:
        print(f"unhealthy: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
