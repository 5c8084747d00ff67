"""Facts about the host that the posture checks need, as plain data.

The posture checks are pure: they never stat a file, read a certificate or load a library.
``services/host_probe.py`` gathers these facts (inside Orthanc or from the command line) and passes them
in, so that unit tests can describe any host with a few literals.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class FileFacts:
    """What ``stat`` (and, for certificates, ``read``) said about one configured path."""

    exists: bool
    is_directory: bool = False
    mode: int = 0
    readable: bool = False
    content: bytes | None = None
    error: str = ""

    @property
    def is_readable_by_others(self) -> bool:
        """Return whether "other" users may read (or, for a directory, list) it."""
        return bool(self.mode & 0o004)

    @property
    def is_writable_by_others(self) -> bool:
        """Return whether "other" users may write it."""
        return bool(self.mode & 0o002)

    @property
    def is_readable_by_group(self) -> bool:
        """Return whether the owning group may read it."""
        return bool(self.mode & 0o040)


@dataclass(frozen=True, slots=True)
class TLSMeasurement:
    """What a TLS endpoint of the running server accepted, handshake by handshake.

    Attributes:
        endpoint: ``host:port`` measured.
        accepted: every offer the server completed a handshake for, as
            ``(offer, negotiated protocol, negotiated cipher)``; ``offer`` names what the
            client proposed (``"TLS 1.1"``, ``"TLS 1.2 without forward secrecy"`` …).
        refused: the offers the server refused.
        weak: the accepted offers that are weak (TLS 1.0/1.1, no forward secrecy).
        untested: offers the client itself could not make (its OpenSSL lacks them).
        error: why nothing could be measured (no handshake completed at all), else ``""``.
    """

    endpoint: str
    accepted: tuple[tuple[str, str, str], ...] = ()
    refused: tuple[str, ...] = ()
    weak: tuple[str, ...] = ()
    untested: tuple[str, ...] = ()
    error: str = ""


@dataclass(frozen=True, slots=True)
class LibsslFacts:
    """How Orthanc's HTTP server would load OpenSSL (see ORTHANC-NOTES: civetweb + OpenSSL 3).

    Attributes:
        civetweb: path of the shared ``libcivetweb`` Orthanc is linked to, ``""`` when Orthanc
            carries its own civetweb (then OpenSSL is linked at build time and nothing is
            looked up at run time).
        loaded: whether ``dlopen("libssl.so")`` succeeded with Orthanc's library path.
        library: the file that answered (best effort; for the evidence only).
        has_peer_certificate: whether ``SSL_get_peer_certificate`` resolved in it.
        error: the loader's message when ``loaded`` is false.
    """

    civetweb: str
    loaded: bool
    library: str = ""
    has_peer_certificate: bool = False
    error: str = ""


@dataclass(frozen=True, slots=True)
class HostFacts:
    """Everything outside the configuration mapping that the posture checks look at.

    Attributes:
        base_directory: where Orthanc resolves relative paths (the configuration's directory).
        files: facts per absolute path, for the paths ``posture.files_to_inspect`` named.
        libssl: the libssl probe, or ``None`` when it was not run.
        modalities: Orthanc's live modality list (``/modalities?expand``) when known; it
            replaces ``DicomModalities`` (needed with ``DicomModalitiesInDatabase``).
        peers: likewise for ``/peers?expand``.
    """

    base_directory: Path
    files: Mapping[Path, FileFacts] = field(default_factory=dict)
    libssl: LibsslFacts | None = None
    modalities: Mapping[str, Any] | None = None
    peers: Mapping[str, Any] | None = None
    # What the running server accepted, per endpoint ("https", "dicom"), when measured.
    tls: Mapping[str, TLSMeasurement] | None = None

    def file(self, path: Path) -> FileFacts:
        """Return the facts about ``path`` (absolute), or "does not exist" when not gathered."""
        return self.files.get(path, FileFacts(exists=False, error="not inspected"))

    def resolve(self, value: str) -> Path:
        """Resolve a configured path the way Orthanc does (relative to the configuration)."""
        path = Path(value)
        return path if path.is_absolute() else self.base_directory / path
