"""``python -m orthanc_hardening``: the command-line interface (see ``cli.py``)."""

from __future__ import annotations

import sys

from orthanc_hardening.cli import main

sys.exit(main())
