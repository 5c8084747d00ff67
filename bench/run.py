"""Benchmarks: plain Orthanc and hardened Orthanc, in one run, on the same data; prints ratios.

    .venv/bin/python bench/run.py [--quick] [--instances N] [--repeat R] [--json out.json]
                                  [--baseline GIT_REF|DIR] [--floor] [--only WORDS]

Both servers run side by side on loopback with the same TLS, accounts and storage settings
(``tests/support/server.py``); the plain one has no plugin. ``--baseline`` adds a third,
"before": hardened with the plugin of an earlier commit. ``--floor`` adds "floor": Orthanc with
the null plugin (``bench/floor_plugin.py``: the same hook kinds with trivial bodies and a
storage area in Python that writes like Orthanc's own), which measures what any Python plugin
costs in those positions; each row then also has floor/plain and hardened/floor ratios.
Each figure is the median of ``--repeat`` runs, the servers taking turns (each repetition starting
with the next server); each run also records the server's CPU time
(user + system from /proc/<pid>/stat), which C-STORE wall time hides. Component benchmarks
(audit append rate, trail query, scrub) live in ``bench/bench_*.py`` and are run when present.
No figure is asserted: machines are noisy; compare within one run.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "plugin")]

import requests  # noqa: E402
from pynetdicom import AE  # noqa: E402
from pynetdicom.sop_class import CTImageStorage, MRImageStorage  # noqa: E402

from tests.support.dicom import make_instance, new_uid  # noqa: E402
from tests.support.dimse import c_get, c_move, c_move_query  # noqa: E402
from tests.support.pki import make_pki  # noqa: E402
from tests.support.scp import StorageSCP, client_tls_context, save  # noqa: E402
from tests.support.server import OrthancServer, make_server  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
FLOOR_PLUGIN = Path(__file__).resolve().parent / "floor_plugin.py"


def cpu_seconds(server: OrthancServer) -> float:
    """User + system CPU time of the Orthanc process so far."""
    assert server.process is not None
    fields = Path(f"/proc/{server.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def make_dataset(instances: int, mr: int, size: int) -> list[bytes]:
    """CT-like instances (``size``², 16-bit) in several studies/series, plus small MR instances."""
    files: list[bytes] = []
    studies = max(1, instances // 100)
    per_study = instances // studies
    for s in range(studies):
        study = new_uid()
        for series_index in range(2):
            series = new_uid()
            count = per_study // 2 + (per_study % 2 if series_index == 0 else 0)
            for i in range(count):
                files.append(
                    make_instance(
                        patient_id=f"BENCH-{s:03d}", study_uid=study, series_uid=series,
                        rows=size, cols=size, instance_number=i + 1, seed=len(files),
                    )
                )
    study = new_uid()
    series = new_uid()
    for i in range(mr):
        files.append(make_instance(patient_id="BENCH-MR", study_uid=study, series_uid=series,
                                   modality="MR", rows=64, cols=64, instance_number=i + 1, seed=10_000 + i))
    return files


class Bench:
    """Runs one measured operation against both servers and keeps the medians."""

    def __init__(self, servers: dict[str, OrthancServer], repeat: int, only: list[str] | None = None) -> None:
        self.servers = servers
        self.repeat = repeat
        self.only = only
        self.results: list[dict[str, Any]] = []

    def measure(
        self,
        name: str,
        run: Callable[[OrthancServer], None],
        prepare: Callable[[OrthancServer], None] | None = None,
        unit_count: int = 0,
    ) -> None:
        if self.only and not any(word in name for word in self.only):
            return
        row: dict[str, Any] = {"name": name, "count": unit_count}
        labels = list(self.servers)
        walls: dict[str, list[float]] = {label: [] for label in labels}
        cpus: dict[str, list[float]] = {label: [] for label in labels}
        # The servers take turns, and each repetition starts with the next one: the machine's drift
        # during a row (page cache, other servers' background work) falls on every server alike, not
        # on whichever runs last (in a fixed order, the plugin measured last used ≈ 5 % more CPU, whichever it was).
        for repetition in range(self.repeat):
            for index in range(len(labels)):
                label = labels[(repetition + index) % len(labels)]
                server = self.servers[label]
                if prepare is not None:
                    prepare(server)
                cpu0, t0 = cpu_seconds(server), time.perf_counter()
                run(server)
                walls[label].append(time.perf_counter() - t0)
                cpus[label].append(cpu_seconds(server) - cpu0)
        for label in labels:
            row[label] = {"wall_s": statistics.median(walls[label]), "server_cpu_s": statistics.median(cpus[label])}
        plain, hardened = row["plain"], row["hardened"]
        row["ratio_wall"] = hardened["wall_s"] / plain["wall_s"] if plain["wall_s"] else None
        row["ratio_cpu"] = hardened["server_cpu_s"] / plain["server_cpu_s"] if plain["server_cpu_s"] else None
        if "before" in row:
            before = row["before"]
            row["before_ratio_wall"] = before["wall_s"] / plain["wall_s"] if plain["wall_s"] else None
            row["before_ratio_cpu"] = before["server_cpu_s"] / plain["server_cpu_s"] if plain["server_cpu_s"] else None
        if "floor" in row:
            floor = row["floor"]
            row["floor_ratio_wall"] = _ratio(floor["wall_s"], plain["wall_s"])
            row["floor_ratio_cpu"] = _ratio(floor["server_cpu_s"], plain["server_cpu_s"])
            row["hardened_floor_ratio_wall"] = _ratio(hardened["wall_s"], floor["wall_s"])
            row["hardened_floor_ratio_cpu"] = _ratio(hardened["server_cpu_s"], floor["server_cpu_s"])
        self.results.append(row)
        print(_format_row(row), flush=True)


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


def _times(value: float | None) -> str:
    return f"{value:.2f}" if value else "-"


def _format_row(row: dict[str, Any]) -> str:
    plain, hardened = row["plain"], row["hardened"]
    ratio = f"{row['ratio_wall']:.2f}" if row["ratio_wall"] else "-"
    cpu_ratio = f"{row['ratio_cpu']:.2f}" if row["ratio_cpu"] else "-"
    line = (
        f"{row['name']:<34} plain {plain['wall_s']:8.3f}s  hardened {hardened['wall_s']:8.3f}s  "
        f"ratio {ratio:>5}   server CPU {plain['server_cpu_s']:6.2f}s / {hardened['server_cpu_s']:6.2f}s "
        f"(x{cpu_ratio})"
    )
    if "before" in row:
        before = row["before"]
        wall = f"{row['before_ratio_wall']:.2f}" if row["before_ratio_wall"] else "-"
        cpu = f"{row['before_ratio_cpu']:.2f}" if row["before_ratio_cpu"] else "-"
        line += f"   before {before['wall_s']:8.3f}s ratio {wall} CPU {before['server_cpu_s']:6.2f}s (x{cpu})"
    if "floor" in row:
        floor = row["floor"]
        line += (f"   floor {floor['wall_s']:8.3f}s CPU {floor['server_cpu_s']:6.2f}s: "
                 f"floor/plain {_times(row['floor_ratio_wall'])} (CPU x{_times(row['floor_ratio_cpu'])}), "
                 f"hardened/floor {_times(row['hardened_floor_ratio_wall'])} "
                 f"(CPU x{_times(row['hardened_floor_ratio_cpu'])})")
    return line


def baseline_plugin(ref: str, work: Path) -> Path:
    """The entry script of the plugin as it was at git ``ref`` (or in the checkout at directory ``ref``).

    It shares this checkout's venv. A directory serves targets without git: extract it on the
    host (``git archive REF plugin | tar -x -C DIR``).
    """
    if Path(ref).is_dir():
        base = Path(ref)
    else:
        base = work / "baseline"
        base.mkdir()
        archive = subprocess.run(["git", "-C", str(REPO), "archive", ref, "plugin"], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(base)], input=archive.stdout, check=True)
    venv = REPO / ".venv"
    if venv.exists() and not (base / ".venv").exists():
        (base / ".venv").symlink_to(venv)
    return base / "plugin" / "hardening.py"


class AnswerError(RuntimeError):
    """A benchmark request was not answered 200; the message has the method, URL, status and body."""

    def __init__(self, response: requests.Response) -> None:
        request = response.request
        body = response.text[:ANSWER_BODY_CHARS]
        super().__init__(f"{request.method} {response.url} answered {response.status_code} "
                         f"{response.reason}: {body!r}")
        self.status = response.status_code
        self.body = body


ANSWER_BODY_CHARS = 2000


def check_answer(response: requests.Response) -> requests.Response:
    """``response`` if it is a 200.

    Raises:
        AnswerError: any other status (its status and body kept, for the report).
    """
    if response.status_code != 200:
        raise AnswerError(response)
    return response


def clear(server: OrthancServer) -> None:
    """Delete every patient (the storage area's remove runs for each file)."""
    for patient in check_answer(server.get("/patients")).json():
        check_answer(server.delete(f"/patients/{patient}"))


def upload_all(files: list[bytes], clients: int) -> Callable[[OrthancServer], None]:
    def run(server: OrthancServer) -> None:
        def send(chunk: list[bytes]) -> None:
            with requests.Session() as session:
                session.auth = server.auth("admin")
                for data in chunk:
                    check_answer(session.post(
                        server.url + "/instances", data=data, verify=str(server.pki.ca),
                        headers={"Content-Type": "application/dicom", "Accept-Encoding": "identity"}))

        chunks = [files[i::clients] for i in range(clients)]
        with concurrent.futures.ThreadPoolExecutor(clients) as pool:
            list(pool.map(send, chunks))

    return run


def storescu_all(directory: Path) -> Callable[[OrthancServer], None]:
    def run(server: OrthancServer) -> None:
        server.dcmtk("storescu", "+sd", "+r", files=[str(directory)], check=True, timeout=3600)

    return run


def pynetdicom_store_all(files: list[bytes]) -> Callable[[OrthancServer], None]:
    import io

    from pydicom import dcmread

    datasets = [dcmread(io.BytesIO(f)) for f in files]

    def run(server: OrthancServer) -> None:
        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context(CTImageStorage)
        ae.add_requested_context(MRImageStorage)
        assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title=server.aet,
                             tls_args=(client_tls_context(server.pki), None))
        if not assoc.is_established:
            raise RuntimeError("pynetdicom association refused")
        try:
            for ds in datasets:
                status = assoc.send_c_store(ds)
                if status.Status != 0:
                    raise RuntimeError(f"C-STORE status {status.Status:#06x}")
        finally:
            assoc.release()

    return run


def fetch_files(server: OrthancServer, instances: list[str]) -> None:
    """``GET /instances/{id}/file`` of each instance, in order, on one connection (one client)."""
    with requests.Session() as session:
        session.auth = server.auth("admin")
        for instance in instances:
            check_answer(session.get(f"{server.url}/instances/{instance}/file", verify=str(server.pki.ca),
                                     headers={"Accept-Encoding": "identity"}))


def retrieve_files(clients: int) -> Callable[[OrthancServer], None]:
    def run(server: OrthancServer) -> None:
        instances = server.get("/instances").json()
        with concurrent.futures.ThreadPoolExecutor(clients) as pool:
            list(pool.map(lambda chunk: fetch_files(server, chunk), [instances[i::clients] for i in range(clients)]))

    return run


def archive_studies(server: OrthancServer) -> None:
    for study in server.get("/studies").json():
        r = server.get(f"/studies/{study}/archive", timeout=600)
        r.raise_for_status()


def cget_all(server: OrthancServer) -> None:
    """C-GET every study over TLS with pynetdicom (DCMTK 3.6.7's getscu has no TLS)."""
    for study in server.get("/studies?expand").json():
        result = c_get(server, study["MainDicomTags"]["StudyInstanceUID"])
        if result.status != 0:
            raise RuntimeError(f"C-GET status {result.status:#06x}")


def cmove_all(server: OrthancServer) -> None:
    """C-MOVE every study over TLS (pynetdicom; DCMTK 3.6.7's movescu has no TLS) to "TESTSCU"."""
    for study in server.get("/studies?expand").json():
        result = c_move(server, study["MainDicomTags"]["StudyInstanceUID"])
        if result.status != 0:
            raise RuntimeError(f"C-MOVE status {result.status:#06x}")


def cmove_each_instance(files: list[bytes]) -> Callable[[OrthancServer], None]:
    """C-MOVE each of ``files`` on its own (image level, as a viewer fetches one image) to "TESTSCU"."""
    import io

    from pydicom import dcmread
    from pydicom.dataset import Dataset

    queries = []
    for data in files:
        parsed = dcmread(io.BytesIO(data), stop_before_pixels=True)
        query = Dataset()
        query.QueryRetrieveLevel = "IMAGE"
        query.StudyInstanceUID = parsed.StudyInstanceUID
        query.SeriesInstanceUID = parsed.SeriesInstanceUID
        query.SOPInstanceUID = parsed.SOPInstanceUID
        queries.append(query)

    def run(server: OrthancServer) -> None:
        for query in queries:
            result = c_move_query(server, query)
            if result.status != 0 or result.completed != 1:
                raise RuntimeError(f"C-MOVE of one instance: status {result.status:#06x}, {result.completed} sent")

    return run


def find_studies(repeat: int) -> Callable[[OrthancServer], None]:
    def run(server: OrthancServer) -> None:
        for _ in range(repeat):
            r = server.post("/tools/find", json={"Level": "Study", "Query": {"PatientID": "BENCH*"}, "Expand": True})
            r.raise_for_status()

    return run


def cfind_studies(repeat: int) -> Callable[[OrthancServer], None]:
    def run(server: OrthancServer) -> None:
        for _ in range(repeat):
            server.dcmtk("findscu", "-S", "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientID=BENCH*",
                         "-k", "StudyInstanceUID", check=True)

    return run


def component_benchmarks(quick: bool) -> list[dict[str, Any]]:
    """Run ``bench/bench_*.py`` modules that expose ``run(quick: bool) -> list[dict]``."""
    results: list[dict[str, Any]] = []
    for path in sorted(Path(__file__).parent.glob("bench_*.py")):
        spec = importlib.util.spec_from_file_location(path.stem, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if hasattr(module, "run"):
            print(f"-- {path.name}", flush=True)
            for row in module.run(quick=quick):
                print("   " + json.dumps(row), flush=True)
                results.append({"source": path.name, **row})
    return results


def versions() -> dict[str, str]:
    def out(*cmd: str) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip()
        except OSError:
            return "missing"

    return {
        "orthanc": out("dpkg-query", "-W", "-f=${Version}", "orthanc"),
        "orthanc-python": out("dpkg-query", "-W", "-f=${Version}", "orthanc-python"),
        "dcmtk": out("dpkg-query", "-W", "-f=${Version}", "dcmtk"),
        "python": platform.python_version(),
        "cpus": str(os.cpu_count()),
        "machine": platform.machine(),
        "kernel": platform.release(),
    }


def bench_setup(work: Path, instances: int, mr: int,
                size: int) -> tuple[list[bytes], Path, Any, dict[str, OrthancServer]]:
    """The benchmark's data (also saved as files under ``work/data``), its PKI, and the plain and hardened servers."""
    files = make_dataset(instances, mr, size)
    data_dir = work / "data"
    save(data_dir, files)
    pki = make_pki(work / "pki")
    servers = {
        "plain": make_server(work / "plain", pki, plugin=False),
        "hardened": make_server(work / "hardened", pki),
    }
    return files, data_dir, pki, servers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run for CI (small data, one repetition)")
    parser.add_argument("--instances", type=int, default=None, help="CT instances (default 500, quick 20)")
    parser.add_argument("--repeat", type=int, default=None, help="repetitions per figure (default 3, quick 1)")
    parser.add_argument("--json", type=Path, default=None, help="write results as JSON here")
    parser.add_argument("--no-components", action="store_true", help="skip bench/bench_*.py")
    parser.add_argument("--baseline", metavar="GIT_REF", default=None,
                        help="also run a hardened Orthanc with the plugin of GIT_REF ('before'), same run, same data")
    parser.add_argument("--floor", action="store_true",
                        help="also run Orthanc with the null plugin bench/floor_plugin.py ('floor'), same run, "
                             "same data")
    parser.add_argument("--only", metavar="WORDS", default=None,
                        help="comma-separated words: run only the figures whose name contains one of them "
                             "(retrieves need an ingest figure before them, e.g. '8 clients,/file')")
    args = parser.parse_args(argv)
    instances = args.instances or (20 if args.quick else 500)
    repeat = args.repeat or (1 if args.quick else 3)
    size = 128 if args.quick else 512

    work = Path(tempfile.mkdtemp(prefix="hardening-bench-"))
    print(f"data: {instances} CT {size}x{size} 16-bit + {10 if not args.quick else 4} MR; repeat {repeat}; in {work}")
    mr = 4 if args.quick else 10
    files, data_dir, pki, servers = bench_setup(work, instances, mr, size)
    if args.baseline:
        script = baseline_plugin(args.baseline, work)
        servers["before"] = make_server(work / "before", pki, config={"PythonScript": str(script)})
    if args.floor:
        servers["floor"] = make_server(work / "floor", pki, config={"PythonScript": str(FLOOR_PLUGIN)})
    scps: list[StorageSCP] = []
    try:
        for server in servers.values():
            server.start()
            scps.append(StorageSCP(port=server.modality_port, pki=pki).start())
        bench = Bench(servers, repeat, args.only.split(",") if args.only else None)
        bench.measure("ingest REST, 1 client", upload_all(files, 1), prepare=clear, unit_count=len(files))
        bench.measure("ingest REST, 4 clients", upload_all(files, 4), prepare=clear, unit_count=len(files))
        bench.measure("ingest REST, 8 clients", upload_all(files, 8), prepare=clear, unit_count=len(files))
        bench.measure("ingest C-STORE storescu +tls", storescu_all(data_dir), prepare=clear, unit_count=len(files))
        bench.measure("ingest C-STORE pynetdicom TLS", pynetdicom_store_all(files), prepare=clear,
                      unit_count=len(files))
        bench.measure("retrieve /file, 1 client", retrieve_files(1), unit_count=len(files))
        bench.measure("retrieve /file, 4 clients", retrieve_files(4), unit_count=len(files))
        bench.measure("retrieve study archives", archive_studies)
        bench.measure("retrieve C-GET pynetdicom TLS", cget_all)
        bench.measure("retrieve C-MOVE pynetdicom TLS", cmove_all)
        bench.measure("retrieve C-MOVE pynetdicom TLS, one MR image each", cmove_each_instance(files[-mr:]),
                      unit_count=mr)
        bench.measure("query /tools/find x20", find_studies(20))
        bench.measure("query C-FIND findscu x5", cfind_studies(5))
    finally:
        for scp in scps:
            scp.stop()
        for server in servers.values():
            server.stop()
    components = [] if args.no_components else component_benchmarks(args.quick)
    report = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
        "instances": len(files),
        "repeat": repeat,
        "baseline": args.baseline,
        "floor": args.floor,
        "load_average": os.getloadavg(),
        "orthanc": bench.results,
        "components": components,
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
