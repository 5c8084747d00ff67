#!/bin/bash
# Build step of docker/Dockerfile: install the plugin's Python dependencies for the image's Python.
#
#   install-python-deps.sh LOCK_FILE TARGET_DIR
#
# The image's Python is externally managed (PEP 668: pip refuses to install into it), has no
# compiler (the image removes build-essential) and is shared with the image's own scripts. So
# the dependencies go into their own directory (pip --target, which PEP 668 allows), from
# wheels only (--only-binary: nothing is compiled), each file checked against the hashes in
# LOCK_FILE (--require-hashes: no unpinned or unlisted package can come in). The plugin's entry
# script puts TARGET_DIR on sys.path (HARDENING_SITE_PACKAGES, set in docker/Dockerfile).
#
# Then the image's own python3 (the interpreter its Python plugin embeds) must import every
# compiled extension: a wheel built for another Python or platform fails the build here, not
# at Orthanc's start. HARDENING_PIP_PYTHON names the interpreter that runs pip when it is not
# python3 itself (the end-to-end test uses a venv's, since Debian's python3 has no pip).
set -euo pipefail

if [[ $# -ne 2 ]]; then
    echo "usage: install-python-deps.sh LOCK_FILE TARGET_DIR" >&2
    exit 2
fi
lock="$1"
target="$2"
pip_python="${HARDENING_PIP_PYTHON:-python3}"

"$pip_python" -m pip install --no-cache-dir --disable-pip-version-check --no-input \
    --only-binary=:all: --require-hashes --target "$target" -r "$lock"

PYTHONPATH="$target" python3 - <<'PY'
import sys

import cryptography
import psycopg
import pydicom
import requests
from cryptography.hazmat.primitives.asymmetric import ed25519

# The compiled parts: cryptography's Rust bindings (a signature), psycopg's libpq binding.
ed25519.Ed25519PrivateKey.generate().sign(b"orthanc-hardening")
if psycopg.pq.__impl__ != "binary":
    sys.exit(f"psycopg uses its {psycopg.pq.__impl__!r} libpq binding, not the pinned psycopg-binary wheel")
print(
    f"orthanc-hardening dependencies for Python {sys.version.split()[0]}: cryptography {cryptography.__version__}, "
    f"psycopg {psycopg.__version__} ({psycopg.pq.__impl__}, libpq {psycopg.pq.version()}), "
    f"pydicom {pydicom.__version__}, requests {requests.__version__}"
)
PY
