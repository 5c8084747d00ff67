"""Who holds which permission, and the one check every route-based gate calls.

``Hardening.Permissions`` maps users to roles and roles to permissions
(``config.PermissionsConfig``); ``Hardening.Auditors`` grant ``audit`` and
``Hardening.Administrators`` ``hardening-admin``, as before. ``all`` grants every permission
except ``audit``: reading the audit trail stays with the auditors (separation of duties), even
for Orthanc's administrators.

A user counts only when Orthanc authenticated the request (``AuthenticationEnabled``); without
authentication every request is anonymous and holds the ``Anonymous`` roles (none by default).

Pure: the caller passes the user, the method and the path; no I/O here. Recording the refusal
(the Security Alert) is the shell's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from orthanc_hardening.access.routes import Permission, RouteRule, permission_of, route_of, rules_for
from orthanc_hardening.config import HardeningConfig
from orthanc_hardening.errors import AccessDeniedError


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    """The permissions of each user (``None`` table: Orthanc's model, see ``is_enforced``)."""

    roles: Mapping[str, frozenset[Permission]]
    users: Mapping[str, tuple[str, ...]]
    anonymous: tuple[str, ...]
    auditors: frozenset[str]
    administrators: frozenset[str]
    is_enforced: bool
    # Rules before the table: routes whose body the plugin cannot check on this Orthanc
    # (``access/routes.py`` ``UNCHECKED_*``), set by the shell from what the running Orthanc offers.
    unchecked: tuple[RouteRule, ...] = ()

    def with_unchecked(self, rule: RouteRule) -> AccessPolicy:
        """This policy with ``rule`` before the table."""
        return self if rule in self.unchecked else replace(self, unchecked=(*self.unchecked, rule))

    def permissions_of(self, user: str) -> frozenset[Permission]:
        """Every permission ``user`` holds (``""``: an anonymous, unauthenticated request)."""
        granted: set[Permission] = set()
        for role in self.users.get(user, ()) if user else self.anonymous:
            granted |= self.roles.get(role, frozenset())
        if user and user in self.auditors:
            granted.add(Permission.AUDIT)
        if user and user in self.administrators:
            granted.add(Permission.HARDENING_ADMIN)
        return frozenset(granted)


def policy_of(config: HardeningConfig) -> AccessPolicy:
    """Build the access policy of a validated configuration."""
    table = config.permissions
    defined = table.roles if table else {}
    return AccessPolicy(
        roles={role: frozenset(Permission(name) for name in names) for role, names in defined.items()},
        users=dict(table.users) if table else {},
        anonymous=table.anonymous if table else (),
        auditors=frozenset(config.auditors),
        administrators=frozenset(config.administrators),
        is_enforced=table is not None,
    )


_HINTS = {
    Permission.AUDIT: " (Hardening.Auditors, or a role of Hardening.Permissions that grants it)",
    Permission.HARDENING_ADMIN: " (Hardening.Administrators, or a role of Hardening.Permissions that grants it)",
}


def holds(granted: frozenset[Permission], needed: Permission) -> bool:
    """Whether ``granted`` covers ``needed`` (``all`` covers everything but ``audit``)."""
    if needed in granted:
        return True
    return Permission.ALL in granted and needed is not Permission.AUDIT


def check_access(policy: AccessPolicy, user: str, method: str, uri: str) -> None:
    """Check that ``user`` may send ``method uri``.

    Without a permission table (``is_enforced`` false) only this plugin's routes are checked
    (``audit`` and ``hardening-admin``, as the ``Auditors``/``Administrators`` lists say); the
    rest is Orthanc's, where every registered user is an administrator.

    Args:
        policy: the access policy.
        user: the authenticated user, ``""`` for an unauthenticated request.
        method: the HTTP method Orthanc's filter sees.
        uri: the request path.

    Raises:
        AccessDeniedError: the user lacks a permission the route needs. Its ``answer`` is the
            403 JSON body: ``error``, ``detail``, ``permission``, ``route`` and ``user``.
    """
    granted = policy.permissions_of(user)
    for rule in rules_for(method, uri, policy.unchecked):
        needed = permission_of(rule)
        if not policy.is_enforced and needed not in (Permission.AUDIT, Permission.HARDENING_ADMIN):
            continue
        if holds(granted, needed):
            continue
        who = user or "anonymous"
        route = f"{method.upper()} {route_of(uri)}"
        why = f": {rule.reason}" if rule is not None and rule.reason else _HINTS.get(needed, "")
        detail = f"user {who!r} lacks the permission {needed.value!r} that {route} needs{why}"
        raise AccessDeniedError(detail, answer={
            "error": "forbidden", "detail": detail, "permission": needed.value, "route": route, "user": who,
        })
