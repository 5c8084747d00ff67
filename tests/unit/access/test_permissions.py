"""The permission table and policy (pure core): every route maps to one permission, spellings
of a route never buy a cheaper permission, and ``make run``'s user is a clinician."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest

from orthanc_hardening.access.policy import check_access, holds, policy_of
from orthanc_hardening.access.routes import (
    TABLE,
    UNCHECKED_MODALITY_QUERIES,
    UNCHECKED_STOW_RS,
    Permission,
    permissions_for,
    route_of,
    spellings_of,
)
from orthanc_hardening.config import load_config
from orthanc_hardening.errors import AccessDeniedError, ConfigError
from tests.support.server import PERMISSIONS

ID = "0a1b2c3d-4e5f6a7b-8c9d0e1f-2a3b4c5d-6e7f8a9b"


def policy(**hardening: object):
    section = {"Permissions": PERMISSIONS, "Auditors": ["auditor"], "Administrators": ["admin"], **hardening}
    return policy_of(load_config({"Hardening": section, "AuthenticationEnabled": True}))


# What make run's `user` may and may not do (issue 14): view, download, query, upload, nothing else.
ALLOWED_TO_USER = [
    ("GET", "/studies"), ("GET", f"/studies/{ID}"), ("GET", f"/instances/{ID}/tags"),
    ("GET", f"/instances/{ID}/file"),
    ("GET", f"/studies/{ID}/archive"), ("POST", "/tools/find"), ("POST", "/instances"),
    ("GET", f"/instances/{ID}/preview"), ("GET", "/app/explorer.html"), ("GET", "/ui/app/"), ("GET", "/system"),
    ("GET", "/dicom-web/studies"), ("GET", f"/dicom-web/studies/{ID}/series/{ID}/instances/{ID}/rendered"),
    ("POST", "/dicom-web/studies"), ("POST", "/modalities/PACS/query"), ("GET", f"/hardening/instances/{ID}/seal"),
]
DENIED_TO_USER = [
    ("DELETE", f"/studies/{ID}", "delete"), ("DELETE", f"/patients/{ID}", "delete"),
    ("DELETE", f"/instances/{ID}", "delete"), ("POST", "/tools/shutdown", "all"), ("POST", "/tools/reset", "all"),
    ("PUT", "/tools/log-level", "settings"), ("PUT", "/tools/metrics", "settings"),
    ("PUT", "/modalities/DEVSCU", "settings"), ("PUT", "/peers/other", "settings"), ("DELETE", "/changes", "all"),
    ("DELETE", "/exports", "all"), ("POST", "/tools/create-dicom", "modify"),
    ("POST", f"/studies/{ID}/modify", "modify"),
    ("POST", f"/instances/{ID}/modify", "modify"), ("POST", f"/studies/{ID}/anonymize", "anonymize"),
    ("POST", f"/jobs/{ID}/cancel", "all"), ("POST", "/modalities/DEVSCU/store", "send"),
    ("POST", "/tools/execute-script", "all"), ("GET", "/hardening/audit", "audit"),
    ("GET", "/hardening/posture", "hardening-admin"), ("PUT", f"/studies/{ID}/labels/x", "edit-labels"),
    ("PUT", f"/instances/{ID}/attachments/dicom", "all"), ("GET", "/tools/not-a-route", "all"),
]


@pytest.mark.parametrize(("method", "uri"), ALLOWED_TO_USER)
def test_clinician_may_view_download_query_and_upload(method, uri):
    check_access(policy(), "user", method, uri)


@pytest.mark.attack
@pytest.mark.parametrize(("method", "uri", "permission"), DENIED_TO_USER)
def test_clinician_is_refused_what_needs_another_permission(method, uri, permission):
    with pytest.raises(AccessDeniedError, match="lacks the permission") as refused:
        check_access(policy(), "user", method, uri)
    assert refused.value.answer is not None
    assert (refused.value.answer["permission"], refused.value.answer["user"]) == (permission, "user")


def test_admin_holds_all_but_not_the_audit_trail():
    admin = policy()
    check_access(admin, "admin", "POST", "/tools/shutdown")
    check_access(admin, "admin", "GET", "/hardening/posture")
    with pytest.raises(AccessDeniedError, match="'audit'"):
        check_access(admin, "admin", "GET", "/hardening/audit")
    check_access(admin, "auditor", "GET", "/hardening/audit")
    check_access(admin, "auditor", "GET", f"/studies/{ID}")


@pytest.mark.attack
def test_anonymous_request_holds_nothing():
    with pytest.raises(AccessDeniedError, match="'anonymous'"):
        check_access(policy(), "", "GET", "/studies")


def test_without_a_table_only_the_plugin_routes_are_restricted():
    plain = policy_of(load_config({"Hardening": {"Auditors": ["auditor"]}}))
    check_access(plain, "user", "POST", "/tools/shutdown")
    with pytest.raises(AccessDeniedError):
        check_access(plain, "user", "GET", "/hardening/audit")
    check_access(plain, "auditor", "GET", "/hardening/audit")


@pytest.mark.attack
@pytest.mark.parametrize("spelling", [
    "/tools/shutdown/", "//tools/shutdown", "/tools//shutdown", "/tools%2Fshutdown", "/tools/shut%64own",
    "/%74ools/shutdown", "/tools/shutdown?x=1",
])
def test_every_spelling_of_shutdown_needs_all(spelling):
    assert Permission.ALL in permissions_for("POST", spelling)
    with pytest.raises(AccessDeniedError):
        check_access(policy(), "user", "POST", spelling)


@pytest.mark.attack
@pytest.mark.parametrize("spelling", [f"/studies/{ID}/", f"/studies//{ID}", f"/studies/{ID}%2F", f"/STUDIES/{ID}"])
def test_every_spelling_of_a_delete_is_refused(spelling):
    with pytest.raises(AccessDeniedError):
        check_access(policy(), "user", "DELETE", spelling)


def test_route_of_drops_trailing_and_repeated_slashes():
    assert route_of("/studies/") == "/studies"
    assert route_of("//studies//x/") == "/studies/x"
    assert route_of("/") == "/"
    assert spellings_of("/a%2Fb") == ("/a%2Fb", "/a/b")


def test_method_is_case_insensitive():
    assert permissions_for("delete", f"/studies/{ID}") == (Permission.DELETE,)


def test_all_covers_every_permission_but_audit():
    granted = frozenset({Permission.ALL})
    assert all(holds(granted, p) for p in Permission if p is not Permission.AUDIT)
    assert not holds(granted, Permission.AUDIT)


def _orthanc_routes() -> list[str]:
    return [line.split()[0] for line in ROUTES.read_text().splitlines() if line.strip()]


ROUTES = Path(__file__).with_name("orthanc_routes.txt")


def _example(route: str) -> str:
    return re.sub(r"\{[a-z]+\}", "x1", route).replace("/*", "/x1").replace("log-level-", "log-level-http")


@pytest.mark.parametrize("route", _orthanc_routes())
def test_every_orthanc_get_route_is_in_the_table_or_needs_all(route):
    # Every route of Orthanc 1.10.1 and 1.13.0 (tests/unit/access/orthanc_routes.txt) resolves
    # to exactly one permission for each method: the rules never overlap.
    path = _example(route)
    for method in ("GET", "POST", "PUT", "DELETE"):
        matching = [rule for rule in TABLE if method in rule.methods and rule.pattern.fullmatch(path)]
        assert len(matching) <= 1, (method, path, matching)


def test_no_two_rules_overlap_on_sample_routes():
    samples = {_example(r) for r in _orthanc_routes()} | {u for _m, u in ALLOWED_TO_USER}
    samples |= {u for _m, u, _p in DENIED_TO_USER}
    for a, b in itertools.combinations(TABLE, 2):
        for path in samples:
            if a.methods & b.methods:
                assert not (a.pattern.fullmatch(route_of(path)) and b.pattern.fullmatch(route_of(path))), (a, b, path)


def test_unknown_permission_or_role_is_a_config_error():
    with pytest.raises(ConfigError, match=r"Permissions\.Roles\.x"):
        load_config({"Hardening": {"Permissions": {"Roles": {"x": ["delete-everything"]}}}})
    with pytest.raises(ConfigError, match=r"Permissions\.Users\.bob"):
        load_config({"Hardening": {"Permissions": {"Roles": {}, "Users": {"bob": ["ghost"]}}}})


# Where the plugin cannot check a route's body before Orthanc parses it (bookworm), the shell puts
# the route before the table and it needs `all`.
UNCHECKED = [
    (UNCHECKED_MODALITY_QUERIES, "POST", "/modalities/PACS/query", "modality query"),
    (UNCHECKED_MODALITY_QUERIES, "POST", "/modalities/PACS/find-worklist", "modality query"),
    (UNCHECKED_MODALITY_QUERIES, "POST", "/modalities/PACS/find-study/", "modality query"),
    (UNCHECKED_STOW_RS, "POST", "/dicom-web/studies", "STOW-RS"),
    (UNCHECKED_STOW_RS, "POST", f"/dicom-web/studies/{ID}", "STOW-RS"),
]


@pytest.mark.attack
@pytest.mark.parametrize(("rule", "method", "uri", "named"), UNCHECKED)
def test_clinician_is_refused_a_route_whose_body_cannot_be_checked_here(rule, method, uri, named):
    check_access(policy(), "user", method, uri)  # the table's permission: q-r-remote-modalities, upload
    restricted = policy().with_unchecked(rule)
    with pytest.raises(AccessDeniedError, match=named) as refused:
        check_access(restricted, "user", method, uri)
    answer = refused.value.answer
    assert answer is not None and answer["permission"] == "all" and answer["user"] == "user"
    check_access(restricted, "admin", method, uri)


def test_an_unchecked_rule_changes_no_other_route():
    restricted = policy().with_unchecked(UNCHECKED_MODALITY_QUERIES).with_unchecked(UNCHECKED_STOW_RS)
    assert restricted.with_unchecked(UNCHECKED_STOW_RS) is restricted  # added once
    for method, uri in ALLOWED_TO_USER:
        if (method, uri) not in (("POST", "/dicom-web/studies"), ("POST", "/modalities/PACS/query")):
            check_access(restricted, "user", method, uri)
    check_access(restricted, "user", "POST", "/modalities/PACS/echo")  # no body worth a check
    check_access(restricted, "user", "POST", "/modalities/PACS/move")  # a job route: its stand-in checks
    assert permissions_for("GET", "/dicom-web/studies", restricted.unchecked) == (Permission.VIEW,)


def test_without_a_permission_table_an_unchecked_rule_restricts_nothing():
    unrestricted = policy_of(load_config({"Hardening": {}})).with_unchecked(UNCHECKED_MODALITY_QUERIES)
    check_access(unrestricted, "anyone", "POST", "/modalities/PACS/query")
