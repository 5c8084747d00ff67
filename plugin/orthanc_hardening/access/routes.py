"""The permission table: every HTTP route Orthanc serves, mapped to the one permission it needs.

The vocabulary is orthanc-authorization's (``all``, ``view``, ``download``, ``upload``,
``delete``, ``modify``, ``anonymize``, ``send``, ``q-r-remote-modalities``, ``settings``,
``api-view``, ``edit-labels``, ``admin-permissions``) plus this plugin's ``audit`` and
``hardening-admin``. The table covers Orthanc's REST API of 1.10, 1.12 and 1.13 (read from
``OrthancServer/Sources/OrthancRestApi/*.cpp`` of each version), the DICOMweb plugin (server
and client routes), WebDAV, Orthanc Explorer 1 and 2, the common viewers, and this plugin's
``/hardening`` routes. A route that is not in the table needs ``all`` (fail closed).

Routes are matched on the path *as Orthanc routes it* (``route_of``). civetweb decodes
percent-escapes and removes dot segments before Orthanc or any plugin sees the path (checked
on 1.10.1: ``/stat%69stics`` is served as ``/statistics``, ``/a/..%2F..%2Fb`` reaches the
filter as ``/b``); Orthanc's HTTP server then splits it on ``/``, drops one trailing slash and
answers 400 to an empty component (``Toolbox::SplitUriComponents``), and matches components
case-sensitively, as do plugin routes (regular expressions over the joined components). A
path that still holds percent-escapes (sent double-encoded) is classified both as given and
decoded once, and needs both permissions: a spelling never buys a cheaper permission.

Pure: no I/O, no Orthanc. Checking who holds a permission is ``access/policy.py``'s.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from urllib.parse import unquote


class Permission(enum.Enum):
    """One permission of the table (orthanc-authorization's vocabulary, plus ``audit`` and
    ``hardening-admin``)."""

    ALL = "all"
    VIEW = "view"
    DOWNLOAD = "download"
    UPLOAD = "upload"
    DELETE = "delete"
    MODIFY = "modify"
    ANONYMIZE = "anonymize"
    SEND = "send"
    QUERY_REMOTE = "q-r-remote-modalities"
    SETTINGS = "settings"
    API_VIEW = "api-view"
    EDIT_LABELS = "edit-labels"
    ADMIN_PERMISSIONS = "admin-permissions"
    AUDIT = "audit"
    HARDENING_ADMIN = "hardening-admin"


@dataclass(frozen=True, slots=True)
class RouteRule:
    """Requests with one of ``methods`` whose route fully matches ``pattern`` need ``permission``
    (``reason``: why, when it is not the table's usual permission)."""

    methods: frozenset[str]
    pattern: re.Pattern[str]
    permission: Permission
    reason: str = ""


P = Permission
_ID = r"[^/]+"
_LEVEL = r"(?:patients|studies|series|instances)"
_IMAGE = r"(?:preview|rendered|image-uint8|image-uint16|image-int16|matlab)"
_ATTACHMENT_INFO = r"(?:info|size|md5|compressed-size|compressed-md5|is-compressed)"
_FIND = r"(?:query|find|find-patient|find-study|find-series|find-instance|find-worklist|move|get|echo)"
_DICOMWEB_READ = r"(?:metadata|rendered|thumbnail)"


def _rule(methods: str, pattern: str, permission: Permission, reason: str = "") -> RouteRule:
    pattern = pattern.replace("{id}", _ID).replace("{level}", _LEVEL)
    return RouteRule(frozenset(methods.split(",")), re.compile(pattern), permission, reason)


# The table. Order does not matter: at most one rule matches a (method, route); a test checks
# that no two rules overlap. Pixel renderings are ``view`` (every viewer needs them); the
# stored bytes (files, archives, raw frames, attachments' data) are ``download``.
TABLE: tuple[RouteRule, ...] = (
    # -- Orthanc Explorer 1 and 2, viewers, the root ------------------------------------------
    _rule("GET", r"/|/favicon\.ico|/app|/app/.+|/ui|/ui/.+", P.VIEW),
    _rule("GET", r"/(?:stone-webviewer|ohif|osimis-viewer|wsi|volview)(?:/.*)?", P.VIEW),
    _rule("GET", r"/system|/statistics|/changes|/plugins|/plugins/{id}|/plugins/explorer\.js", P.VIEW),
    _rule("GET", r"/tools/(?:now|now-local|generate-uid|labels)", P.VIEW),
    # -- browsing the archive (local queries) -----------------------------------------------
    _rule("GET", r"/{level}", P.VIEW),
    _rule("GET", r"/{level}/{id}", P.VIEW),
    _rule("GET", r"/{level}/{id}/(?:patient|study|series|studies|instances)", P.VIEW),
    _rule("GET", r"/{level}/{id}/(?:shared-tags|module|module-patient|statistics|instances-tags)", P.VIEW),
    _rule("GET", r"/{level}/{id}/(?:labels|labels/{id}|metadata|metadata/{id})", P.VIEW),
    _rule("GET", rf"/{{level}}/{{id}}/(?:attachments|attachments/{{id}}|attachments/{{id}}/{_ATTACHMENT_INFO})",
          P.VIEW),
    _rule("POST", r"/{level}/{id}/attachments/{id}/verify-md5", P.VIEW),
    _rule("GET", r"/patients/{id}/protected|/series/{id}/ordered-slices", P.VIEW),
    _rule("GET", r"/instances/{id}/(?:tags|simplified-tags|header|frames|frames/{id}|pdf)", P.VIEW),
    _rule("GET", rf"/instances/{{id}}/(?:{_IMAGE}|frames/{{id}}/{_IMAGE})", P.VIEW),
    _rule("POST", r"/tools/(?:find|count-resources|lookup|bulk-content)", P.VIEW),
    # -- downloading stored bytes -------------------------------------------------------------
    _rule("GET", r"/instances/{id}/(?:file|numpy|content|content/.+)", P.DOWNLOAD),
    _rule("GET", r"/instances/{id}/frames/{id}/(?:raw|raw\.gz|numpy)|/series/{id}/numpy", P.DOWNLOAD),
    _rule("GET", r"/{level}/{id}/attachments/{id}/(?:data|compressed-data)", P.DOWNLOAD),
    _rule("GET,POST", r"/(?:patients|studies|series)/{id}/(?:archive|media)", P.DOWNLOAD),
    _rule("POST", r"/tools/(?:create-archive|create-media|create-media-extended)", P.DOWNLOAD),
    _rule("GET", r"/jobs/{id}/{id}", P.DOWNLOAD),  # a job's output: the archive it made
    # -- upload -------------------------------------------------------------------------------
    _rule("POST", r"/instances", P.UPLOAD),
    # -- delete, modify, anonymize, labels ------------------------------------------------------
    _rule("DELETE", r"/{level}/{id}", P.DELETE),
    _rule("POST", r"/tools/bulk-delete", P.DELETE),
    _rule("POST", r"/{level}/{id}/modify|/tools/bulk-modify|/studies/{id}/(?:merge|split)", P.MODIFY),
    _rule("POST", r"/tools/create-dicom", P.MODIFY),
    _rule("PUT,DELETE", r"/{level}/{id}/metadata/{id}", P.MODIFY),
    _rule("PUT", r"/patients/{id}/protected", P.MODIFY),
    _rule("POST", r"/{level}/{id}/anonymize|/tools/bulk-anonymize", P.ANONYMIZE),
    _rule("PUT,DELETE", r"/{level}/{id}/labels/{id}", P.EDIT_LABELS),
    # -- sending to other nodes ---------------------------------------------------------------
    _rule("POST", r"/modalities/{id}/(?:store|store-straight|storage-commitment)", P.SEND),
    _rule("POST", r"/peers/{id}/(?:store|store-straight)", P.SEND),
    _rule("GET", r"/peers|/peers/{id}|/peers/{id}/system", P.SEND),
    _rule("GET", r"/storage-commitment/{id}", P.SEND),
    _rule("POST", r"/dicom-web/servers/{id}/stow", P.SEND),
    # -- querying and retrieving from remote modalities -----------------------------------------
    _rule("GET", r"/modalities|/modalities/{id}", P.QUERY_REMOTE),
    _rule("POST", rf"/modalities/{{id}}/{_FIND}|/tools/dicom-echo", P.QUERY_REMOTE),
    _rule("GET", r"/queries|/queries/{id}"
                 r"|/queries/{id}/(?:answers|answers/{id}|answers/{id}/content|level|modality|query)", P.QUERY_REMOTE),
    _rule("POST", r"/queries/{id}/(?:retrieve|answers/{id}/retrieve)", P.QUERY_REMOTE),
    _rule("DELETE", r"/queries/{id}", P.QUERY_REMOTE),
    _rule("GET", r"/dicom-web/servers|/dicom-web/servers/{id}", P.QUERY_REMOTE),
    _rule("POST", r"/dicom-web/servers/{id}/(?:get|retrieve|qido)", P.QUERY_REMOTE),
    # -- DICOMweb server (QIDO-RS, WADO-RS, STOW-RS, WADO-URI) ----------------------------------
    _rule("GET", r"/dicom-web/(?:studies|series|instances)", P.VIEW),
    _rule("GET", r"/dicom-web/studies/{id}/(?:series|instances)|/dicom-web/studies/{id}/series/{id}/instances", P.VIEW),
    _rule("GET", rf"/dicom-web/studies/{{id}}/{_DICOMWEB_READ}|/dicom-web/studies/{{id}}/series/{{id}}/{_DICOMWEB_READ}"
                 rf"|/dicom-web/studies/{{id}}/series/{{id}}/instances/{{id}}/{_DICOMWEB_READ}"
                 r"|/dicom-web/studies/{id}/series/{id}/instances/{id}/frames/{id}/rendered", P.VIEW),
    _rule("GET", r"/dicom-web/studies/{id}|/dicom-web/studies/{id}/series/{id}"
                 r"|/dicom-web/studies/{id}/series/{id}/instances/{id}"
                 r"|/dicom-web/studies/{id}/series/{id}/instances/{id}/frames/{id}"
                 r"|/dicom-web/studies/{id}/series/{id}/instances/{id}/bulk(?:/.+)?|/wado", P.DOWNLOAD),
    _rule("POST", r"/dicom-web/studies|/dicom-web/studies/{id}", P.UPLOAD),
    # -- WebDAV (Orthanc's filter sees read-only WebDAV methods as GET, writing ones as PUT) ----
    _rule("GET", r"/webdav(?:/.*)?", P.DOWNLOAD),
    _rule("PUT", r"/webdav(?:/.*)?", P.UPLOAD),
    _rule("DELETE", r"/webdav(?:/.*)?", P.DELETE),
    # -- monitoring and settings ----------------------------------------------------------------
    _rule("GET", r"/tools|/tools/(?:dicom-conformance|accepted-transfer-syntaxes|accepted-sop-classes"
                 r"|unknown-sop-class-accepted|default-encoding|metrics|metrics-prometheus)", P.API_VIEW),
    _rule("GET", r"/jobs|/jobs/{id}|/exports", P.API_VIEW),
    _rule("GET,PUT", r"/tools/log-level(?:-[a-z0-9-]+)?", P.SETTINGS),
    _rule("PUT", r"/tools/(?:metrics|accepted-transfer-syntaxes|unknown-sop-class-accepted|default-encoding)",
          P.SETTINGS),
    _rule("GET", r"/modalities/{id}/configuration|/peers/{id}/configuration", P.SETTINGS),
    _rule("PUT,DELETE", r"/modalities/{id}|/peers/{id}|/dicom-web/servers/{id}", P.SETTINGS),
    # -- this plugin ----------------------------------------------------------------------------
    _rule("GET", r"/hardening/instances/{id}/seal|/hardening/studies/{id}/manifest", P.VIEW),
    _rule("GET", r"/hardening/permissions", P.VIEW),
    _rule("GET", r"/hardening/audit|/hardening/audit/verify|/hardening/ui|/hardening/ui/[A-Za-z0-9_.-]+", P.AUDIT),
    _rule("GET", r"/hardening/posture|/hardening/keys|/hardening/scrub", P.HARDENING_ADMIN),
    _rule("POST", r"/hardening/keys/rotate|/hardening/scrub|/hardening/seal-existing", P.HARDENING_ADMIN),
    # Everything else needs ``all``: among them POST /tools/shutdown, /tools/reset,
    # /tools/execute-script, /tools/reconstruct, /tools/invalidate-tags, /instances/{id}/export,
    # DELETE /changes and /exports, job control (cancel, pause, resume, resubmit, DELETE),
    # attachments' PUT, DELETE, compress and uncompress.
)


# Routes whose request body the plugin cannot check on some Orthancs before Orthanc's core (or
# another plugin) parses it, where a 1 KB body crashes that Orthanc. On such an Orthanc the shell
# puts them in the policy's ``unchecked`` rules, which come before the table: they need ``all``
# (an administrator, who may stop Orthanc anyway), not the table's permission.
UNCHECKED_MODALITY_QUERIES = _rule(
    "POST", r"/modalities/{id}/(?:query|find|find-patient|find-study|find-series|find-instance|find-worklist)",
    P.ALL, "on this Orthanc the plugin cannot check a modality query's JSON body before Orthanc parses it "
           "(a body nested 500 levels deep crashes Orthanc 1.10), so only administrators may send one")
UNCHECKED_STOW_RS = _rule(
    "POST", r"/dicom-web/studies|/dicom-web/studies/{id}",
    P.ALL, "on this Orthanc the DICOMweb plugin parses a STOW-RS upload before the plugin can check it "
           "(a file nesting sequences 50 levels deep crashes it), so only administrators may use STOW-RS; "
           "upload with POST /instances or C-STORE")


def route_of(uri: str) -> str:
    """The route Orthanc serves for ``uri`` (path only, no query string).

    Orthanc splits the path on ``/``, ignores one trailing slash and refuses empty components
    (``//``) with 400 before any plugin sees the request; repeated slashes are collapsed here
    all the same, so that a gate never classifies a spelling Orthanc would route elsewhere.
    """
    path = uri.split("?", 1)[0]
    parts = [part for part in path.split("/") if part]
    return "/" + "/".join(parts)


def spellings_of(uri: str) -> tuple[str, ...]:
    """The routes ``uri`` may reach: as given and, if it still holds escapes, decoded once."""
    route = route_of(uri)
    if "%" not in route:
        return (route,)
    decoded = route_of(unquote(route))
    return (route,) if decoded == route else (route, decoded)


def rule_for_route(method: str, route: str, first: tuple[RouteRule, ...] = ()) -> RouteRule | None:
    """The rule one normalised route falls under: the first of ``first`` that matches, else the
    table's (``None``: not in the table, it needs ``all``)."""
    verb = method.upper()
    for rule in (*first, *TABLE):
        if verb in rule.methods and rule.pattern.fullmatch(route):
            return rule
    return None


def permission_of(rule: RouteRule | None) -> Permission:
    """The permission a route under ``rule`` needs (``None``, a route not in the table: ``all``)."""
    return rule.permission if rule is not None else Permission.ALL


def rules_for(method: str, uri: str, first: tuple[RouteRule, ...] = ()) -> tuple[RouteRule | None, ...]:
    """The rule of each spelling of a request's route (see ``spellings_of``).

    Args:
        method: ``GET``, ``POST``, ``PUT`` or ``DELETE`` (the method Orthanc's filter sees, after
            ``X-HTTP-Method-Override`` or ``?_method=``).
        uri: the request path as the HTTP filter or a REST callback gets it.
        first: rules that take precedence over the table (``AccessPolicy.unchecked``).
    """
    return tuple(rule_for_route(method, route, first) for route in spellings_of(uri))


def permissions_for(method: str, uri: str, first: tuple[RouteRule, ...] = ()) -> tuple[Permission, ...]:
    """Every permission a request needs: one per spelling of its route (see ``spellings_of``).

    Returns:
        The distinct permissions, strictest spelling included.
    """
    needed: list[Permission] = []
    for rule in rules_for(method, uri, first):
        permission = permission_of(rule)
        if permission not in needed:
            needed.append(permission)
    return tuple(needed)
