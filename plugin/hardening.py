"""Orthanc entry script for orthanc-hardening (``"PythonScript"`` in the Orthanc configuration).

Puts the package and its virtualenv on ``sys.path``, then hands the ``orthanc`` module to the
shell. Site-packages come from ``HARDENING_SITE_PACKAGES`` (``:``-separated) or the repository's
``.venv``; the Docker image installs the dependencies system-wide and needs neither.
"""

import glob
import os
import sys

import orthanc

_HERE = os.path.dirname(os.path.abspath(__file__))
_paths = [p for p in os.environ.get("HARDENING_SITE_PACKAGES", "").split(":") if p]
_paths += glob.glob(os.path.join(os.path.dirname(_HERE), ".venv", "lib", "python3*", "site-packages"))
# Our package and its dependencies go before the system's dist-packages, so that an older
# Debian python3-cryptography cannot shadow the version we were tested with.
for _index, _path in enumerate([_HERE, *_paths]):
    if _path not in sys.path:
        sys.path.insert(_index, _path)

from orthanc_hardening import shell  # noqa: E402

shell.install(orthanc)
