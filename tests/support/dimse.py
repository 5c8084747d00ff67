"""DIMSE clients over TLS with pynetdicom (DCMTK 3.6.7's ``getscu`` has no ``+tls``).

Every function opens one association to the server as ``TESTSCU`` with the test client
certificate and returns what the peer answered.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    MRImageStorage,
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from tests.support.scp import client_tls_context
from tests.support.server import CLIENT_AET, OrthancServer

STORAGE = (CTImageStorage, MRImageStorage)


class AssociationRefused(RuntimeError):
    """The server did not accept the association (or TLS failed)."""


@dataclass
class RetrieveResult:
    """What a C-GET or C-MOVE gave: final status, sub-operation counts, received bytes."""

    status: int
    responses: list[int] = field(default_factory=list)
    received: dict[str, bytes] = field(default_factory=dict)
    failed: int = 0
    completed: int = 0


def _ae() -> AE:
    # Bounded waits: a server that dies mid-association (the crash tests kill it) must not
    # leave a client thread waiting for pynetdicom's default 60 s network timeout.
    ae = AE(ae_title=CLIENT_AET)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = 15
    return ae


def _associate(ae: AE, server: OrthancServer, tls: bool = True, **kwargs: Any) -> Any:
    tls_args = (client_tls_context(server.pki), None) if tls else None
    assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title=server.aet, tls_args=tls_args, **kwargs)
    if not assoc.is_established:
        raise AssociationRefused(f"association to {server.aet} refused or aborted")
    return assoc


def c_store(server: OrthancServer, files: list[bytes], tls: bool = True) -> list[int]:
    """C-STORE each file; return the DIMSE status of each (``-1`` if no response)."""
    ae = _ae()
    for sop_class in STORAGE:
        ae.add_requested_context(sop_class)
    assoc = _associate(ae, server, tls)
    statuses = []
    try:
        for data in files:
            status = assoc.send_c_store(dcmread(io.BytesIO(data)))
            statuses.append(int(status.Status) if "Status" in status else -1)
    finally:
        assoc.release()
    return statuses


MODELS = {
    "study": (StudyRootQueryRetrieveInformationModelFind, StudyRootQueryRetrieveInformationModelGet,
              StudyRootQueryRetrieveInformationModelMove),
    "patient": (PatientRootQueryRetrieveInformationModelFind, PatientRootQueryRetrieveInformationModelGet,
                PatientRootQueryRetrieveInformationModelMove),
}


def c_find(server: OrthancServer, query: Dataset, tls: bool = True, model: str = "study") -> tuple[int, list[Dataset]]:
    """C-FIND (study root, or ``model="patient"``); return the final status and the matches."""
    find = MODELS[model][0]
    ae = _ae()
    ae.add_requested_context(find)
    assoc = _associate(ae, server, tls)
    matches: list[Dataset] = []
    final = -1
    try:
        for status, identifier in assoc.send_c_find(query, find):
            if not status or "Status" not in status:
                continue
            final = int(status.Status)
            if final in (0xFF00, 0xFF01) and identifier is not None:
                matches.append(identifier)
    finally:
        assoc.release()
    return final, matches


def _study_query(study_uid: str) -> Dataset:
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study_uid
    return query


def _collect(result: RetrieveResult, responses: Any) -> None:
    for status, _identifier in responses:
        if status and "Status" in status:
            result.status = int(status.Status)
            result.responses.append(result.status)
            result.failed = int(getattr(status, "NumberOfFailedSuboperations", result.failed) or 0)
            result.completed = int(getattr(status, "NumberOfCompletedSuboperations", result.completed) or 0)


def c_get_query(server: OrthancServer, query: Dataset, tls: bool = True, model: str = "study",
                transfer_syntaxes: tuple[str, ...] = (ExplicitVRLittleEndian,)) -> RetrieveResult:
    """C-GET what ``query`` names; the received instances are kept as encoded datasets.

    The storage contexts propose only ``transfer_syntaxes`` (by default the explicit VR little
    endian of the test data): with several proposed, Orthanc 1.13 accepts implicit VR and
    transcodes while 1.10 keeps the stored syntax, so a byte-for-byte comparison needs the
    stored syntax alone.
    """
    result = RetrieveResult(status=-1)

    def on_store(event: Any) -> int:
        result.received[str(event.request.AffectedSOPInstanceUID)] = event.encoded_dataset()
        return 0x0000

    get = MODELS[model][1]
    ae = _ae()
    ae.add_requested_context(get)
    roles = []
    for sop_class in STORAGE:
        ae.add_requested_context(sop_class, list(transfer_syntaxes))
        roles.append(build_role(sop_class, scp_role=True))
    assoc = _associate(ae, server, tls, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        _collect(result, assoc.send_c_get(query, get))
    finally:
        assoc.release()
    return result


def c_get(server: OrthancServer, study_uid: str, tls: bool = True,
          transfer_syntaxes: tuple[str, ...] = (ExplicitVRLittleEndian,)) -> RetrieveResult:
    """C-GET a whole study (see ``c_get_query``)."""
    return c_get_query(server, _study_query(study_uid), tls, transfer_syntaxes=transfer_syntaxes)


def c_move_query(server: OrthancServer, query: Dataset, destination: str = CLIENT_AET, tls: bool = True,
                 model: str = "study") -> RetrieveResult:
    """C-MOVE what ``query`` names to ``destination``; returns the final status and counts."""
    move = MODELS[model][2]
    result = RetrieveResult(status=-1)
    ae = _ae()
    ae.add_requested_context(move)
    assoc = _associate(ae, server, tls)
    try:
        _collect(result, assoc.send_c_move(query, destination, move))
    finally:
        assoc.release()
    return result


def c_move(server: OrthancServer, study_uid: str, destination: str = CLIENT_AET, tls: bool = True) -> RetrieveResult:
    """C-MOVE a whole study to ``destination`` (see ``c_move_query``)."""
    return c_move_query(server, _study_query(study_uid), destination, tls)


def move_in_steps(server: OrthancServer) -> bool:
    """Whether the server's Python plugin reports C-MOVE sub-operations one by one (5.0+, not 4.x)."""
    version = str(server.get("/plugins/python").json().get("Version", "0"))
    return int(version.split(".")[0]) >= 5
