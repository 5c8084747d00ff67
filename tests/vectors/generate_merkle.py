"""Generate the Merkle vectors ``merkle_*.json`` (run: ``python tests/vectors/generate_merkle.py``).

The roots are computed here with the *recursive* RFC 6962 §2.1 definition, written
independently of ``seal/manifest.py`` (which is iterative); ``merkle_rfc6962.json`` also
carries the roots published with Certificate Transparency's reference test data for the same
leaves, so the vectors are checked against a third source. ``merkle_manifest.json`` fixes the
leaf encoding of a study manifest: changing it changes the manifest format (bump ``VERSION``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent

# Leaves and roots of the Certificate Transparency reference tests (merkle_tree_test.cc).
CT_LEAVES = ["", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"]
CT_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]


def mth(leaves: list[bytes]) -> bytes:
    """RFC 6962 §2.1 MTH, recursively: split at the largest power of two smaller than n."""
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < n:
        k *= 2
    return hashlib.sha256(b"\x01" + mth(leaves[:k]) + mth(leaves[k:])).digest()


def leaf_input(sop: str, series: str, study: str, patient: str, uuid: str, sha: str, tags: str) -> bytes:
    body = {"index_tags_sha256": tags, "patient_id": patient, "series_uid": series, "sha256": sha,
            "sop_instance_uid": sop, "study_uid": study, "uuid": uuid}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def rfc6962_vectors() -> dict[str, object]:
    cases = []
    leaves = [bytes.fromhex(x) for x in CT_LEAVES]
    cases.append({"leaves": [], "root": mth([]).hex(), "ct_root": hashlib.sha256(b"").hexdigest()})
    for n in range(1, len(leaves) + 1):
        cases.append({"leaves": CT_LEAVES[:n], "root": mth(leaves[:n]).hex(), "ct_root": CT_ROOTS[n - 1]})
    # Larger trees with unbalanced shapes (n = 9 … 33).
    for n in (9, 13, 16, 17, 31, 32, 33):
        data = [hashlib.sha256(str(i).encode()).digest()[: (i % 7) + 1] for i in range(n)]
        cases.append({"leaves": [d.hex() for d in data], "root": mth(data).hex(), "ct_root": None})
    return {"description": "RFC 6962 §2.1 Merkle Tree Hash; root from a recursive implementation, "
            "ct_root from Certificate Transparency's reference tests", "cases": cases}


def manifest_vectors() -> dict[str, object]:
    study = "1.2.826.0.1.3680043.8.498.1"
    cases = []
    for count in (1, 2, 3, 5):
        leaves = []
        for i in range(count):
            sop = f"{study}.{i + 1}"
            series = f"{study}.100.{i % 2}"
            uuid = f"00000000-0000-4000-8000-{i:012d}"
            sha = hashlib.sha256(f"file {i}".encode()).hexdigest()
            tags = hashlib.sha256(f"tags {i}".encode()).hexdigest()
            leaves.append({"sop_instance_uid": sop, "series_uid": series, "study_uid": study, "patient_id": "P1",
                           "uuid": uuid, "sha256": sha, "index_tags_sha256": tags})
        leaves.sort(key=lambda x: (x["sop_instance_uid"], x["uuid"]))
        inputs = [leaf_input(x["sop_instance_uid"], x["series_uid"], x["study_uid"], x["patient_id"], x["uuid"],
                             x["sha256"], x["index_tags_sha256"]) for x in leaves]
        cases.append({"leaves": leaves, "leaf_inputs": [i.decode("ascii") for i in inputs], "root": mth(inputs).hex()})
    return {"description": "study manifest leaves: canonical leaf input and RFC 6962 root", "cases": cases}


def main() -> None:
    for name, data in (("merkle_rfc6962.json", rfc6962_vectors()), ("merkle_manifest.json", manifest_vectors())):
        (HERE / name).write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
