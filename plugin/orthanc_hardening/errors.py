"""The one exception hierarchy of orthanc-hardening.

Bad data from outside (a peer, a file, a request, a configuration) raises one of these.
A bug in our own calls raises ``RuntimeError``/``TypeError``/``ValueError`` instead.
Only the shell maps these to HTTP statuses (see ``shell/guard.py``): 400, 403, 404, 409, 503.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class HardeningError(Exception):
    """Base class of every error this package raises on bad outside data."""


class ConfigError(HardeningError):
    """The configuration is invalid; ``key`` names the offending key (e.g. ``Hardening.Mode``)."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


class BadRequestError(HardeningError):
    """A request parameter is invalid; ``parameter`` names it. Maps to HTTP 400."""

    def __init__(self, parameter: str, problem: str) -> None:
        super().__init__(f"{parameter}: {problem}")
        self.parameter = parameter
        self.problem = problem


class NotFoundError(HardeningError):
    """An identifier names nothing known. Maps to HTTP 404."""


class IntegrityError(HardeningError):
    """Stored data or a signed record failed verification. Maps to HTTP 409."""


class SealMissingError(IntegrityError):
    """Stored bytes have no seal."""


class SealInvalidError(IntegrityError):
    """A seal is malformed or its signature does not verify."""


class SealMismatchError(IntegrityError):
    """A seal verifies but does not match the bytes, identity or index tags it is checked against."""


class UnknownKeyError(IntegrityError):
    """A record was signed by a key that is neither current nor trusted."""


class AuditChainError(IntegrityError):
    """The audit hash chain or its checkpoints do not verify."""


class KeyRegistryError(IntegrityError):
    """The key registry's signed chain, or the anchor that pins its head, does not verify.

    Raised at start, it stops the plugin: no key of a registry that does not verify is trusted.
    """


class AccessDeniedError(HardeningError):
    """The requester may not do this (role, insecure transport, locked-down server). Maps to HTTP 403.

    ``answer`` is the JSON body a REST client gets instead of the plain ``{"error", "detail"}``
    when the refusal has more to say (which destination, which checks failed).
    """

    def __init__(self, detail: str, answer: Mapping[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.answer = dict(answer) if answer is not None else None


class HostileInputError(HardeningError):
    """Input built to crash or exhaust a parser (a DICOM file nested too deep). Refused and alerted."""


class HostileBodyError(BadRequestError, HostileInputError):
    """A request body built to exhaust a parser's stack (nested too deep): a bad request that is
    also a Security Alert. Maps to HTTP 400."""


class StoreUnavailableError(HardeningError):
    """The seal or audit store cannot be written or read. Maps to HTTP 503."""
