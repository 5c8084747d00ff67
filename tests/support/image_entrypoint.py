#!/usr/bin/env python3
"""Stand-in for the orthancteam/orthanc image's ``/docker-entrypoint.sh`` (end-to-end test only).

What it does as the real one does (``docker/orthanc/docker-entrypoint.sh`` of the image's builder
repository, tag 26.8.1):

- exits 2 with the same message unless it gets exactly one argument;
- generates the configuration with the image's rules (``tests/support/orthanc_image.py``:
  the ``*.json`` files of ``/etc/orthanc`` and ``/run/secrets``, ``ORTHANC_JSON``, the
  ``ORTHANC__*`` variables, the defaults, the plugin switches), links the enabled plugins into
  the image's plugin folder and writes ``/tmp/orthanc.json``; exits with the image's status
  when the image would refuse to start (deprecated variables, errors, no user);
- starts ``Orthanc [--verbose] ARGUMENT`` from ``/startup`` (``exec``: Orthanc gets the
  signals), ``--trace`` or ``--verbose`` when ``TRACE_ENABLED`` or ``VERBOSE_ENABLED`` is ``true``.

Where it differs: every image path is under ``HARDENING_TEST_IMAGE_ROOT`` (a temporary tree
laid out like the container); ``Orthanc`` is Debian's build found on ``PATH``, and the plugins
folder holds Debian's libraries, so libraries Debian does not package (Orthanc Explorer 2,
GDCM) are skipped and listed instead of failing; the host id generation, ``LOGDIR``/``LOGFILE``,
``NO_JOBS``, ``BEFORE_ORTHANC_STARTUP_SCRIPT`` and the Java switch are left out (the deployment
sets none of them). What it generated is also written to ``/tmp/orthanc-image-report.json``
(enabled plugins, linked and missing libraries) for the test to check.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support.orthanc_image import EXIT_USAGE, ImageConfigError, ImageLayout, generate, write  # noqa: E402

REPORT = "/tmp/orthanc-image-report.json"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("FATAL ERROR: docker-entrypoint.sh expects a single parameter: the path to the configuration files(s)")
        return EXIT_USAGE
    root = os.environ.get("HARDENING_TEST_IMAGE_ROOT", "")
    layout = ImageLayout(root=root)
    try:
        result = generate(os.environ, layout, link=True)
    except ImageConfigError as exc:
        print(f"ERROR: {exc}")
        return exc.status
    write(result, layout)
    report = {
        "enabled_plugins": result.enabled_plugins,
        "linked_libs": [str(p) for p in result.linked_libs],
        "missing_libs": result.missing_libs,
        "warnings": result.warnings,
    }
    layout.path(REPORT).write_text(json.dumps(report, indent=2), encoding="utf-8")
    for lib in result.missing_libs:
        print(f"image stand-in: {lib} is not packaged here; the image would link it", file=sys.stderr)
    startup = layout.path(layout.startup_dir)
    startup.mkdir(parents=True, exist_ok=True)
    os.chdir(startup)
    command = ["Orthanc"]
    if os.environ.get("TRACE_ENABLED") == "true":
        command.append("--trace")
    elif os.environ.get("VERBOSE_ENABLED") == "true":
        command.append("--verbose")
    command += argv
    sys.stdout.flush()
    os.execvp(command[0], command)
    return 127  # not reached: execvp replaces this process or raises


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
