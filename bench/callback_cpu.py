"""Attribute the hardened Orthanc's CPU to each Orthanc callback kind, each call into Orthanc and
each thread, during a REST ingest and a ``/file`` retrieve.

    .venv/bin/python bench/callback_cpu.py [--instances 200] [--repeat 1] [--baseline GIT_REF|DIR]
        [--json out.json] [--cprofile]

py-spy sees only Python frames and counts a thread blocked in Orthanc or in a lock as busy; this
tool counts CPU instead. It starts a plain Orthanc and a hardened one (and, with ``--baseline``,
a hardened one with the plugin of ``GIT_REF``, labelled "before"), all through
``tests/support/server.py``. The hardened ones load an entry script (written into the run's
temporary directory, see ``ENTRY_SCRIPT``) that wraps the ``orthanc`` module before it runs the
real ``plugin/hardening.py``:

* every callable handed to a ``Register*`` function (HTTP filter, received-instance callback,
  storage area, change callback, REST routes, C-STORE filter, find and move callbacks) is timed
  with ``time.thread_time()`` (the CPU of the calling thread, so it includes what Orthanc does
  synchronously inside the plugin's calls into it) and with wall time;
* every other function of the module (``RestApiGet``, ``LogInfo``, …) is timed the same way, so
  the plugin's calls into Orthanc appear on their own, under the callback (or the plugin thread)
  that made them;
* a route of its own (``/bench/callback-cpu``, not timed, its HTTP filter call not counted)
  answers the counters and the Python threads' names with their kernel thread ids.

Nested frames (a storage read inside a ``RestApiGet`` inside a REST route) are counted in each
frame's *inclusive* CPU; *self* CPU is the frame's own, without the frames nested in it, so the
self column of one phase adds up to the CPU spent inside callbacks and the plugin's calls. Each
thread's CPU comes from ``/proc/<pid>/task/<tid>/schedstat`` (nanoseconds), grouped by the Python
thread name (the plugin's own threads: audit writer, manifests, …) or else by the kernel name
with digits dropped (Orthanc's threads); the process total from ``/proc/<pid>/stat``. The rest of
the process total — Orthanc's own work outside every callback — is then visible, and the plain
Orthanc's total in the same run is what Orthanc alone costs.

Each phase (ingest with 1 client, with 4 clients, ``/file`` with 1 client) runs ``--repeat``
times on each server in turn; the figures are sums over the repetitions divided by the units
(instances or requests). Timing every call adds a few microseconds per call: compare the
hardened servers of one run with each other, and use ``bench/run.py`` for end-to-end ratios.
Threads that start and end inside a window (none on these paths but the ingest limits' deep-parse
thread) are in the process total only ("exited threads"). ``--cprofile`` also profiles the
callbacks with cProfile (wall time, inflated by its overhead) and prints each phase's top
functions; its attribution table is then not comparable with a run without it; from Python 3.12 (trixie,
forky) one callback is profiled at a time, so a phase with several clients is a sample. On a target
without git, ``--baseline`` takes a directory holding ``plugin/`` (``git archive REF plugin``).
"""

from __future__ import annotations

import argparse
import collections
import json
import pstats
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as bench

from tests.support.pki import make_pki
from tests.support.server import PLUGIN_SCRIPT, OrthancServer, make_server

STATS_ROUTE = "/bench/callback-cpu"

# The entry script the hardened servers load as their PythonScript; {plugin!r} is the real one.
ENTRY_SCRIPT = r'''
"""Bench entry script (bench/callback_cpu.py): times every callback and call into Orthanc."""
import cProfile
import json
import pstats
import re
import runpy
import threading
import time
import urllib.parse

import orthanc

_PLUGIN = {plugin!r}
_PROFILE = {profile!r}
_profiles = []  # one cProfile.Profile per thread that ran a callback (with --cprofile)
# From Python 3.12 every cProfile.Profile takes the one sys.monitoring profiler slot of the
# process while enabled: a callback starting while another thread's profile runs is not profiled.
_profiling = threading.Lock()
_ROUTE = {route!r}
_ID = re.compile(r"[0-9a-f]{{8}}(-[0-9a-f]{{8}}){{4}}"  # an Orthanc id
                 r"|[0-9a-f]{{8}}-[0-9a-f]{{4}}-[0-9a-f]{{4}}-[0-9a-f]{{4}}-[0-9a-f]{{12}}")  # a job or attachment
_PINNED = []  # the Python plugin frees registered callables at stop without Python's lock
_lock = threading.Lock()
_stats = {{}}  # key -> [calls, cpu inclusive, cpu self, wall]
_local = threading.local()
_CHANGES = {{int(getattr(orthanc.ChangeType, n)): n for n in dir(orthanc.ChangeType) if n.isupper()}}


def _shape(uri):
    return _ID.sub("{{id}}", str(uri).split("?", 1)[0])


def _record(key, cpu, own, wall):
    with _lock:
        row = _stats.get(key)
        if row is None:
            row = _stats[key] = [0, 0.0, 0.0, 0.0]
        row[0] += 1
        row[1] += cpu
        row[2] += own
        row[3] += wall


def _timed(kind, fn, name_of):
    def timed(*args, **kwargs):
        stack = getattr(_local, "stack", None)
        if stack is None:
            stack = _local.stack = []
        key = name_of(args, kwargs)
        if key is None:
            return fn(*args, **kwargs)
        if not stack and kind == "call":
            key = "[" + threading.current_thread().name + "] " + key
        profile = None
        if _PROFILE and not stack and kind == "callback" and _profiling.acquire(blocking=False):
            profile = getattr(_local, "profile", None)
            if profile is None:
                profile = _local.profile = cProfile.Profile()
                with _lock:
                    _profiles.append(profile)
        stack.append(0.0)
        c0, w0 = time.thread_time(), time.perf_counter()
        if profile is not None:
            profile.enable()
        try:
            return fn(*args, **kwargs)
        finally:
            if profile is not None:
                profile.disable()
                _profiling.release()
            cpu, wall = time.thread_time() - c0, time.perf_counter() - w0
            children = stack.pop()
            if stack:
                stack[-1] += cpu
            _record(key, cpu, cpu - children, wall)
    _PINNED.append(timed)
    return timed


def _http_filter_name(args, kwargs):
    uri = args[0] if args else kwargs.get("uri", "")
    if _shape(uri).rstrip("/") == _ROUTE:
        return None
    return "http filter " + str(kwargs.get("method", "")) + " " + _shape(uri)


def _rest_name(args, kwargs):
    return "rest " + str(kwargs.get("method", "")) + " " + _shape(args[1] if len(args) > 1 else "")


_STORAGE = ("storage create", "storage read", "storage remove")


def _register(name, real):
    def register(*args, **kwargs):
        if name == "RegisterRestCallback":
            args = (args[0], _timed("callback", args[1], _rest_name), *args[2:])
        elif name == "RegisterIncomingHttpRequestFilter":
            args = (_timed("callback", args[0], _http_filter_name), *args[1:])
        elif name == "RegisterOnChangeCallback":
            args = (_timed("callback", args[0],
                           lambda a, k: "on change " + _CHANGES.get(int(a[0]), str(a[0]))), *args[1:])
        elif name.startswith("RegisterStorageArea"):
            def storage_name(label):
                return lambda a, k: label + (" type " + str(int(a[1])) if len(a) > 1 else "")
            args = tuple(_timed("callback", fn, storage_name(label)) if callable(fn) else fn
                         for fn, label in zip(args, _STORAGE))
        else:
            label = name[len("Register"):]
            args = tuple(_timed("callback", fn, lambda a, k, label=label, i=i: label + (" #" + str(i) if i else ""))
                         if callable(fn) else fn for i, fn in enumerate(args))
        return real(*args, **kwargs)
    return register


def _call_name(name):
    if name.startswith("RestApi"):
        return lambda a, k: "call " + name + " " + (_shape(a[0]) if a else "")
    return lambda a, k: "call " + name


_REAL_REGISTER_REST = orthanc.RegisterRestCallback
for _name in dir(orthanc):
    _value = getattr(orthanc, _name)
    if _name.startswith("_") or isinstance(_value, type) or not callable(_value):
        continue
    if _name.startswith("Register"):
        setattr(orthanc, _name, _register(_name, _value))
    else:
        setattr(orthanc, _name, _timed("call", _value, _call_name(_name)))


def _answer(output, uri, **request):
    wanted = urllib.parse.unquote((request.get("get") or {{}}).get("profile", ""))
    if wanted:
        with _lock:
            profiles = list(_profiles)
        if wanted == "reset":
            for profile in profiles:
                profile.clear()
        else:
            stats = None
            for profile in profiles:
                profile.create_stats()
                if not profile.stats:
                    continue  # a thread that ran no callback since the reset
                if stats is None:
                    stats = pstats.Stats(profile)
                else:
                    stats.add(profile)
            if stats is not None:
                stats.dump_stats(wanted)
    with _lock:
        stats = {{key: list(row) for key, row in _stats.items()}}
    threads = {{str(t.native_id): t.name for t in threading.enumerate() if t.native_id is not None}}
    output.AnswerBuffer(json.dumps({{"stats": stats, "threads": threads}}), "application/json")


_PINNED.append(_answer)
_REAL_REGISTER_REST(_ROUTE, _answer)  # before the plugin's routes, untimed
runpy.run_path(_PLUGIN, run_name="__main__")
'''


def entry_script(plugin: Path, work: Path, name: str, profile: bool = False) -> Path:
    """Write the timing entry script for ``plugin`` (a ``hardening.py``) into ``work``."""
    source = ENTRY_SCRIPT.format(plugin=str(plugin), route=STATS_ROUTE, profile=profile)
    path = work / f"callback_cpu_{name}.py"
    path.write_text(source)
    return path


# -- reading the server's counters and threads -------------------------------------------------


def thread_cpu(pid: int) -> dict[str, tuple[str, float]]:
    """Each live thread of ``pid``: its kernel name and CPU seconds so far (schedstat, nanoseconds)."""
    threads: dict[str, tuple[str, float]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            ns = int((task / "schedstat").read_text().split()[0])
            comm = (task / "comm").read_text().strip()
        except (OSError, ValueError, IndexError):
            continue
        threads[task.name] = (comm, ns / 1e9)
    return threads


def thread_group(tid: str, comm: str, names: dict[str, str]) -> str:
    """A thread's group: its Python name (the plugin's threads), else its kernel name without digits.

    Orthanc's threads that ran Python get a ``Dummy-N`` name from ``threading``: they stay Orthanc's.
    """
    name = names.get(tid, "")
    if name and not name.startswith("Dummy-"):
        return f"py:{name}"
    return "os:" + re.sub(r"\d+", "#", comm)


def snapshot(server: OrthancServer, timed: bool) -> dict[str, Any]:
    """The process CPU, each thread group's CPU and (on a timed server) the callback counters."""
    assert server.process is not None
    stats: dict[str, list[float]] = {}
    names: dict[str, str] = {}
    if timed:
        answer = bench.check_answer(server.get(STATS_ROUTE)).json()
        stats, names = answer["stats"], answer["threads"]
    return {"process": bench.cpu_seconds(server), "threads": thread_cpu(server.process.pid), "stats": stats,
            "names": names}


def delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What happened between two snapshots of one server."""
    stats = {}
    for key, row in after["stats"].items():
        old = before["stats"].get(key, [0, 0.0, 0.0, 0.0])
        diff = [new - was for new, was in zip(row, old, strict=True)]
        if diff[0]:
            stats[key] = diff
    threads: collections.Counter[str] = collections.Counter()
    for tid, (comm, cpu) in after["threads"].items():
        was = before["threads"].get(tid, (comm, 0.0))[1]
        threads[thread_group(tid, comm, {**before["names"], **after["names"]})] += cpu - was
    return {"process": after["process"] - before["process"], "threads": dict(threads), "stats": stats}


def add(total: dict[str, Any] | None, part: dict[str, Any]) -> dict[str, Any]:
    if total is None:
        return part
    stats = dict(total["stats"])
    for key, row in part["stats"].items():
        old = stats.get(key, [0, 0.0, 0.0, 0.0])
        stats[key] = [a + b for a, b in zip(old, row, strict=True)]
    threads = collections.Counter(total["threads"])
    threads.update(part["threads"])
    return {"process": total["process"] + part["process"], "threads": dict(threads), "stats": stats}


# -- phases ---------------------------------------------------------------------------------


def measure(server: OrthancServer, timed: bool, run: Callable[[OrthancServer], None],
            prepare: Callable[[OrthancServer], None] | None, repeat: int,
            profile: Path | None = None) -> dict[str, Any]:
    """Run one phase ``repeat`` times on ``server``; the sum of the windows' deltas (and wall time).

    With ``profile``, the callbacks' cProfile of the phase (every repetition) is written there.
    """
    total: dict[str, Any] | None = None
    wall = 0.0
    for index in range(repeat):
        if prepare is not None:
            prepare(server)
        time.sleep(0.5)  # let the previous step's change callbacks and audit events drain
        if profile is not None and index == 0:
            bench.check_answer(server.get(STATS_ROUTE, params={"profile": "reset"}))
        first = snapshot(server, timed)
        t0 = time.perf_counter()
        run(server)
        wall += time.perf_counter() - t0
        time.sleep(1.0)  # the change callbacks and manifests of the last instances, in the same window
        total = add(total, delta(first, snapshot(server, timed)))
    if profile is not None:
        bench.check_answer(server.get(STATS_ROUTE, params={"profile": str(profile)}))
    assert total is not None
    total["wall"] = wall
    return total


def print_profile(path: Path, top: int) -> None:
    """The functions with the most own time in the callbacks' cProfile (cProfile's overhead included)."""
    if not path.exists():
        return
    stats = pstats.Stats(str(path))
    stats.sort_stats("tottime").print_stats(top)


def report(label: str, phase: str, result: dict[str, Any], units: int, plain: dict[str, Any] | None,
           top: int) -> list[str]:
    """The printed attribution of one phase on one server (per unit: ms)."""
    per = 1000.0 / units
    lines = [f"-- {phase} / {label}: {units} units, wall {result['wall']:.2f} s, process CPU "
             f"{result['process'] * per:.2f} ms/unit"
             + (f" (plain {plain['process'] * per:.2f}, added {(result['process'] - plain['process']) * per:+.2f})"
                if plain else "")]
    stats = result["stats"]
    if stats:
        in_callbacks = sum(row[2] for key, row in stats.items() if not key.startswith("["))
        on_threads = sum(row[2] for key, row in stats.items() if key.startswith("["))
        lines.append(f"   in callbacks (self sum) {in_callbacks * per:.3f} ms/unit; plugin threads' calls into "
                     f"Orthanc {on_threads * per:.3f} ms/unit")
        lines.append(f"   {'callback / call':<60} {'calls/u':>8} {'CPU incl':>9} {'CPU self':>9} {'wall':>8}")
        ordered = sorted(stats.items(), key=lambda item: -item[1][2])
        for key, (calls, cpu, own, wall) in ordered[:top]:
            lines.append(f"   {key[:60]:<60} {calls / units:8.2f} {cpu * per:9.3f} {own * per:9.3f} {wall * per:8.3f}")
    threads = sorted(result["threads"].items(), key=lambda item: -item[1])
    named = sum(value for _key, value in threads)
    lines.append("   threads (CPU ms/unit): " + ", ".join(f"{key} {value * per:.3f}" for key, value in threads
                                                         if value * per >= 0.005)
                 + f"; exited threads {(result['process'] - named) * per:.3f}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--baseline", metavar="GIT_REF", default=None,
                        help="also attribute the plugin of GIT_REF (or a directory with plugin/), labelled 'before'")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--cprofile", action="store_true",
                        help="also cProfile the callbacks of the hardened servers and print each phase's top functions "
                             "(slows them: the attribution table is then not comparable)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="hardening-callback-cpu-"))
    files = bench.make_dataset(args.instances, 10, 512)
    pki = make_pki(work / "pki")
    plugins = {"hardened": PLUGIN_SCRIPT}
    if args.baseline:
        plugins["before"] = bench.baseline_plugin(args.baseline, work)
    servers = {"plain": make_server(work / "plain", pki, plugin=False)}
    for label, script in plugins.items():
        entry = entry_script(script, work, label, args.cprofile)
        servers[label] = make_server(work / label, pki, config={"PythonScript": str(entry)})
    phases: list[tuple[str, Callable[[OrthancServer], None], Callable[[OrthancServer], None] | None]] = [
        ("ingest REST, 1 client", bench.upload_all(files, 1), bench.clear),
        ("ingest REST, 4 clients", bench.upload_all(files, 4), bench.clear),
        ("retrieve /file, 1 client", bench.retrieve_files(1), None),
    ]
    print(f"data: {len(files)} instances; repeat {args.repeat}; in {work}", flush=True)
    results: dict[str, dict[str, Any]] = {}
    try:
        for server in servers.values():
            server.start()
        for phase, run, prepare in phases:
            results[phase] = {}
            for label, server in servers.items():
                profile = server.home / f"{re.sub(r'[^a-z0-9]+', '-', phase.lower())}.prof" \
                    if args.cprofile and label != "plain" else None
                results[phase][label] = measure(server, label != "plain", run, prepare, args.repeat, profile)
                if profile is not None:
                    print(f"-- cProfile of the callbacks: {phase} / {label}")
                    print_profile(profile, args.top)
            for label, result in results[phase].items():
                plain = results[phase]["plain"] if label != "plain" else None
                for line in report(label, phase, result, len(files) * args.repeat, plain, args.top):
                    print(line, flush=True)
    finally:
        for server in servers.values():
            server.stop()
    if args.json:
        args.json.write_text(json.dumps({"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                         "versions": bench.versions(), "instances": len(files),
                                         "repeat": args.repeat, "baseline": args.baseline, "phases": results},
                                        indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
