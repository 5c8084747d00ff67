"""Gather the host facts the posture checks need: file modes, certificates, the libssl probe.

This is the I/O edge of ``tls``: the shell (inside Orthanc) and the ``posture`` command call
it, and hand the resulting ``HostFacts`` to the pure ``posture.inspect_posture``. Nothing
here decides anything.

The libssl probe repeats what Debian's civetweb 1.15 does when HTTPS is on:
``dlopen("libssl.so")`` with the process's library path, then ``dlsym`` of
``SSL_get_peer_certificate`` (absent from OpenSSL 3, see ORTHANC-NOTES.md). Run inside
Orthanc it sees exactly Orthanc's ``LD_LIBRARY_PATH``; run as ``python -m
orthanc_hardening.services.host_probe`` it prints the probe as JSON, so that the offline command can
probe under another library path.
"""

from __future__ import annotations

import ctypes
import json
import os
import stat
import sys
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from orthanc_hardening.tls.facts import FileFacts, HostFacts, LibsslFacts, TLSMeasurement

CIVETWEB = b"libcivetweb.so"
LIBRARY_DIRECTORIES = ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib", "/usr/lib", "/usr/local/lib")
# Certificates are small; a bigger file is not read whole (and then fails to parse).
MAX_CERTIFICATE_BYTES = 1 << 20


def file_facts(path: Path, read: bool) -> FileFacts:
    """Stat ``path`` and, when ``read``, read its content (for certificates)."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return FileFacts(exists=False)
    except OSError as exc:
        return FileFacts(exists=False, error=exc.strerror or str(exc))
    readable = os.access(path, os.R_OK)
    content = None
    if read and readable and stat.S_ISREG(info.st_mode):
        try:
            with path.open("rb") as handle:
                content = handle.read(MAX_CERTIFICATE_BYTES)
        except OSError as exc:
            return FileFacts(True, False, stat.S_IMODE(info.st_mode), False, None, exc.strerror or str(exc))
    return FileFacts(
        exists=True,
        is_directory=stat.S_ISDIR(info.st_mode),
        mode=stat.S_IMODE(info.st_mode),
        readable=readable,
        content=content,
    )


def gather_files(wanted: Mapping[Path, bool]) -> dict[Path, FileFacts]:
    """Return ``file_facts`` for every path of ``posture.files_to_inspect``."""
    return {path: file_facts(path, read) for path, read in wanted.items()}


def civetweb_in_process(maps: Path = Path("/proc/self/maps")) -> str:
    """Return the shared libcivetweb mapped into this process, or ``""``."""
    try:
        text = maps.read_text(errors="replace")
    except OSError:
        return ""
    for line in text.splitlines():
        if "libcivetweb.so" in line:
            return line.split()[-1]
    return ""


def civetweb_of_binary(binary: Path) -> str:
    """Return the shared libcivetweb an Orthanc executable needs, or ``""``.

    Reads the executable's bytes for the ``DT_NEEDED`` name (no loader involved), then
    looks for the library in the usual directories.
    """
    try:
        data = binary.read_bytes()
    except OSError:
        return ""
    start = data.find(CIVETWEB)
    if start < 0:
        return ""
    end = data.find(b"\0", start)
    name = data[start:end].decode("ascii", "replace")
    for directory in LIBRARY_DIRECTORIES:
        candidate = Path(directory) / name
        if candidate.exists():
            return str(candidate)
    return name


class _DlInfo(ctypes.Structure):
    _fields_ = [
        ("dli_fname", ctypes.c_char_p),
        ("dli_fbase", ctypes.c_void_p),
        ("dli_sname", ctypes.c_char_p),
        ("dli_saddr", ctypes.c_void_p),
    ]


def _library_of(function: Any) -> str:
    try:
        libc = ctypes.CDLL(None)
        info = _DlInfo()
        if libc.dladdr(ctypes.cast(function, ctypes.c_void_p), ctypes.byref(info)) and info.dli_fname:
            return os.path.realpath(info.dli_fname.decode())
    except (OSError, AttributeError, ValueError):
        pass
    return ""


def probe_libssl(civetweb: str) -> LibsslFacts:
    """Load ``libssl.so`` as civetweb would and look for ``SSL_get_peer_certificate``."""
    try:
        library = ctypes.CDLL("libssl.so")
    except OSError as exc:
        return LibsslFacts(civetweb=civetweb, loaded=False, error=str(exc))
    try:
        function = library.SSL_get_peer_certificate
    except AttributeError:
        try:
            where = _library_of(library.SSL_new)
        except AttributeError:
            where = ""
        return LibsslFacts(civetweb=civetweb, loaded=True, library=where, has_peer_certificate=False)
    return LibsslFacts(civetweb=civetweb, loaded=True, library=_library_of(function), has_peer_certificate=True)


def probe_libssl_with(library_path: str | None, civetweb: str) -> LibsslFacts:
    """Run ``probe_libssl`` in a child Python whose ``LD_LIBRARY_PATH`` is ``library_path``.

    The loader reads ``LD_LIBRARY_PATH`` once, at process start, so a different path needs a
    new process. ``None`` keeps the current environment.
    """
    import subprocess

    env = dict(os.environ)
    if library_path is not None:
        env["LD_LIBRARY_PATH"] = library_path
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    result = subprocess.run(
        [sys.executable, "-m", "orthanc_hardening.services.host_probe", civetweb],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )
    if result.returncode != 0:
        return LibsslFacts(civetweb=civetweb, loaded=False, error=result.stderr.strip()[-300:])
    return LibsslFacts(**json.loads(result.stdout))


def gather_host_facts(
    wanted: Mapping[Path, bool],
    base_directory: Path,
    libssl: LibsslFacts | None,
    modalities: Mapping[str, Any] | None = None,
    peers: Mapping[str, Any] | None = None,
    tls: Mapping[str, TLSMeasurement] | None = None,
) -> HostFacts:
    """Assemble ``HostFacts`` from the files named by ``posture.files_to_inspect``."""
    return HostFacts(
        base_directory=base_directory,
        files=gather_files(wanted),
        libssl=libssl,
        modalities=modalities,
        peers=peers,
        tls=tls,
    )


def orthanc_configuration_directory(cmdline: Path = Path("/proc/self/cmdline")) -> Path:
    """Return the directory of the configuration this Orthanc process was started with.

    Orthanc resolves relative paths in its configuration against that directory; the
    configuration is the first argument that is not an option. Falls back to the working
    directory.
    """
    try:
        arguments = cmdline.read_bytes().split(b"\0")[1:]
    except OSError:
        return Path.cwd()
    for raw in arguments:
        argument = raw.decode(errors="replace")
        if argument and not argument.startswith("-"):
            path = Path(argument).resolve()
            return path if path.is_dir() else path.parent
    return Path.cwd()


def _main(argv: list[str]) -> int:
    civetweb = argv[0] if argv else ""
    print(json.dumps(asdict(probe_libssl(civetweb))))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
