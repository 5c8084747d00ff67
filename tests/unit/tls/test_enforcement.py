"""``tls.enforcement``: which requests leave Orthanc insecurely, and which destinations may be created."""

from __future__ import annotations

import json

import pytest

from orthanc_hardening.tls.enforcement import (
    RouteKind,
    classify_route,
    destinations,
    judge_definition,
    judge_request,
    modality_destination,
    peer_destination,
)

KNOWN = destinations(
    {
        "TLSMOD": {"AET": "TLSMOD", "Host": "10.0.0.1", "Port": 104, "UseDicomTls": True},
        "PLAIN": {"AET": "PLAIN", "Host": "10.0.0.2", "Port": 104, "UseDicomTls": False},
        "OLD": ["OLD", "10.0.0.3", 104],
    },
    {"secure": {"Url": "https://peer:8443/"}, "clear": ["http://peer:8042/", "user", "pw"]},
    {"web": {"Url": "http://dicomweb/"}},
)


@pytest.mark.parametrize(
    ("method", "uri", "kind", "target"),
    [
        ("POST", "/modalities/PLAIN/store", RouteKind.MODALITY, "PLAIN"),
        ("POST", "/modalities/PLAIN/store-straight", RouteKind.MODALITY, "PLAIN"),
        ("POST", "/modalities/PLAIN/echo", RouteKind.MODALITY, "PLAIN"),
        ("POST", "/modalities/PLAIN/move", RouteKind.MODALITY, "PLAIN"),
        ("POST", "/modalities/PLAIN/query", RouteKind.MODALITY, "PLAIN"),
        ("POST", "/modalities/PLAIN/find-worklist", RouteKind.MODALITY, "PLAIN"),
        ("POST", "/modalities/PLAIN/storage-commitment", RouteKind.MODALITY, "PLAIN"),
        ("POST", "/modalities/PL%41IN/store", RouteKind.MODALITY, "PLAIN"),
        ("POST", "/peers/clear/store", RouteKind.PEER, "clear"),
        ("GET", "/peers/clear/system", RouteKind.PEER, "clear"),
        ("POST", "/dicom-web/servers/web/stow", RouteKind.DICOMWEB_SERVER, "web"),
        ("POST", "/tools/execute-script", RouteKind.CODE_EXECUTION, ""),
        ("POST", "/instances/abc/export", RouteKind.FILESYSTEM_WRITE, ""),
    ],
)
def test_classify_outgoing_and_dangerous_routes(method: str, uri: str, kind: RouteKind, target: str) -> None:
    match = classify_route(method, uri)
    assert match is not None and (match.kind, match.target) == (kind, target)


@pytest.mark.parametrize(
    ("method", "uri"),
    [
        ("GET", "/modalities"),
        ("GET", "/modalities/PLAIN"),
        ("PUT", "/modalities/PLAIN"),
        ("GET", "/instances/abc/file"),
        ("GET", "/tools/execute-script"),
        ("POST", "/tools/find"),
        ("POST", "/instances"),
    ],
)
def test_other_routes_are_not_classified(method: str, uri: str) -> None:
    assert classify_route(method, uri) is None


def test_store_to_tls_modality_is_allowed() -> None:
    assert judge_request("POST", "/modalities/TLSMOD/store", KNOWN).allowed


@pytest.mark.attack
def test_store_to_plaintext_modality_is_refused_naming_it() -> None:
    verdict = judge_request("POST", "/modalities/PLAIN/store", KNOWN)
    assert not verdict.allowed
    assert verdict.body["modality"] == "PLAIN" and "DICOM TLS" in verdict.body["detail"]


@pytest.mark.attack
def test_store_to_array_form_modality_is_refused() -> None:
    assert not judge_request("POST", "/modalities/OLD/store", KNOWN).allowed


@pytest.mark.attack
def test_store_to_http_peer_is_refused_without_leaking_its_password() -> None:
    verdict = judge_request("POST", "/peers/clear/store", KNOWN)
    assert not verdict.allowed and verdict.body["peer"] == "clear"
    assert "pw" not in json.dumps(verdict.body).replace("peer", "")
    assert judge_request("POST", "/peers/secure/store", KNOWN).allowed


@pytest.mark.attack
def test_unknown_destination_is_refused_as_unknown() -> None:
    verdict = judge_request("POST", "/modalities/NEW/store", KNOWN)
    assert not verdict.allowed and verdict.is_unknown_target


@pytest.mark.attack
def test_lua_execution_is_refused() -> None:
    verdict = judge_request("POST", "/tools/execute-script", KNOWN)
    assert not verdict.allowed and verdict.kind is RouteKind.CODE_EXECUTION and "ExecuteLuaEnabled" in verdict.reason


@pytest.mark.attack
def test_export_to_filesystem_is_refused() -> None:
    verdict = judge_request("POST", "/instances/0a1b/export", KNOWN)
    assert not verdict.allowed and verdict.kind is RouteKind.FILESYSTEM_WRITE


def test_peer_credentials_in_url_are_hidden() -> None:
    destination = peer_destination("p", {"Url": "http://bob:hunter2@host:8042/"})
    assert "hunter2" not in destination.address and "host:8042" in destination.address


def test_modality_needs_use_dicom_tls_exactly_true() -> None:
    assert not modality_destination("M", {"Host": "h", "Port": 1, "UseDicomTls": "true"}).is_secure
    assert modality_destination("M", {"Host": "h", "Port": 1, "UseDicomTls": True}).is_secure


@pytest.mark.attack
@pytest.mark.parametrize(
    ("kind", "body"),
    [
        (RouteKind.MODALITY, {"AET": "X", "Host": "10.0.0.9", "Port": 104}),
        (RouteKind.MODALITY, ["X", "10.0.0.9", 104]),
        (RouteKind.PEER, {"Url": "http://10.0.0.9:8042/"}),
        (RouteKind.PEER, ["http://10.0.0.9:8042/"]),
    ],
)
def test_creating_insecure_destination_is_refused(kind: RouteKind, body: object) -> None:
    verdict, destination = judge_definition(kind, "X", json.dumps(body).encode())
    assert not verdict.allowed and "creating it is refused" in verdict.reason
    assert destination is not None and not destination.is_secure


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        (RouteKind.MODALITY, {"AET": "X", "Host": "10.0.0.9", "Port": 104, "UseDicomTls": True}),
        (RouteKind.PEER, {"Url": "https://10.0.0.9:8443/"}),
    ],
)
def test_creating_secure_destination_is_allowed(kind: RouteKind, body: object) -> None:
    verdict, destination = judge_definition(kind, "X", json.dumps(body).encode())
    assert verdict.allowed and destination is not None and destination.is_secure


def test_unparseable_definition_is_left_to_orthanc() -> None:
    verdict, destination = judge_definition(RouteKind.MODALITY, "X", b"{not json")
    assert verdict.allowed and destination is None


def test_definition_of_other_kind_is_a_caller_bug() -> None:
    with pytest.raises(ValueError, match="no definition route"):
        judge_definition(RouteKind.CODE_EXECUTION, "X", b"{}")
