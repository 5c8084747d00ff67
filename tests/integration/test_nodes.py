"""Several hardened Orthanc nodes, one archive: one PostgreSQL, one storage folder (README "Adding a node").

One cluster for the module (``tests/support/nodes.py``): a real PostgreSQL started here, two
hardened nodes with Orthanc's index in it through Orthanc's PostgreSQL plugin and the files
in one shared folder. Then ``scripts/run.sh`` as a user starts it: a first node, and a second
one joining it with ``HARDENING_POSTGRES``, ``HARDENING_STORAGE`` and ``HARDENING_JOIN``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.integration.test_deployment import RUN_SCRIPT, Deployment
from tests.support.dicom import make_instance, make_series
from tests.support.nodes import Cluster, start_cluster
from tests.support.server import OrthancServer, Pki, free_port
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.integration]

# Orthanc's own error when the storage read raises (500; 415 for an image it cannot decode).
REFUSED = (409, 415, 500)


@pytest.fixture(scope="module")
def cluster(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    # StableAge 1: studies get their signed manifest within a second of their last instance.
    config = {"StableAge": 1}
    with start_cluster(tmp_path_factory.mktemp("nodes"), pki, config=config) as running:
        yield running


@pytest.fixture(scope="module")
def nodes(cluster: Cluster) -> tuple[OrthancServer, OrthancServer]:
    a, b = cluster.nodes
    return a, b


def stored_path(storage: Path, server: OrthancServer, instance_id: str) -> Path:
    uuid = server.get(f"/instances/{instance_id}/attachments/dicom/info").json()["Uuid"]
    return storage / uuid[0:2] / uuid[2:4] / uuid


def test_instance_uploaded_on_one_node_is_in_the_index_of_the_other(cluster: Cluster, nodes) -> None:
    a, b = nodes
    data = make_instance(patient_id="NODES-INDEX")
    instance = a.upload(data)["ID"]
    assert instance in b.get("/instances").json()
    # The index answers alike on both (tags read from the index, not from the file).
    assert b.get(f"/instances/{instance}").json() == a.get(f"/instances/{instance}").json()
    # One file, in the shared folder, written by A's sealed storage area.
    path = stored_path(cluster.storage, b, instance)
    assert path.read_bytes() == data
    assert not any((a.home / "storage").rglob("*-*-*-*-*")) and not any((b.home / "storage").rglob("*-*-*-*-*"))


def test_both_nodes_ingest_into_one_index(nodes) -> None:
    a, b = nodes
    first, second = make_series(2, patient_id="NODES-BOTH")
    on_a, on_b = a.upload(first)["ID"], b.upload(second)["ID"]
    series = a.get(f"/instances/{on_a}/series").json()
    assert sorted(series["Instances"]) == sorted([on_a, on_b])
    assert b.get(f"/series/{series['ID']}").json()["Instances"] == series["Instances"]


def ingest(server: OrthancServer, count: int, patient_id: str) -> tuple[str, list[str], list[bytes]]:
    files = make_series(count, patient_id=patient_id)
    ids = [server.upload(data)["ID"] for data in files]
    return server.get(f"/instances/{ids[0]}/study").json()["ID"], ids, files


def manifest(server: OrthancServer, study: str) -> dict[str, Any]:
    response = server.get(f"/hardening/studies/{study}/manifest", user="user")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def security_alerts(server: OrthancServer, needle: str) -> list[dict[str, Any]]:
    events = server.get("/hardening/audit", user="auditor", params={"event": "110113", "limit": 500}).json()["events"]
    return [e for e in events if needle in json.dumps(e)]


def test_sealed_on_one_node_is_verified_and_served_by_the_other(nodes) -> None:
    a, b = nodes
    study, ids, files = ingest(a, 2, "NODES-SERVE")
    for instance, data in zip(ids, files, strict=True):
        assert b.get(f"/instances/{instance}/file").content == data
        seal = b.get(f"/hardening/instances/{instance}/seal").json()
        assert seal["verified"] is True and all(not part["problem"] for part in seal["attachments"]), seal
    study_uid = a.get(f"/studies/{study}").json()["MainDicomTags"]["StudyInstanceUID"]
    wado = b.get(f"/dicom-web/studies/{study_uid}", headers={"Accept": "multipart/related; type=application/dicom"})
    assert wado.status_code == 200 and all(data in wado.content for data in files)
    archive = b.get(f"/studies/{study}/archive")
    assert archive.status_code == 200
    with zipfile.ZipFile(io.BytesIO(archive.content)) as bundle:
        assert sorted(bundle.read(name) for name in bundle.namelist() if not name.endswith("/")) == sorted(files)


def test_deletion_on_one_node_resigns_the_manifest_the_other_serves(nodes) -> None:
    a, b = nodes
    study, ids, files = ingest(a, 3, "NODES-DELETE")
    signed = wait_for(lambda: (r := a.get(f"/hardening/studies/{study}/manifest")).status_code == 200 and r.json(),
                      "the manifest signed by A")
    assert signed["manifest"]["instance_count"] == 3
    assert b.delete(f"/instances/{ids[0]}").status_code == 200
    resigned = wait_for(lambda: (m := manifest(a, study))["manifest"]["instance_count"] == 2 and m,
                        "the manifest re-signed after B's deletion")
    assert resigned["verification"]["ok"] is True, resigned
    assert resigned["manifest"] != signed["manifest"]
    for instance, data in zip(ids[1:], files[1:], strict=True):
        assert a.get(f"/instances/{instance}/file").content == data
    assert a.get(f"/instances/{ids[0]}/file").status_code == 404


def test_one_series_read_on_both_nodes_is_one_trail_that_verifies(nodes) -> None:
    a, b = nodes
    _study, ids, _files = ingest(a, 1, "NODES-TRAIL")
    series_uid = a.get(f"/instances/{ids[0]}/series").json()["MainDicomTags"]["SeriesInstanceUID"]
    assert a.get(f"/instances/{ids[0]}/file", user="user").status_code == 200
    assert b.get(f"/instances/{ids[0]}/file", user="user").status_code == 200
    for node in (a, b):
        events = node.get("/hardening/audit", user="auditor", params={"series": series_uid}).json()["events"]
        reads = [e for e in events if "110103" in str(e["event"]) and e["user"] == "user"]
        assert len(reads) == 2, events
    assert a.get("/hardening/audit", user="auditor", params={"series": series_uid}).json() == \
        b.get("/hardening/audit", user="auditor", params={"series": series_uid}).json()
    for node in (a, b):
        report = node.get("/hardening/audit/verify", user="auditor").json()
        assert report["ok"] is True, report


@pytest.mark.attack
def test_tampered_shared_file_is_refused_by_both_nodes(cluster: Cluster, nodes) -> None:
    a, b = nodes
    _study, ids, files = ingest(a, 2, "NODES-TAMPER")
    path = stored_path(cluster.storage, a, ids[0])
    forged = bytearray(files[0])
    forged[-1] ^= 0xFF  # one pixel changed, as CT-GAN would
    path.write_bytes(bytes(forged))
    uuid = path.name
    for node in (a, b):
        response = node.get(f"/instances/{ids[0]}/file")
        assert response.status_code in REFUSED and forged not in response.content, response.status_code
        assert "SealMismatchError" in node.log_text() or "does not match" in node.log_text()
        assert security_alerts(node, uuid), f"no Security Alert naming {uuid}"
        # The untouched instance of the same series is still served as stored.
        assert node.get(f"/instances/{ids[1]}/file").content == files[1]
    # Nothing trusted changed: the seal still binds the original bytes.
    seal = b.get(f"/hardening/instances/{ids[0]}/seal").json()
    assert seal["attachments"][0]["seal"]["sha256"] == hashlib.sha256(files[0]).hexdigest()


# -- make run as a node -------------------------------------------------------------------------


def run_node(home: Path, env: dict[str, str]) -> Deployment:
    node = Deployment(home=home, https_port=free_port(), dicom_port=free_port(), aet="NODETEST", extra_env=env)
    return node


def test_make_run_nodes_form_one_archive(cluster: Cluster, tmp_path: Path) -> None:
    url = cluster.postgres.create_database("makerun")
    storage = tmp_path / "shared"
    shared = {"HARDENING_POSTGRES": url, "HARDENING_STORAGE": str(storage)}
    a = run_node(tmp_path / "a", shared)
    b = run_node(tmp_path / "b", {**shared, "HARDENING_JOIN": str(tmp_path / "a")})
    try:
        a.start()
        b.start()
        # B took A's CA, accounts and signing key; its server certificate is its own.
        for name in ("tls/ca.pem", "credentials.json", "keys/seal-key.pem", "keys/passphrase"):
            assert (b.home / name).read_bytes() == (a.home / name).read_bytes(), name
        assert (b.home / "tls/server.key").read_bytes() != (a.home / "tls/server.key").read_bytes()
        data = make_instance(patient_id="NODES-RUN")
        response = a.post("/instances", data=data)
        assert response.status_code == 200, response.text
        instance = response.json()["ID"]
        # B answers with A's accounts, verified against the one CA, and sees A's instance.
        assert instance in b.get("/instances").json()
        uuid = b.get(f"/instances/{instance}/attachments/dicom/info").json()["Uuid"]
        assert (storage / uuid[0:2] / uuid[2:4] / uuid).read_bytes() == data
    finally:
        b.stop()
        a.stop()


def devsetup_failure(home: Path, env: dict[str, str]) -> str:
    """Run scripts/run.sh expecting it to stop before Orthanc starts; its output."""
    full = {key: value for key, value in os.environ.items() if key not in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")}
    full.update(HARDENING_HOME=str(home), HTTPS_PORT=str(free_port()), DICOM_PORT=str(free_port()), **env)
    result = subprocess.run([str(RUN_SCRIPT)], cwd="/", env=full, capture_output=True, text=True, timeout=120,
                            stdin=subprocess.DEVNULL, check=False)
    assert result.returncode != 0, result.stdout
    assert "starting a hardened Orthanc" not in result.stdout
    return result.stderr


def test_make_run_refuses_to_join_what_is_not_a_node_home(cluster: Cluster, tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    error = devsetup_failure(tmp_path / "node", {"HARDENING_POSTGRES": cluster.postgres.url(),
                                                 "HARDENING_STORAGE": str(tmp_path / "s"),
                                                 "HARDENING_JOIN": str(tmp_path / "elsewhere")})
    assert f"HARDENING_JOIN={tmp_path / 'elsewhere'} is not the home of a node (missing tls/ca.pem" in error
    assert not (tmp_path / "node" / "tls").exists()


def test_make_run_refuses_an_unreachable_postgres(tmp_path: Path) -> None:
    url = f"postgresql://hardening@127.0.0.1:{free_port()}/archive"
    error = devsetup_failure(tmp_path / "node", {"HARDENING_POSTGRES": url, "HARDENING_STORAGE": str(tmp_path / "s")})
    assert f"HARDENING_POSTGRES={url}: PostgreSQL unreachable" in error


def test_make_run_refuses_a_storage_folder_it_cannot_write(cluster: Cluster, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    error = devsetup_failure(tmp_path / "node", {"HARDENING_POSTGRES": cluster.postgres.url(),
                                                 "HARDENING_STORAGE": str(tmp_path / "file" / "s")})
    assert "the storage folder is not writable" in error


def test_make_run_refuses_join_without_postgres(tmp_path: Path) -> None:
    error = devsetup_failure(tmp_path / "node", {"HARDENING_JOIN": str(tmp_path)})
    assert "HARDENING_STORAGE and HARDENING_JOIN need HARDENING_POSTGRES" in error


# -- crashes: a node killed, PostgreSQL restarted (last in the module: they restart what they break) --


def upload_all(server: OrthancServer, files: list[bytes], acknowledged: list[str], progress: threading.Event,
               after: int) -> None:
    """One client: upload ``files`` in turn, recording each acknowledged instance; stop at the first failure."""
    for data in files:
        try:
            response = server.post("/instances", data=data, headers={"Content-Type": "application/dicom"}, timeout=60)
        except requests.RequestException:
            return
        if response.status_code != 200:
            return
        acknowledged.append(response.json()["ID"])
        if len(acknowledged) >= after:
            progress.set()


def test_node_killed_during_an_ingest_storm_loses_nothing_acknowledged(nodes) -> None:
    a, b = nodes
    on_a, on_b = make_series(30, patient_id="NODES-STORM-A"), make_series(30, patient_id="NODES-STORM-B")
    acked_a: list[str] = []
    acked_b: list[str] = []
    a_progress, b_progress = threading.Event(), threading.Event()
    clients = [threading.Thread(target=upload_all, args=(a, on_a, acked_a, a_progress, 10)),
               threading.Thread(target=upload_all, args=(b, on_b, acked_b, b_progress, 10**6))]
    for client in clients:
        client.start()
    try:
        assert a_progress.wait(120), "A acknowledged fewer than 10 instances"
        a.kill()  # kill -9 in the middle of the storm
    finally:
        for client in clients:
            client.join(180)
    # B kept serving: every one of its client's instances was acknowledged.
    assert len(acked_b) == 30
    a.start()
    for instance in [*acked_a, *acked_b]:
        for node in (a, b):
            assert node.get(f"/instances/{instance}/file").status_code == 200, instance
        seal = b.get(f"/hardening/instances/{instance}/seal").json()
        assert seal["verified"] is True, seal
    for node in (a, b):
        report = node.get("/hardening/audit/verify", user="auditor").json()
        assert report["ok"] is True, report



def test_node_restarting_while_the_other_ingests_keeps_every_acknowledged_instance(nodes) -> None:
    a, b = nodes
    files = make_series(40, patient_id="NODES-RESTART")
    acknowledged: list[str] = []
    progress = threading.Event()
    client = threading.Thread(target=upload_all, args=(b, files, acknowledged, progress, 5))
    client.start()
    try:
        assert progress.wait(120), "B acknowledged fewer than 5 instances"
        # A's start-up reconciliation runs while B's ingests are in flight.
        a.restart()
    finally:
        client.join(180)
    assert len(acknowledged) == 40
    for instance in acknowledged:
        for node in (a, b):
            assert node.get(f"/instances/{instance}/file").status_code == 200, instance


def test_postgres_restarted_under_load_refuses_while_down_and_resumes(cluster: Cluster, nodes) -> None:
    a, b = nodes
    files = make_series(40, patient_id="NODES-PG")
    acknowledged: list[str] = []
    stop = threading.Event()

    def load() -> None:
        # One client on B keeps ingesting through the outage; only 200 answers count.
        for data in files:
            if stop.is_set():
                return
            try:
                response = b.post("/instances", data=data, headers={"Content-Type": "application/dicom"}, timeout=60)
            except requests.RequestException:
                continue
            if response.status_code == 200:
                acknowledged.append(response.json()["ID"])

    before = a.upload(make_instance(patient_id="NODES-PG-BEFORE"))["ID"]
    client = threading.Thread(target=load)
    client.start()
    try:
        wait_for(lambda: len(acknowledged) >= 3, "ingest under load")
        cluster.postgres.stop()  # immediate: as a crash of the database server would
        # While it is down: refused (enforce), answered (the request timeout would raise), never served.
        upload = a.post("/instances", data=make_instance(patient_id="NODES-PG-DOWN"),
                        headers={"Content-Type": "application/dicom"}, timeout=60)
        read = a.get(f"/instances/{before}/file", timeout=60)
        assert upload.status_code in (403, 500, 503) and read.status_code in (403, 500, 503), \
            (upload.status_code, read.status_code)
        assert "refused" in a.log_text() and "cannot be opened" in a.log_text()
    finally:
        if not cluster.postgres.running:
            cluster.postgres.start()
        stop.set()
        client.join(120)
    # Service resumes on both nodes once PostgreSQL is back (Orthanc's plugin reconnects).
    wait_for(lambda: a.post("/instances", data=files[-1], headers={"Content-Type": "application/dicom"}).status_code
             == 200, "ingest on A after the restart", timeout=60)
    wait_for(lambda: b.get(f"/instances/{before}/file").status_code == 200, "reads on B after the restart", timeout=60)
    # Nothing acknowledged was lost, before or during the outage; every one is sealed.
    for instance in [before, *acknowledged]:
        assert a.get(f"/instances/{instance}/file").status_code == 200, instance
        assert b.get(f"/hardening/instances/{instance}/seal").json()["verified"] is True, instance
    # The audit trail's readers reconnect too: the chain verifies on both nodes.
    for node in (a, b):
        verify = wait_for(lambda n=node: (r := n.get("/hardening/audit/verify", user="auditor")).status_code == 200
                          and r, "the audit verification after the restart", timeout=30)
        assert verify.json()["ok"] is True, verify.text
