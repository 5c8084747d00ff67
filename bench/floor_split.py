"""Split the floor of a Python plugin (``bench/floor_plugin.py``) into its parts, in one run.

    .venv/bin/python bench/floor_split.py [--instances 200] [--repeat 3] [--json out.json] [--only WORDS]

Starts, side by side with the same configuration (``tests/support/server.py``): plain Orthanc,
the hardened one, and five Orthancs with the null plugin — everything on ("floor"), the
"DICOM until pixel data" attachment not flushed ("floor, header unsynced"; the same as
"floor" on a storage area with range reads, which is never asked for it), the hooks without
the storage area ("hooks only": Orthanc's own file storage) and the storage area without the
hooks ("storage only"), and one flushing with ``fsync`` instead of Orthanc's ``fdatasync``
("floor, fsync"). Measures the REST ingest, C-STORE and ``/file`` rows of ``bench/run.py``
on each and prints every figure with its ratio to plain. No figure is asserted.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as bench

from tests.support.server import make_server

VARIANTS: dict[str, dict[str, Any]] = {
    "floor": {},
    "floor, fsync": {"Flush": "fsync"},
    "floor, header unsynced": {"SyncDerived": False},
    "hooks only": {"StorageArea": False},
    "storage only": {"Hooks": False},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=200, help="CT instances (default 200)")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions per figure (default 3)")
    parser.add_argument("--json", type=Path, default=None, help="write results as JSON here")
    parser.add_argument("--only", metavar="WORDS", default=None,
                        help="comma-separated words: run only the figures whose name contains one of them")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="hardening-floor-split-"))
    files, data_dir, pki, servers = bench.bench_setup(work, args.instances, 10, 512)
    for index, (label, options) in enumerate(VARIANTS.items()):
        servers[label] = make_server(work / f"floor-{index}", pki,
                                     config={"PythonScript": str(bench.FLOOR_PLUGIN), "NullPlugin": options})
    print(f"data: {args.instances} CT 512x512 16-bit + 10 MR; repeat {args.repeat}; in {work}", flush=True)
    try:
        for server in servers.values():
            server.start()
        runner = bench.Bench(servers, args.repeat, args.only.split(",") if args.only else None)
        runner.measure("ingest REST, 1 client", bench.upload_all(files, 1), prepare=bench.clear, unit_count=len(files))
        runner.measure("ingest REST, 4 clients", bench.upload_all(files, 4), prepare=bench.clear,
                       unit_count=len(files))
        runner.measure("ingest C-STORE storescu +tls", bench.storescu_all(data_dir), prepare=bench.clear,
                       unit_count=len(files))
        runner.measure("retrieve /file, 1 client", bench.retrieve_files(1), unit_count=len(files))
        runner.measure("retrieve /file, 4 clients", bench.retrieve_files(4), unit_count=len(files))
    finally:
        for server in servers.values():
            server.stop()
    print()
    for row in runner.results:
        plain = row["plain"]
        print(row["name"])
        for label in servers:
            figure = row[label]
            wall = figure["wall_s"] / plain["wall_s"] if plain["wall_s"] else float("nan")
            cpu = figure["server_cpu_s"] / plain["server_cpu_s"] if plain["server_cpu_s"] else float("nan")
            print(f"  {label:<24} wall {figure['wall_s']:7.3f}s (x{wall:.2f})   "
                  f"server CPU {figure['server_cpu_s']:6.2f}s (x{cpu:.2f})", flush=True)
    if args.json:
        args.json.write_text(json.dumps({
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "versions": bench.versions(),
            "instances": len(files),
            "repeat": args.repeat,
            "variants": VARIANTS,
            "load_average": os.getloadavg(),
            "orthanc": runner.results,
        }, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
