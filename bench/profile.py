"""Profile the hardened Orthanc with py-spy while it ingests and serves the benchmark's data.

    .venv/bin/python bench/profile.py --py-spy /path/to/py-spy [--instances 200] [--clients 8] [--out DIR]
        [--rate 200] [--native]
        [--phases ingest,retrieve,archives,cmove]

Starts one hardened Orthanc (``tests/support/server.py``), attaches ``py-spy record --format raw``
to it for a REST ingest with ``--clients`` clients, then for a ``/file`` retrieve of every
instance (and, with ``--phases``, a study archive or a C-MOVE over TLS of every study instead or
as well), and
prints, per phase, the share of the plugin's samples by the plugin function they are in (the
innermost frame of ``orthanc_hardening`` or of a library it called). py-spy is not a
project dependency: install it anywhere (``pip install --target /tmp/pyspy py-spy``).
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as bench

from tests.support.pki import make_pki
from tests.support.scp import StorageSCP
from tests.support.server import make_server


def summarize(raw: Path, top: int) -> list[tuple[float, str]]:
    """Share of samples by (innermost plugin frame, innermost frame) from py-spy's raw output."""
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        ours = [f for f in frames if "orthanc_hardening" in f or "hardening.py" in f]
        if not ours:
            continue
        n = int(count)
        total += n
        leaf = frames[-1].split(" (")[0]
        counts[f"{ours[-1].split(' (')[0]} -> {leaf}"] += n
    return [(100.0 * n / total, key) for key, n in counts.most_common(top)] if total else []


def record(py_spy: str, pid: int, out: Path, work: callable, rate: int = 200,  # type: ignore[valid-type]
           native: bool = False) -> None:
    spy = subprocess.Popen([py_spy, "record", "--pid", str(pid), "--format", "raw", "--output", str(out),
                            "--rate", str(rate), "--threads", "--nonblocking", *(["--native"] if native else [])],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)
        work()
    finally:
        spy.send_signal(2)
        spy.wait(timeout=60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--py-spy", required=True)
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--native", action="store_true", help="py-spy --native: C frames too (slower sampling)")
    parser.add_argument("--phases", default="ingest,retrieve",
                        help="comma-separated, in order (ingest first): ingest, retrieve, archives, cmove")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hardening-profile-"))
    out = args.out or work
    out.mkdir(parents=True, exist_ok=True)
    files = bench.make_dataset(args.instances, 0, 512)
    pki = make_pki(work / "pki")
    server = make_server(work / "hardened", pki)
    server.start()
    try:
        with StorageSCP(port=server.modality_port, pki=pki):  # the C-MOVE destination
            assert server.process is not None
            pid = server.process.pid
            known = {"ingest": bench.upload_all(files, args.clients), "retrieve": bench.retrieve_files(args.clients),
                     "archives": bench.archive_studies, "cmove": bench.cmove_all}
            wanted = [name.strip() for name in args.phases.split(",") if name.strip()]
            unknown = [name for name in wanted if name not in known]
            if unknown or not wanted or wanted[0] != "ingest":
                parser.error(f"--phases: ingest first, then any of {', '.join(known)} (got {args.phases!r})")
            phases = {name: known[name] for name in wanted}
            for name, phase in phases.items():
                raw = out / f"{name}.raw"
                record(args.py_spy, pid, raw, lambda phase=phase: phase(server), args.rate, args.native)
                print(f"-- {name}: share of the plugin's samples (innermost plugin frame -> innermost frame)")
                for share, key in summarize(raw, args.top):
                    print(f"{share:6.1f} %  {key}")
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
