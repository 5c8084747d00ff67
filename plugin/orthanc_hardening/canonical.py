"""The one canonical JSON encoding of everything the plugin signs or hashes.

Sorted keys, no whitespace, ASCII only (non-ASCII as ``\\u`` escapes): the same value always gives
the same bytes, whatever Python version or dict order produced it. Seals, manifests, audit rows
and checkpoints, key registry entries and witness lines are signed over these bytes, so changing
this encoding invalidates every signature made before.
"""

from __future__ import annotations

import json
from typing import Any


def canonical_json(value: Any) -> bytes:
    """``value`` as canonical JSON bytes (sorted keys, compact, ASCII)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")
