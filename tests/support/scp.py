"""A pynetdicom Storage SCP over TLS on loopback: the C-MOVE destination "TESTSCU".

Used by integration tests and benchmarks; it keeps the exact bytes it receives.
"""

from __future__ import annotations

import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage, MRImageStorage, SecondaryCaptureImageStorage

from tests.support.server import CLIENT_AET, Pki

STORAGE_CLASSES = (CTImageStorage, MRImageStorage, SecondaryCaptureImageStorage)


def server_tls_context(pki: Pki) -> ssl.SSLContext:
    """TLS server context for an SCP: our client certificate, peers verified against the test CA."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    context.load_verify_locations(str(pki.ca))
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_tls_context(pki: Pki) -> ssl.SSLContext:
    """TLS client context for an SCU talking to the hardened Orthanc."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    context.load_verify_locations(str(pki.ca))
    context.check_hostname = False  # DICOM peers are addressed by IP; the CA check still applies
    return context


@dataclass
class StorageSCP:
    """A running Storage SCP; ``received`` maps SOP Instance UID to the exact bytes."""

    port: int
    pki: Pki
    aet: str = CLIENT_AET
    received: dict[str, bytes] = field(default_factory=dict)
    _server: Any = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> StorageSCP:
        ae = AE(ae_title=self.aet)
        for sop_class in STORAGE_CLASSES:
            ae.add_supported_context(sop_class)

        def on_store(event: Any) -> int:
            raw = event.encoded_dataset()
            with self._lock:
                self.received[str(event.request.AffectedSOPInstanceUID)] = raw
            return 0x0000

        self._server = ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, on_store)],
            ssl_context=server_tls_context(self.pki),
        )
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def __enter__(self) -> StorageSCP:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def save(directory: Path, files: list[bytes]) -> list[Path]:
    """Write DICOM byte strings to ``directory`` as numbered ``.dcm`` files."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, data in enumerate(files):
        path = directory / f"{index:05d}.dcm"
        path.write_bytes(data)
        paths.append(path)
    return paths
