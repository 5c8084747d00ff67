"""Safe parsing of JSON request bodies that come from HTTP clients.

Python's ``json`` parser recurses once per nesting level; on the small stack of an Orthanc HTTP
thread a body nested a few thousand levels deep overflows it and kills the whole server. Every
plugin route that reads a JSON body goes through ``parse_json_object``, which refuses bodies
that are too large or too deeply nested before parsing. Pure: no I/O.
"""

from __future__ import annotations

import json
from typing import Any

from orthanc_hardening.errors import BadRequestError, HostileBodyError

MAX_BODY_BYTES = 1 << 20
MAX_DEPTH = 32


def nesting_depth(text: bytes) -> int:
    """Return the deepest nesting of ``[``/``{`` in a JSON text, ignoring brackets in strings."""
    if text.count(b"[") + text.count(b"{") <= 1:
        return text.count(b"[") + text.count(b"{")
    depth = deepest = 0
    in_string = escaped = False
    for byte in text:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


def parse_json_value(
    body: bytes | str, name: str = "body", max_depth: int = MAX_DEPTH, expected: str = "JSON"
) -> Any:
    """Parse a request body that must be JSON (any value), refusing what could exhaust a stack.

    ``expected`` names what the body must be in the errors ("JSON", "a JSON object").

    Raises:
        BadRequestError: empty, too large, or not JSON.
        HostileBodyError: too deeply nested (also a ``BadRequestError``; a Security Alert).
    """
    raw = body.encode("utf-8") if isinstance(body, str) else bytes(body)
    if not raw.strip():
        raise BadRequestError(name, f"must be {expected}, not empty")
    if len(raw) > MAX_BODY_BYTES:
        raise BadRequestError(name, f"is larger than {MAX_BODY_BYTES} bytes")
    if nesting_depth(raw) > max_depth:
        raise HostileBodyError(name, f"is nested deeper than {max_depth} levels")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise BadRequestError(name, f"must be {expected}") from exc


def parse_json_object(
    body: bytes | str, name: str = "body", empty_ok: bool = False, max_depth: int = MAX_DEPTH
) -> dict[str, Any]:
    """Parse a request body that must be a JSON object.

    Args:
        body: the raw body.
        name: the parameter name used in errors.
        empty_ok: an empty body means ``{}``.
        max_depth: deepest nesting accepted.

    Returns:
        The parsed object.

    Raises:
        BadRequestError: too large, too deeply nested, not JSON, or not an object.
    """
    raw = body.encode("utf-8") if isinstance(body, str) else bytes(body)
    if not raw.strip():
        if empty_ok:
            return {}
        raise BadRequestError(name, "must be a JSON object, not empty")
    parsed = parse_json_value(raw, name, max_depth, expected="a JSON object")
    if not isinstance(parsed, dict):
        raise BadRequestError(name, "must be a JSON object")
    return parsed
