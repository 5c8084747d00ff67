"""Safe parsing of JSON request bodies that come from HTTP clients.

Python's ``json`` parser recurses once per nesting level; on the small stack of an Orthanc HTTP
thread a body nested a few thousand levels deep overflows it and kills the whole server. Every
plugin route that reads a JSON body goes through ``parse_json_object``, which refuses bodies
that are too large or too deeply nested before parsing. Pure: no I/O.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from orthanc_hardening.errors import BadRequestError, HostileBodyError, HostileInputError

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


def check_body_depth(body: bytes) -> None:
    """Check that a JSON body is not nested deeper than ``MAX_DEPTH``.

    Raises:
        HostileInputError: it is (a body built to exhaust a parser's stack).
    """
    if nesting_depth(body) > MAX_DEPTH:
        raise HostileInputError(f"JSON body nested more than {MAX_DEPTH} levels deep")


# Orthanc takes a bare identifier (not JSON) as the resource to send (``Toolbox::IsSHA1``).
_ORTHANC_ID = re.compile(rb"\s*[0-9a-fA-F]{8}(-[0-9a-fA-F]{8}){4}\s*")


@dataclass(frozen=True, slots=True)
class JobRequest:
    """How to hand a job route's body on to Orthanc without Orthanc waiting for the job.

    ``body`` is what Orthanc gets; ``synchronous`` whether the client asked to wait for the job
    (then ``body`` asks Orthanc for an asynchronous job, and the caller waits for it).
    ``synchronous`` false: ``body`` is the client's own, unchanged — an asynchronous job, or a
    body Orthanc refuses before it starts any job (not JSON, not an object, a non-boolean
    ``Synchronous``), so its own answer is given back.
    """

    body: bytes
    synchronous: bool


def job_request(body: bytes, resources_form: bool = False, synchronous_by_default: bool = True) -> JobRequest:
    """Check a job route's JSON body and decide how to hand it on (see ``JobRequest``).

    Mirrors Orthanc's ``IsSynchronousJobRequest`` (``Synchronous`` wins over ``Asynchronous``;
    neither: the route's default) and, with ``resources_form`` (``/modalities/{m}/store``,
    ``/peers/{p}/store``), its reading of a bare identifier, a JSON string or a JSON list as
    the resources to send, turned into the equivalent ``{"Resources": [...]}``.

    Raises:
        HostileInputError: the body is nested more than ``MAX_DEPTH`` levels deep.
    """
    raw = bytes(body)
    check_body_depth(raw)
    unchanged = JobRequest(raw, synchronous=False)
    try:
        parsed = json.loads(raw)
    except (ValueError, RecursionError):
        if not (resources_form and _ORTHANC_ID.fullmatch(raw)):
            return unchanged  # Orthanc answers "Bad file format"
        parsed = raw.decode("ascii").strip()
    if resources_form and isinstance(parsed, str):
        parsed = {"Resources": [parsed]}
    elif resources_form and isinstance(parsed, list):
        parsed = {"Resources": parsed}
    if not isinstance(parsed, dict):
        return unchanged  # Orthanc refuses a body that is not an object before any job
    if "Synchronous" in parsed:
        synchronous = parsed["Synchronous"]
    elif "Asynchronous" in parsed:
        asynchronous = parsed["Asynchronous"]
        synchronous = not asynchronous if isinstance(asynchronous, bool) else asynchronous
    else:
        synchronous = synchronous_by_default
    if synchronous is not True:
        return unchanged  # asynchronous, or a non-boolean Orthanc refuses
    forwarded = {key: value for key, value in parsed.items() if key != "Synchronous"}
    forwarded["Asynchronous"] = True
    return JobRequest(json.dumps(forwarded).encode("utf-8"), synchronous=True)
