"""Where the CPU of a REST ingest goes below Python: Linux ``perf`` on plain and hardened Orthanc.

    .venv/bin/python bench/native_profile.py [--instances 200] [--repeat 3] [--clients 1]
        [--env NAME=VALUE ...] [--directories] [--json out.json] [--top 14]

``bench/callback_cpu.py`` attributes CPU to the plugin's callbacks and threads; cProfile and
py-spy see only Python frames. This tool samples every thread of each server with
``perf record -g`` (the ``cpu-clock`` event: on-CPU time, also in a VM without hardware
counters) during the ingest windows only, and splits the samples, per instance:

* by thread group (the plugin's Python threads by name, Orthanc's by kernel name);
* by shared object of the sampled instruction (Orthanc, libpython, libcrypto, libsqlite3, the
  kernel, …);
* for kernel samples, by what they serve: a page fault (with the user-space function that
  faulted, or the system call whose buffer did), or the system call (named by the C
  library wrapper that made it, else by the kernel's ``__x64_sys_*`` entry): ``open``, ``mkdir``,
  ``write``, ``fsync``, ``unlink``, ``futex``, ``brk``, ``mmap``, ….

It starts a plain Orthanc and a hardened one through ``tests/support/server.py`` (the hardened
one loads a small entry script that answers its Python threads' names on ``/bench/threads``,
then runs the real plugin; nothing is timed or wrapped) and, with ``--env``, a second hardened
one, labelled "hardened+env", whose process gets those environment variables (e.g. glibc's
``MALLOC_*`` tunables). Each repetition ingests the data set into every server in turn (each
repetition starting with the next server) and clears it afterwards, outside the window. With
``--directories`` all 65,536 ``xx/yy`` directories of the storage areas exist before every
window (they are created again after each clear, outside the window), as in a storage area that
already holds many files: the windows then create no directory.

With ``--env PYTHONPERFSUPPORT=1`` (Python 3.12+, i.e. trixie and forky) Python's trampolines
put Python functions into perf's call chains, and a fourth table splits by the innermost Python
function the samples whose chain reaches one (native work it called included: a SHA-256 is
charged to the function that called ``hashlib``). Measured on forky (bench/RESULTS.md, "below
Python"): most chains through libpython break before they reach a trampoline, so that table
covers a small part of the Python samples, and the support itself raised the hardened server's
CPU per instance from 10.77 to 13.20 ms. Use ``bench/callback_cpu.py --cprofile`` for the
Python side; this table only names the functions that dominate what it does cover.

Needs ``perf`` (Debian ``linux-perf``) and root or ``kernel.perf_event_paranoid`` <= 1. Samples
are converted to milliseconds at the sampling frequency; compare servers of one run. Nothing is
asserted.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as bench
from callback_cpu import thread_cpu, thread_group

from tests.support.pki import make_pki
from tests.support.server import PLUGIN_SCRIPT, OrthancServer, make_server

THREADS_ROUTE = "/bench/threads"
ENTRY_SCRIPT = r'''
"""Bench entry script (bench/native_profile.py): names the Python threads, then runs the plugin."""
import json
import runpy
import threading

import orthanc


def _threads(output, uri, **request):
    names = {{str(t.native_id): t.name for t in threading.enumerate() if t.native_id is not None}}
    output.AnswerBuffer(json.dumps(names), "application/json")


_PINNED = [_threads]  # the Python plugin frees registered callables at stop without Python's lock
orthanc.RegisterRestCallback({route!r}, _threads)
runpy.run_path({plugin!r}, run_name="__main__")
'''

# A kernel sample is charged to a page fault when one is in its chain, else to the system call its
# first user-space frame (the C library's wrapper) made, else to the kernel's ``__x64_sys_*`` entry.
_SYSCALL_ENTRY = re.compile(r"^__(?:x64|ia32)_sys_(\w+)$")
_WRAPPER_NOISE = re.compile(r"^(?:__GI_)?_*(?:libc_)?|(?:64)?(?:_nocancel\w*)?(?:@@?GLIBC\S*)?$")


def entry_script(work: Path, name: str) -> Path:
    path = work / f"native_profile_{name}.py"
    path.write_text(ENTRY_SCRIPT.format(plugin=str(PLUGIN_SCRIPT), route=THREADS_ROUTE))
    return path


def make_directories(server: OrthancServer) -> None:
    """Create every ``xx/yy`` directory of the storage area, as a storage area holding many files has them."""
    for first in range(256):
        for second in range(256):
            (server.storage_dir / f"{first:02x}" / f"{second:02x}").mkdir(parents=True, exist_ok=True)


def clear_keeping_directories(server: OrthancServer) -> None:
    """Clear the server (which removes the directories it empties), then create them again."""
    bench.clear(server)
    make_directories(server)


def record(server: OrthancServer, data: Path, frequency: int) -> subprocess.Popen[bytes]:
    assert server.process is not None
    perf = subprocess.Popen(["perf", "record", "-q", "-F", str(frequency), "-g", "-p", str(server.process.pid),
                             "-o", str(data)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(0.3)  # perf attaches to every thread before the window opens
    if perf.poll() is not None:
        error = perf.stderr.read().decode(errors="replace")[-500:] if perf.stderr else ""
        raise SystemExit(f"perf record failed: {error}")
    return perf


def stop_recording(perf: subprocess.Popen[bytes]) -> None:
    perf.send_signal(2)
    perf.wait(60)


def samples(data: Path) -> list[tuple[str, list[tuple[str, str]]]]:
    """Each sample of ``data``: its thread id and its call chain (symbol, shared object), innermost first."""
    text = subprocess.run(["perf", "script", "-i", str(data), "-F", "tid,ip,sym,dso"], capture_output=True,
                          text=True, errors="replace", check=True).stdout
    found: list[tuple[str, list[tuple[str, str]]]] = []
    for block in text.split("\n\n"):
        lines = [line.strip() for line in block.strip().splitlines() if line.strip()]
        if not lines:
            continue
        tid = lines[0].split()[0]
        chain = []
        for line in lines[1:]:
            parts = line.split(None, 1)
            rest = parts[1] if len(parts) > 1 else ""
            match = re.match(r"(.*) \((.*)\)$", rest)
            symbol, dso = (match.group(1), match.group(2)) if match else (rest, "")
            chain.append((re.sub(r"\+0x[0-9a-f]+$", "", symbol), os.path.basename(dso)))
        found.append((tid, chain))
    return found


def classify(chain: list[tuple[str, str]]) -> tuple[str, str]:
    """The shared object of the sampled instruction, and for kernel samples what they serve."""
    if not chain:
        return "?", ""
    dso = chain[0][1] or "?"
    if dso != "[kernel.kallsyms]":
        return dso, ""
    kernel = [symbol for symbol, frame_dso in chain if frame_dso == "[kernel.kallsyms]"]
    user = chain[len(kernel)][0] if len(chain) > len(kernel) else ""
    user = "" if user in ("", "[unknown]") else _WRAPPER_NOISE.sub("", user) or user
    if "asm_exc_page_fault" in kernel:
        return "kernel", f"page fault ({user or '?'})"  # where it faulted: a copy, a system call's buffer
    if user:
        return "kernel", user
    for symbol in reversed(kernel):
        match = _SYSCALL_ENTRY.match(symbol)
        if match:
            return "kernel", match.group(1)
    return "kernel", "kernel (other)"


def window(server: OrthancServer, label: str, run: Any, work: Path, frequency: int, index: int) -> dict[str, Any]:
    """One ingest window on ``server``: thread CPU from ``/proc`` and the perf samples, by group."""
    assert server.process is not None
    names = bench.check_answer(server.get(THREADS_ROUTE)).json() if label != "plain" else {}
    data = work / f"{label}-{index}.data"
    before = thread_cpu(server.process.pid)
    perf = record(server, data, frequency)
    try:
        run(server)
        time.sleep(1.0)  # the change callbacks and audit events of the last instances, in the window
    finally:
        stop_recording(perf)
    after = thread_cpu(server.process.pid)
    cpu: collections.Counter[str] = collections.Counter()
    groups = {}
    for tid, (comm, seconds) in after.items():
        groups[tid] = thread_group(tid, comm, names)
        cpu[groups[tid]] += seconds - before.get(tid, (comm, 0.0))[1]
    by_dso: collections.Counter[str] = collections.Counter()
    by_entry: collections.Counter[str] = collections.Counter()
    by_group: collections.Counter[str] = collections.Counter()
    by_function: collections.Counter[str] = collections.Counter()
    for tid, chain in samples(data):
        group = groups.get(tid, "os:exited")
        dso, entry = classify(chain)
        by_group[group] += 1
        by_dso[f"{group} {dso}"] += 1
        if entry:
            by_entry[f"{group} {entry}"] += 1
        function = next((symbol for symbol, _dso in chain if symbol.startswith("py::")), None)
        if function is not None:
            by_function[function.removeprefix("py::")] += 1
    data.unlink()
    return {"cpu": dict(cpu), "samples": {"group": dict(by_group), "dso": dict(by_dso), "kernel": dict(by_entry),
                                         "python": dict(by_function)}}


def add(total: dict[str, Any], part: dict[str, Any]) -> None:
    for key, value in part["cpu"].items():
        total["cpu"][key] = total["cpu"].get(key, 0.0) + value
    for kind, counts in part["samples"].items():
        for key, value in counts.items():
            total["samples"][kind][key] = total["samples"][kind].get(key, 0) + value


def report(results: dict[str, dict[str, Any]], units: int, frequency: int, top: int) -> list[str]:
    """Milliseconds per instance, one column per server, largest rows of the hardened server first."""
    labels = list(results)
    lines = []

    def table(title: str, rows: dict[str, list[float]]) -> None:
        lines.append(f"-- {title} (ms per instance)")
        lines.append(f"{'':58}" + "".join(f"{label:>14}" for label in labels))
        ordered = sorted(rows.items(), key=lambda item: -max(item[1][1:] or item[1]))
        for key, values in ordered[:top]:
            lines.append(f"{key[:58]:58}" + "".join(f"{value:14.3f}" for value in values))

    cpu = {key: [results[label]["cpu"].get(key, 0.0) * 1000 / units for label in labels]
           for key in {k for r in results.values() for k in r["cpu"]}}
    cpu["process (all threads)"] = [sum(results[label]["cpu"].values()) * 1000 / units for label in labels]
    table("thread CPU from /proc", cpu)
    for kind, title in (("dso", "perf samples by thread and shared object"),
                        ("kernel", "kernel samples by thread and the call or fault they serve"),
                        ("python", "Python samples by innermost Python function (PYTHONPERFSUPPORT=1)")):
        keys = {k for r in results.values() for k in r["samples"][kind]}
        if not keys:
            continue
        table(title, {key: [results[label]["samples"][kind].get(key, 0) * 1000 / frequency / units
                            for label in labels] for key in keys})
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--frequency", type=int, default=2999, help="perf samples per second and thread")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="also profile a hardened server with this environment variable (repeatable)")
    parser.add_argument("--directories", action="store_true",
                        help="every xx/yy directory of the storage areas exists before each window")
    parser.add_argument("--top", type=int, default=14)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if shutil.which("perf") is None:
        parser.error("perf is not installed (Debian: apt-get install linux-perf)")
    extra = dict(item.split("=", 1) for item in args.env)
    work = Path(tempfile.mkdtemp(prefix="hardening-native-profile-"))
    files = bench.make_dataset(args.instances, 10, 512)
    pki = make_pki(work / "pki")
    servers = {"plain": make_server(work / "plain", pki, plugin=False),
               "hardened": make_server(work / "hardened", pki,
                                       config={"PythonScript": str(entry_script(work, "hardened"))})}
    if extra:
        servers["hardened+env"] = make_server(work / "hardened-env", pki, env=extra,
                                              config={"PythonScript": str(entry_script(work, "env"))})
    clear = clear_keeping_directories if args.directories else bench.clear
    upload = bench.upload_all(files, args.clients)
    results = {label: {"cpu": {}, "samples": {"group": {}, "dso": {}, "kernel": {}, "python": {}}}
               for label in servers}
    print(f"data: {len(files)} instances, {args.clients} client(s); repeat {args.repeat}; env {extra}; "
          f"directories made {args.directories}; in {work}", flush=True)
    try:
        for server in servers.values():
            server.start()
            if args.directories:
                make_directories(server)
        for server in servers.values():  # a first ingest warms each server (and leaves its directories)
            upload(server)
            clear(server)
        order = list(servers)
        for index in range(args.repeat):
            for label in order[index % len(order):] + order[:index % len(order)]:
                time.sleep(0.5)
                add(results[label], window(servers[label], label, upload, work, args.frequency, index))
                clear(servers[label])
    finally:
        for server in servers.values():
            server.stop()
    for line in report(results, len(files) * args.repeat, args.frequency, args.top):
        print(line, flush=True)
    if args.json:
        args.json.write_text(json.dumps({"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                         "versions": bench.versions(), "instances": len(files),
                                         "clients": args.clients, "repeat": args.repeat, "env": extra,
                                         "directories": args.directories,
                                         "frequency": args.frequency, "results": results}, indent=1))
        print(f"wrote {args.json}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
