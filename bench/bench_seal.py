"""Seal component benchmark: the sealed storage area against a plain one, in one run, same data.

    .venv/bin/python bench/bench_seal.py [--quick]

"plain" does what Orthanc's own filesystem storage does per attachment (write + fsync on
create; read on read). "hardened" is ``shell/storage.SealedStorage`` driven directly (FakeOrthanc,
no HTTP): on create it parses the identity, signs the seal, commits the seal row and writes the
file durably; on read it hashes, checks the seal and its (cached) signature. Both create the
DICOM file and its "until pixel data" header, as Orthanc 1.10 does with a plugin storage area.
The end-to-end figures (REST, C-STORE, C-GET through real servers) come from ``bench/run.py``,
which also runs this module. Nothing is asserted: compare within one run.

"scrub, first pass": ``ScrubRunner`` over a sealed archive (studies of 50 instances with their
signed manifests), with an empty signature cache (a first pass after a restart) and the verifier
the plugin's scrub uses, against a raw SHA-256 pass over the same files (page cache warm for both):
wall-time ratio of the rates (goal ≥ 0.5) and the ratio of CPU times (steadier on a shared machine).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
import uuid as uuidlib
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "plugin")]

from orthanc_hardening.config import HardeningConfig  # noqa: E402
from orthanc_hardening.shell import storage as storage_module  # noqa: E402
from orthanc_hardening.shell.metrics import Metrics  # noqa: E402
from orthanc_hardening.shell.runtime import Runtime  # noqa: E402
from orthanc_hardening.stores import key_files  # noqa: E402
from orthanc_hardening.stores.signature_cache import SignatureCache  # noqa: E402
from tests.support.dicom import make_instance, new_uid  # noqa: E402
from tests.unit.fakes import FakeOrthanc, MemoryAuditSink  # noqa: E402

PASS = "bench passphrase"


def header_length(data: bytes) -> int:
    """Offset of the Pixel Data element (7FE0,0010), as Orthanc's "until pixel data" attachment."""
    return data.rfind(b"\xe0\x7f\x10\x00")


class PlainStorage:
    """What Orthanc's FilesystemStorage does (SyncStorageArea: fsync on write)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, uuid: str) -> Path:
        return self.root / uuid[:2] / uuid[2:4] / uuid

    def create(self, uuid: str, _content_type: int, data: bytes) -> None:
        path = self._path(uuid)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())

    def read(self, uuid: str, _content_type: int) -> bytes:
        return self._path(uuid).read_bytes()


def hardened_storage(work: Path) -> Any:
    os.environ["HARDENING_KEY_PASSPHRASE"] = PASS
    key_files.generate_key(work / "key.pem", PASS.encode())
    orthanc = FakeOrthanc()
    config = HardeningConfig(data_directory=work / "data", signing_key=work / "key.pem")
    runtime = Runtime(orthanc=orthanc, config=config, orthanc_config={"StorageDirectory": str(work / "storage")},
                      metrics=Metrics(orthanc), audit=MemoryAuditSink(),
                      clock=lambda: dt.datetime.now(dt.UTC))
    keys = key_files.load_key_ring(config.signing_key, PASS.encode(), config.key_directory, (), runtime.clock())
    storage = storage_module.install(runtime, keys, SignatureCache())
    # The read's binding to Orthanc's index is one index call per read in a real Orthanc; this
    # component benchmark has no index (run.py measures reads end to end, binding included).
    storage.index_binding = None
    return storage


def _time_create(storage: Any, files: list[bytes]) -> tuple[float, list[tuple[str, str]]]:
    written = []
    start = time.perf_counter()
    for data in files:
        uuid, header_uuid = str(uuidlib.uuid4()), str(uuidlib.uuid4())
        storage.create(uuid, 1, data)
        storage.create(header_uuid, 3, data[: header_length(data)])
        written.append((uuid, header_uuid))
    return time.perf_counter() - start, written


def _time_read(storage: Any, written: list[tuple[str, str]]) -> float:
    start = time.perf_counter()
    for uuid, _header in written:
        storage.read(uuid, 1)
    return time.perf_counter() - start


def raw_sha256(files: list[Path]) -> tuple[float, float, int]:
    """SHA-256 of every file, read in 1 MiB chunks: (wall s, CPU s, bytes)."""
    import hashlib

    cpu, wall, size = time.process_time(), time.perf_counter(), 0
    for path in files:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
                size += len(chunk)
    return time.perf_counter() - wall, time.process_time() - cpu, size


def scrub_first_pass(work: Path, count: int, size_kb: int, repeats: int) -> dict[str, Any]:
    """The scrub's rate with a cold signature cache against raw SHA-256 over the same files."""
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from orthanc_hardening.integrity.scrub import IndexedInstance
    from orthanc_hardening.seal.identity import InstanceIdentity
    from orthanc_hardening.seal.keys import KeyRing, Signer
    from orthanc_hardening.seal.manifest import build_manifest
    from orthanc_hardening.seal.record import seal_attachment
    from orthanc_hardening.services.scrub_runner import ScrubRunner
    from orthanc_hardening.stores import signature_cache
    from orthanc_hardening.stores.manifest_store import ManifestStore
    from orthanc_hardening.stores.scrub_state import ScrubState
    from orthanc_hardening.stores.seal_store import SealReader, SQLiteSealStore

    signer = Signer.of(ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
    now = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
    root, seals = work / "scrub-storage", SQLiteSealStore(work / "scrub-seals.db")
    instances, by_study, paths = [], {}, []  # type: ignore[var-annotated]
    for n in range(count):
        uuid = str(uuidlib.UUID(int=n + 1, version=4))
        data = os.urandom(size_kb * 1024)
        path = root / uuid[:2] / uuid[2:4] / uuid
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        paths.append(path)
        study = n // 50
        seal = seal_attachment(uuid, 1, data, InstanceIdentity(f"1.2.{study}", f"1.2.{study}.1",
                                                               f"1.2.{study}.1.{n}", "P", ""), signer, now)
        seals.put(seal)
        by_study.setdefault(study, []).append(seal)
        instances.append(IndexedInstance(f"i{n}", f"s{study}", f"1.2.{study}.1", f"1.2.{study}.1.{n}", {1: uuid}))
    manifests = ManifestStore(work / "scrub-manifests.db")
    for study, sealed in by_study.items():
        manifests.put(build_manifest(f"1.2.{study}", f"s{study}", sealed, signer, now))

    class Index:
        def instances(self) -> Any:
            return iter(instances)

        def study_instances(self, study_id: str) -> list[Any]:
            return [i for i in instances if i.study_id == study_id]

    raw_sha256(paths)  # page cache warm
    wall_ratios, cpu_ratios = [], []
    for rep in range(repeats):
        raw_wall, raw_cpu, total = raw_sha256(paths)
        cache, ring = signature_cache.SignatureCache(), KeyRing(signer)
        resigning = getattr(signature_cache, "ResigningVerifier", None)  # as ScrubService wires it
        verifier = cache.verifier_for(resigning(ring) if resigning else ring)
        runner = ScrubRunner(Index(), SealReader(work / "scrub-seals.db"), manifests, root, verifier,
                             ScrubState(work / f"scrub-state-{rep}.db"), lambda: now, cache=cache)
        cpu, wall = time.process_time(), time.perf_counter()
        report = runner.run(runner.state.start_run(now, {}))
        scrub_wall, scrub_cpu = time.perf_counter() - wall, time.process_time() - cpu
        assert report["findings"] == [], report["findings"][:3]
        wall_ratios.append(raw_wall / scrub_wall)
        cpu_ratios.append(raw_cpu / scrub_cpu)
    return {"name": f"scrub first pass ({count} files of {size_kb} KB, cold signature cache) vs raw SHA-256",
            "count": count, "hardened": {"ratio_rate": statistics.median(wall_ratios),
                                         "ratio_cpu": statistics.median(cpu_ratios),
                                         "raw_mb_per_s": total / raw_wall / 1e6}}


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Return one row per operation: plain and hardened seconds per instance, and the ratio."""
    count = 20 if quick else 200
    size = 128 if quick else 512
    study, series = new_uid(), new_uid()
    files = [make_instance(study_uid=study, series_uid=series, rows=size, cols=size, instance_number=i + 1, seed=i)
             for i in range(count)]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-seal-") as tmp:
        work = Path(tmp)
        plain = PlainStorage(work / "plain")
        hardened = hardened_storage(work)
        repeats = 1 if quick else 3
        results: dict[str, dict[str, list[float]]] = {"create": {"plain": [], "hardened": []},
                                                      "read": {"plain": [], "hardened": []}}
        for _ in range(repeats):
            for label, storage in (("plain", plain), ("hardened", hardened)):
                seconds, written = _time_create(storage, files)
                results["create"][label].append(seconds)
                # Two passes: the second is the steady state (signature cache warm, page cache hot).
                _time_read(storage, written)
                results["read"][label].append(_time_read(storage, written))
        for operation, by_label in results.items():
            plain_s = statistics.median(by_label["plain"]) / count
            hardened_s = statistics.median(by_label["hardened"]) / count
            rows.append({
                "name": f"seal storage {operation} ({size}x{size} CT, per instance)",
                "count": count,
                "plain": {"wall_s": plain_s},
                "hardened": {"wall_s": hardened_s},
                "ratio_wall": hardened_s / plain_s if plain_s else None,
                "extra_ms_per_instance": (hardened_s - plain_s) * 1000,
            })
        rows.append(scrub_first_pass(work, 40 if quick else 500, 128 if quick else 512, 1 if quick else 5))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    for row in run(quick=args.quick):
        if "plain" not in row:
            print(f"{row['name']}: rate ratio {row['hardened']['ratio_rate']:.2f}, CPU ratio "
                  f"{row['hardened']['ratio_cpu']:.2f} (raw {row['hardened']['raw_mb_per_s']:.0f} MB/s)")
            continue
        print(f"{row['name']:<48} plain {row['plain']['wall_s'] * 1000:7.3f} ms  "
              f"hardened {row['hardened']['wall_s'] * 1000:7.3f} ms  ratio {row['ratio_wall']:.2f}  "
              f"(+{row['extra_ms_per_instance']:.3f} ms)")


if __name__ == "__main__":
    main()
