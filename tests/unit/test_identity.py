"""``identity``: who is asking, from headers and configuration."""

from __future__ import annotations

import base64

import pytest

from orthanc_hardening.audit.event import Transport
from orthanc_hardening.config import HardeningConfig
from orthanc_hardening.identity import (
    ADMINISTRATOR,
    AUDITOR,
    http_requester,
    method_name,
    transport_of_uri,
    user_from_authorization,
)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_user_is_decoded_from_basic_authorization() -> None:
    assert user_from_authorization({"authorization": basic("alice", "s:e:c")}) == "alice"
    assert user_from_authorization({"Authorization": basic("bob", "x")}) == "bob"


@pytest.mark.parametrize(
    "header",
    ["", "Bearer abc", "Basic", "Basic !!!notbase64", "Basic " + base64.b64encode(b"nocolon").decode(),
     "Basic " + base64.b64encode(b"\xff\xfe:x").decode()],
)
def test_malformed_authorization_gives_no_user(header: str) -> None:
    assert user_from_authorization({"authorization": header}) == ""


def test_roles_come_from_configuration() -> None:
    config = HardeningConfig(auditors=("alice",), administrators=("admin", "alice"))
    alice = http_requester({"authorization": basic("alice", "p")}, "127.0.0.1", config)
    assert alice.roles == (AUDITOR, ADMINISTRATOR) and alice.is_auditor and alice.is_administrator
    user = http_requester({"authorization": basic("user", "p")}, "::1", config)
    assert user.roles == () and not user.is_auditor and user.source_ip == "::1"


def test_method_and_transport_names() -> None:
    assert [method_name(m) for m in (1, 2, 3, 4, "get")] == ["GET", "POST", "PUT", "DELETE", "GET"]
    with pytest.raises(ValueError):
        method_name(9)
    assert transport_of_uri("/dicom-web/studies") is Transport.DICOMWEB
    assert transport_of_uri("/webdav/uids") is Transport.WEBDAV
    assert transport_of_uri("/instances") is Transport.REST
