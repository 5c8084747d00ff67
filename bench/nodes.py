"""The cost of several nodes: REST ingest and ``/file`` retrieve on SQLite, PostgreSQL, one node and two.

    .venv/bin/python bench/nodes.py [--quick] [--instances N] [--repeat R] [--clients C] [--only LABELS]
                                    [--no-plain-pair] [--keep-logs] [--json out.json]

One run, the same synthetic data (``bench/run.py``'s ``make_dataset``), these configurations:

    plain-sqlite      plain Orthanc, SQLite index, files on disk
    hardened-sqlite   hardened Orthanc, SQLite index, plugin's stores in SQLite
    plain-pg          plain Orthanc, index in PostgreSQL (Orthanc's PostgreSQL plugin), files on disk
    hardened-pg       one hardened node, index and plugin's stores (Hardening.Database) in PostgreSQL
    hardened-pg-x2    two hardened nodes on one PostgreSQL and one storage folder
    plain-pg-x2       two plain nodes the same way (skipped with --no-plain-pair)

The PostgreSQL configurations are ``tests/support/nodes.py``'s ``start_cluster`` (each its own
PostgreSQL). Figures: REST ingest with 4 clients (``--clients``; ``POST /instances``, the store
cleared before each run) and ``GET /instances/{id}/file`` with as many clients, each as wall time and server CPU
(user + system summed over the configuration's Orthanc processes; PostgreSQL's own CPU is not
counted). On two nodes the files and the clients are split evenly across the nodes. Each figure
is the median of ``--repeat`` repetitions; the repetitions are interleaved across
configurations so a change in machine load hits all of them alike. Ratios: hardened vs plain of
the same back end and node count, PostgreSQL vs SQLite, two nodes vs one. Nothing is asserted:
compare within one run. Every Orthanc and PostgreSQL is stopped at the end, also on an error,
Ctrl-C or SIGTERM. ``--only`` runs only the named configurations (comma-separated labels).

Any answer other than 200 stops the run with the request, its status and its body
(``run.AnswerError``), and the logs of that run (every Orthanc's log and every PostgreSQL's) are
copied to ``build/bench-nodes-logs/<UTC time>/<configuration>/`` before anything is stopped or
removed; the path is printed. ``--keep-logs`` keeps them after a successful run too.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "plugin"), str(REPO / "bench")]

from run import AnswerError, clear, cpu_seconds, fetch_files, make_dataset, upload_all, versions  # noqa: E402

from tests.support.nodes import node_config, start_cluster  # noqa: E402
from tests.support.pki import make_pki  # noqa: E402
from tests.support.server import OrthancServer, Pki, make_server  # noqa: E402

CLIENTS = 4
INGEST = "ingest REST"
RETRIEVE = "retrieve /file"
LOGS = REPO / "build" / "bench-nodes-logs"
LABELS = ("plain-sqlite", "hardened-sqlite", "plain-pg", "hardened-pg", "hardened-pg-x2", "plain-pg-x2")

# (numerator, denominator, label) of each ratio printed.
RATIOS = [
    ("hardened-sqlite", "plain-sqlite", "hardened/plain, SQLite"),
    ("hardened-pg", "plain-pg", "hardened/plain, PostgreSQL, 1 node"),
    ("hardened-pg-x2", "plain-pg-x2", "hardened/plain, PostgreSQL, 2 nodes"),
    ("plain-pg", "plain-sqlite", "PostgreSQL/SQLite, plain"),
    ("hardened-pg", "hardened-sqlite", "PostgreSQL/SQLite, hardened"),
    ("hardened-pg-x2", "hardened-pg", "2 nodes/1 node, hardened"),
    ("plain-pg-x2", "plain-pg", "2 nodes/1 node, plain"),
]


@dataclass
class Setup:
    """One configuration: its label and its running Orthanc nodes (one or two)."""

    label: str
    nodes: list[OrthancServer]
    # Every log of the configuration (its Orthanc processes, its PostgreSQL server).
    logs: list[Path] = field(default_factory=list)
    walls: dict[str, list[float]] = field(default_factory=dict)
    cpus: dict[str, list[float]] = field(default_factory=dict)

    def cpu(self) -> float:
        return sum(cpu_seconds(node) for node in self.nodes)


def split_ingest(files: list[bytes], clients: int) -> Callable[[list[OrthancServer]], None]:
    """``upload_all`` on every node at once: node ``i`` gets every n-th file and clients/n clients."""

    def run(nodes: list[OrthancServer]) -> None:
        per_node = max(1, clients // len(nodes))
        jobs = [(upload_all(files[i :: len(nodes)], per_node), node) for i, node in enumerate(nodes)]
        with concurrent.futures.ThreadPoolExecutor(len(nodes)) as pool:
            for future in [pool.submit(job, node) for job, node in jobs]:
                future.result()

    return run


def split_retrieve(clients: int) -> Callable[[list[OrthancServer]], None]:
    """``GET /instances/{id}/file`` of every instance, the instances and clients split across the nodes."""

    def run(nodes: list[OrthancServer]) -> None:
        instances = nodes[0].get("/instances").json()

        # Client k talks to node k mod n and fetches every clients-th instance.
        work = [(nodes[k % len(nodes)], instances[k::clients]) for k in range(clients)]
        with concurrent.futures.ThreadPoolExecutor(clients) as pool:
            for future in [pool.submit(fetch_files, node, chunk) for node, chunk in work]:
                future.result()

    return run


def measure(setup: Setup, name: str, run: Callable[[list[OrthancServer]], None]) -> None:
    cpu0, t0 = setup.cpu(), time.perf_counter()
    run(setup.nodes)
    setup.walls.setdefault(name, []).append(time.perf_counter() - t0)
    setup.cpus.setdefault(name, []).append(setup.cpu() - cpu0)


def keep_logs(setups: list[Setup], why: str) -> Path:
    """Copy every log of ``setups`` to a new ``build/bench-nodes-logs/<UTC time>/``; return it."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    target = LOGS / stamp
    for setup in setups:
        for index, log in enumerate(setup.logs):
            if log.exists():
                name = f"{index}-{log.parent.name}-{log.name}"
                (target / setup.label).mkdir(parents=True, exist_ok=True)
                shutil.copy2(log, target / setup.label / name)
    target.mkdir(parents=True, exist_ok=True)
    (target / "WHY").write_text(why + "\n")
    return target


@contextlib.contextmanager
def started(work: Path, pki: Pki, labels: list[str], retries: int | None = None) -> Iterator[list[Setup]]:
    """Start the configurations named by ``labels``; stop every Orthanc and PostgreSQL on exit, also on failure."""
    with contextlib.ExitStack() as stack:
        try:
            setups: list[Setup] = []
            for label, plugin in (("plain-sqlite", False), ("hardened-sqlite", True)):
                if label not in labels:
                    continue
                server = make_server(work / label, pki, plugin=plugin)
                stack.callback(server.stop)
                server.start()
                setups.append(Setup(label, [server], [server.log_path]))
            clusters = [("plain-pg", False, 1), ("hardened-pg", True, 1), ("hardened-pg-x2", True, 2),
                        ("plain-pg-x2", False, 2)]
            for label, plugin, count in clusters:
                if label not in labels:
                    continue
                config = {"PostgreSQL": {"MaximumConnectionRetries": retries}} if retries is not None else None
                cluster = stack.enter_context(start_cluster(work / label, pki, count=count, config=config,
                                                            plugin=plugin))
                logs = [node.log_path for node in cluster.nodes] + [cluster.postgres.home / "log"]
                setups.append(Setup(label, cluster.nodes, logs))
            yield setups
        finally:
            _shield()


def summary(setups: list[Setup]) -> dict[str, dict[str, dict[str, float]]]:
    return {
        s.label: {
            name: {"wall_s": statistics.median(s.walls[name]), "server_cpu_s": statistics.median(s.cpus[name])}
            for name in s.walls
        }
        for s in setups
    }


def ratios(figures: dict[str, dict[str, dict[str, float]]]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for top, bottom, label in RATIOS:
        if top not in figures or bottom not in figures:
            continue
        for name in (INGEST, RETRIEVE):
            a, b = figures[top][name], figures[bottom][name]
            rows.append({
                "ratio": label, "figure": name,
                "wall": a["wall_s"] / b["wall_s"] if b["wall_s"] else None,
                "server_cpu": a["server_cpu_s"] / b["server_cpu_s"] if b["server_cpu_s"] else None,
            })
    return rows


def _x(value: float | None) -> str:
    return f"x{value:.2f}" if value is not None else "-"


def print_table(figures: dict[str, dict[str, dict[str, float]]], rows: list[dict[str, Any]], count: int) -> None:
    print(f"\n{'configuration':<16} {'nodes':>5}  {'ingest wall':>11} {'CPU':>8} {'inst/s':>7}"
          f"  {'/file wall':>10} {'CPU':>8} {'inst/s':>7}")
    for label, by_name in figures.items():
        nodes = 2 if label.endswith("-x2") else 1
        ingest, retrieve = by_name[INGEST], by_name[RETRIEVE]
        print(f"{label:<16} {nodes:>5}  {ingest['wall_s']:10.3f}s {ingest['server_cpu_s']:7.2f}s "
              f"{count / ingest['wall_s']:7.1f}  {retrieve['wall_s']:9.3f}s {retrieve['server_cpu_s']:7.2f}s "
              f"{count / retrieve['wall_s']:7.1f}")
    print(f"\n{'ratio':<38} {'ingest wall':>11} {'CPU':>7}  {'/file wall':>10} {'CPU':>7}")
    by_ratio: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        by_ratio.setdefault(row["ratio"], {})[row["figure"]] = row
    for label, figs in by_ratio.items():
        i, r = figs[INGEST], figs[RETRIEVE]
        print(f"{label:<38} {_x(i['wall']):>11} {_x(i['server_cpu']):>7}  {_x(r['wall']):>10} "
              f"{_x(r['server_cpu']):>7}")


def _shield() -> None:
    """Ignore Ctrl-C and SIGTERM from here on, so that a signal cannot cut the teardown short."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _terminate(signum: int, frame: FrameType | None) -> None:
    """The first Ctrl-C or SIGTERM unwinds (stopping everything); further ones are ignored."""
    _shield()
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run (20 small instances, one repetition)")
    parser.add_argument("--instances", type=int, default=None, help="CT instances (default 500, quick 20)")
    parser.add_argument("--repeat", type=int, default=None, help="repetitions per figure (default 3, quick 1)")
    parser.add_argument("--clients", type=int, default=CLIENTS, help=f"clients of each figure (default {CLIENTS})")
    parser.add_argument("--only", default=None, help=f"comma-separated configurations (of {', '.join(LABELS)})")
    parser.add_argument("--no-plain-pair", action="store_true", help="skip two plain nodes on PostgreSQL")
    parser.add_argument("--retries", type=int, default=None,
                        help="PostgreSQL.MaximumConnectionRetries of the PostgreSQL nodes (default: "
                             f"{node_config('', Path(), '')['PostgreSQL']['MaximumConnectionRetries']}, as make run)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the logs under build/bench-nodes-logs/ "
                        "after a successful run too (a failed run always keeps them)")
    parser.add_argument("--json", type=Path, default=None, help="write results as JSON here")
    args = parser.parse_args(argv)
    instances = args.instances or (20 if args.quick else 500)
    repeat = args.repeat or (1 if args.quick else 3)
    size = 128 if args.quick else 512
    mr = 4 if args.quick else 10
    labels = [label.strip() for label in args.only.split(",")] if args.only else list(LABELS)
    unknown = sorted(set(labels) - set(LABELS))
    if unknown:
        parser.error(f"unknown configuration(s) {', '.join(unknown)}: choose among {', '.join(LABELS)}")
    if args.no_plain_pair and "plain-pg-x2" in labels:
        labels.remove("plain-pg-x2")
    clients = args.clients
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)

    work = Path(tempfile.mkdtemp(prefix="hardening-bench-nodes-"))
    files = make_dataset(instances, mr, size)
    print(f"data: {instances} CT {size}x{size} 16-bit + {mr} MR; {clients} clients; repeat {repeat}; "
          f"{', '.join(labels)}; in {work}", flush=True)
    pki = make_pki(work / "pki")
    ingest, retrieve = split_ingest(files, clients), split_retrieve(clients)
    try:
        with started(work, pki, labels, args.retries) as setups:
            current = "starting"
            try:
                for repetition in range(repeat):
                    for setup in setups:
                        current = f"run {repetition + 1}/{repeat} {setup.label}"
                        clear(setup.nodes[0])
                        measure(setup, INGEST, ingest)
                        measure(setup, RETRIEVE, retrieve)
                        print(f"  run {repetition + 1}/{repeat} {setup.label:<16} "
                              f"ingest {setup.walls[INGEST][-1]:.3f}s (CPU {setup.cpus[INGEST][-1]:.2f}s)  "
                              f"/file {setup.walls[RETRIEVE][-1]:.3f}s (CPU {setup.cpus[RETRIEVE][-1]:.2f}s)",
                              flush=True)
            except Exception as exc:
                # Before anything is stopped or removed: the logs explain the answer.
                kept = keep_logs(setups, f"{current}: {exc}")
                print(f"FAILED in {current}: {exc}\nlogs of this run kept in {kept}", file=sys.stderr, flush=True)
                raise
            if args.keep_logs:
                print(f"logs of this run kept in {keep_logs(setups, 'kept on request (--keep-logs)')}", flush=True)
    except AnswerError:
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    figures = summary(setups)
    rows = ratios(figures)
    print_table(figures, rows, len(files))
    if args.json:
        report = {
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "versions": versions(),
            "instances": len(files),
            "clients": clients,
            "labels": labels,
            "postgresql_retries": args.retries,
            "repeat": repeat,
            "load_average": os.getloadavg(),
            "figures": figures,
            "ratios": rows,
        }
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
