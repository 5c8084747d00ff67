"""IHE ATNA export to a real rsyslog collector over TLS (RFC 5425): arrival, format, no loss."""

from __future__ import annotations

import base64
import json
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from lxml import etree

from orthanc_hardening.audit.chain import checkpoint_bytes
from orthanc_hardening.shell.review import CHECKPOINT_MSGID
from tests.support.dicom import make_series
from tests.support.server import OrthancServer, Pki, free_port, wait_for_port
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

RSYSLOGD = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
SCHEMA = etree.RelaxNG(etree.parse(str(Path(__file__).resolve().parents[1] / "data" / "dicom-audit-message.rng")))
# One line per message: RFC 5424 fields as rsyslog parsed them, then the raw message.
TEMPLATE = '%protocol-version%\\t%msgid%\\t%app-name%\\t%structured-data%\\t%rawmsg%\\n'
LINE = re.compile(r'^1\t(?P<msgid>[^\t]+)\t(?P<app>[^\t]+)\t\[meta sequenceId="(?P<seq>\d+)"\]\t(?P<raw>.*)$')
RAW = re.compile(r'^<(\d+)>1 (\S+) (\S+) (\S+) (\S+) (\S+) (\[[^\]]*\]) (?P<xml><\?xml.*)$')


class Collector:
    """rsyslogd in the foreground: imtcp with the OpenSSL driver, mutual TLS with the test CA."""

    def __init__(self, directory: Path, pki: Pki, port: int) -> None:
        self.directory = directory
        self.port = port
        self.output = directory / "received.log"
        self.conf = directory / "rsyslog.conf"
        self.pidfile = directory / "rsyslogd.pid"
        files = pki.files
        work = directory / "work"
        work.mkdir(exist_ok=True)
        self.conf.write_text(f"""
global(workDirectory="{work}" maxMessageSize="64k"
       defaultNetstreamDriver="ossl"
       defaultNetstreamDriverCAFile="{files.ca_cert}"
       defaultNetstreamDriverCertFile="{files.server_cert}"
       defaultNetstreamDriverKeyFile="{files.server_key}")
module(load="imtcp" streamDriver.name="ossl" streamDriver.mode="1" streamDriver.authMode="x509/certvalid")
template(name="atna" type="string" string="{TEMPLATE}")
input(type="imtcp" port="{port}" address="127.0.0.1" ruleset="atna")
ruleset(name="atna") {{
  action(type="omfile" file="{self.output}" template="atna" flushOnTXEnd="on" asyncWriting="off")
}}
""")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [RSYSLOGD, "-n", "-f", str(self.conf), "-i", str(self.pidfile)],
            stdout=subprocess.DEVNULL, stderr=(self.directory / "rsyslogd.err").open("ab"))
        if wait_for_port(self.port, timeout=15):
            return
        if self.process.poll() is not None:
            raise RuntimeError("rsyslogd exited: " + (self.directory / "rsyslogd.err").read_text()[-2000:])
        raise RuntimeError("rsyslogd did not listen")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(15)
        self.process = None

    def messages(self) -> dict[int, tuple[str, str, str]]:
        """``{sequenceId: (msgid, app, raw)}`` of every line received so far (duplicates collapse)."""
        found: dict[int, tuple[str, str, str]] = {}
        if not self.output.exists():
            return found
        for line in self.output.read_text(encoding="utf-8").splitlines():
            match = LINE.match(line)
            assert match is not None, f"unparsable line: {line[:200]}"
            if match["msgid"] != CHECKPOINT_MSGID:
                found[int(match["seq"])] = (match["msgid"], match["app"], match["raw"])
        return found

    def checkpoints(self) -> list[dict]:
        """The audit checkpoints received (``HARDENING-CHECKPOINT`` messages), as sent."""
        if not self.output.exists():
            return []
        found = []
        for line in self.output.read_text(encoding="utf-8").splitlines():
            match = LINE.match(line)
            if match is not None and match["msgid"] == CHECKPOINT_MSGID:
                found.append(json.loads(match["raw"][match["raw"].index("{"):]))
        return found


@pytest.fixture(scope="module")
def collector(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Collector]:
    if not Path(RSYSLOGD).exists():
        pytest.fail("rsyslogd is missing: run `make deps`")
    instance = Collector(tmp_path_factory.mktemp("rsyslog"), pki, free_port())
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture(scope="module")
def server(start_orthanc_module, collector: Collector, pki: Pki) -> OrthancServer:
    files = pki.files
    return start_orthanc_module(hardening={"Audit": {"Syslog": {
        "Host": "127.0.0.1", "Port": collector.port, "Tls": True, "CaCertificate": str(files.ca_cert),
        "Certificate": str(files.client_cert), "PrivateKey": str(files.client_key)}}})


def last_seq(server: OrthancServer) -> int:
    answer = server.get("/hardening/audit", user="auditor", params={"limit": 1})
    assert answer.status_code == 200, answer.text
    # Reading the trail is itself audited; that event's seq is the head after this call.
    return int(answer.json()["events"][0]["seq"]) + 1


def metric(server: OrthancServer, name: str) -> float:
    text = server.get("/tools/metrics-prometheus").text
    match = re.search(rf"^{name} ([0-9.e+-]+)", text, re.M)
    return float(match.group(1)) if match else -1.0


def make_events(server: OrthancServer, patient: str) -> str:
    series = make_series(2, patient_id=patient)
    ids = [server.upload(item)["ID"] for item in series]
    assert server.get(f"/instances/{ids[0]}/file", user="user").status_code == 200
    assert server.get("/studies", user="user").status_code == 200
    return ids[0]


def test_events_arrive_parse_and_validate(server: OrthancServer, collector: Collector) -> None:
    make_events(server, "ATNA-1")
    head = last_seq(server)
    wait_for(lambda: set(range(1, head + 1)) <= set(collector.messages()), what="all events at the collector")
    kinds = set()
    for seq, (msgid, app, raw) in sorted(collector.messages().items()):
        assert (msgid, app) == ("IHE+RFC-3881", "orthanc-hardening")
        match = RAW.match(raw)
        assert match is not None, raw[:200]
        assert int(match.group(1)) in (84, 85)  # authpriv.warning / authpriv.notice
        document = etree.fromstring(match["xml"].encode("utf-8"))
        assert SCHEMA.validate(document), (seq, SCHEMA.error_log)
        kinds.add(document.find("EventIdentification/EventID").get("csd-code"))
    # Start, uploads, the read of the file, the listing, the trail read.
    assert {"110100", "110103", "110112", "110101"} <= kinds
    assert kinds & {"110104", "110107"}
    # The exporter reports its count just after a batch is written: wait for that report.
    wait_for(lambda: metric(server, "hardening_audit_exported_total") >= head - 1, timeout=15,
             what="hardening_audit_exported_total to reach the head of the trail")


@pytest.mark.attack
def test_signed_checkpoints_reach_the_collector_and_match_the_trail(server: OrthancServer,
                                                                    collector: Collector) -> None:
    # The collector is a witness: what it holds lets an auditor detect a rewrite of the
    # database (the signed head at seq N must still be the row hash at seq N).
    make_events(server, "ATNA-CP")
    wait_for(lambda: collector.checkpoints(), what="a checkpoint at the collector")
    checkpoint = collector.checkpoints()[-1]
    keys = {k["key_id"]: k["public_key"] for k in server.get("/hardening/keys").json()["keys"]}
    public_key = serialization.load_pem_public_key(keys[checkpoint["key_id"]].encode())
    signed = checkpoint_bytes(checkpoint["seq"], checkpoint["hash"], checkpoint["time"], checkpoint["key_id"])
    public_key.verify(base64.b64decode(checkpoint["signature"]), signed)  # raises if forged
    # Newest first, below seq + 1: the row the checkpoint signed.
    [row] = server.get("/hardening/audit", user="auditor", params={"after": checkpoint["seq"] + 1,
                                                                   "limit": 1}).json()["events"]
    assert (row["seq"], row["hash"]) == (checkpoint["seq"], checkpoint["hash"])


def test_collector_down_then_back_loses_nothing(server: OrthancServer, collector: Collector) -> None:
    before = last_seq(server)
    wait_for(lambda: before in collector.messages(), what="collector caught up")
    collector.stop()
    instance = make_events(server, "ATNA-2")
    for _ in range(3):
        assert server.get(f"/instances/{instance}/tags", user="user").status_code == 200
    head = last_seq(server)
    wait_for(lambda: metric(server, "hardening_audit_export_backlog") > 0, what="a backlog while the collector is down")
    collector.start()
    wait_for(lambda: set(range(1, head + 1)) <= set(collector.messages()), timeout=60,
             what="the backlog delivered after the collector restarted")
    details = [raw for seq, (_, _, raw) in collector.messages().items() if before < seq <= head]
    assert len(details) == head - before
    reads = 0
    for raw in details:
        document = etree.fromstring(RAW.match(raw)["xml"].encode("utf-8"))
        for detail in document.iter("ParticipantObjectDetail"):
            if detail.get("type") == "Route" and b"/tags" in base64.b64decode(detail.get("value")):
                reads += 1
    assert reads == 3
