#!/usr/bin/env python3
"""Container health check: ``GET /system`` over HTTPS, verified against the deployment's CA."""

from __future__ import annotations

import base64
import json
import os
import ssl
import sys
import urllib.request

home = os.environ.get("HARDENING_HOME", "/var/lib/orthanc-hardening")
port = os.environ.get("HTTPS_PORT", "8443")
with open(os.path.join(home, "credentials.json")) as handle:
    password = json.load(handle)["admin"]
context = ssl.create_default_context(cafile=os.path.join(home, "tls", "ca.pem"))
request = urllib.request.Request(f"https://localhost:{port}/system")
token = base64.b64encode(f"admin:{password}".encode()).decode()
request.add_header("Authorization", f"Basic {token}")
try:
    with urllib.request.urlopen(request, context=context, timeout=8) as response:
        sys.exit(0 if response.status == 200 else 1)
except Exception as exc:
    print(f"unhealthy: {exc}", file=sys.stderr)
    sys.exit(1)
