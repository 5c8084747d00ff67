"""Audit review for people and for the SIEM: the web page and the IHE ATNA syslog export.

``install(runtime)`` (after the audit trail is open):

* serves ``GET /hardening/ui/`` and its static files (``orthanc_hardening/ui/``, shipped in the
  package, no outside assets) to auditors only;
* adds an "Audit trail" button to the study and series pages of Orthanc Explorer
  (``orthanc.ExtendOrthancExplorer``);
* when ``Hardening.Audit.Syslog`` is configured, starts the durable exporter
  (``services/audit_export.py``) that sends every audit row as a DICOM PS3.15 A.5 audit message over
  syslog TLS (RFC 5424 / RFC 5425), and stops it when Orthanc stops.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
from collections.abc import Callable
from pathlib import Path

from orthanc_hardening.audit.atna import AuditSource, audit_message
from orthanc_hardening.audit.chain import GENESIS_HASH, Checkpoint, StoredEvent
from orthanc_hardening.audit.event import Outcome
from orthanc_hardening.audit.syslog import frame, syslog_message
from orthanc_hardening.errors import NotFoundError
from orthanc_hardening.identity import AUDITOR
from orthanc_hardening.services.audit_export import AuditExporter
from orthanc_hardening.services.syslog_transport import TLSSyslogTransport
from orthanc_hardening.shell.rest import Reply, RestCall, register
from orthanc_hardening.shell.runtime import Runtime
from orthanc_hardening.stores.audit_store import open_store
from orthanc_hardening.timefmt import parse_time

logger = logging.getLogger(__name__)

UI_DIRECTORY = Path(__file__).resolve().parent.parent / "ui"
UI_ROUTE = "/hardening/ui/([A-Za-z0-9_-]+(?:\\.[a-z]+)?)"
# Orthanc drops the trailing slash of "/hardening/ui/" before matching routes.
UI_INDEX_ROUTE = "/hardening/ui/?"
_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "application/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_-]+\.(html|css|js|svg|png)$")
# Browsers must not cache or frame the page, and it may load only its own files.
_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                               "frame-ancestors 'none'",
}

EXPLORER_ROOT_URI = "../hardening/ui/"
PLUGIN_DESCRIPTION = "orthanc-hardening: TLS enforcement, sealed storage, verified queries and an audit trail"
EXPLORER_JS = r"""
// orthanc-hardening: "Audit trail" buttons on the study and series pages.
(function () {
  function currentUuid() {
    var match = /[?&]uuid=([0-9a-fA-F-]+)/.exec(window.location.href);
    return match ? match[1] : '';
  }
  function addButton(page, level) {
    $(page).live('pagebeforeshow', function () {
      var id = page.substring(1) + '-audit-trail';
      var uuid = currentUuid();
      $('#' + id).closest('li').remove();
      var anchor = $('#' + level + '-delete');
      if (!uuid || anchor.length === 0) { return; }
      var li = $('<li data-icon="search"><a rel="external" target="_blank"></a></li>');
      li.find('a').attr('id', id).attr('href', '../hardening/ui/?' + level + '=' + encodeURIComponent(uuid))
        .text('Audit trail of this ' + level);
      anchor.closest('li').after(li);
      anchor.closest('ul').listview('refresh');
    });
  }
  addButton('#study', 'study');
  addButton('#series', 'series');
})();
"""


def ui_file(name: str) -> tuple[bytes, str]:
    """Return ``(content, content type)`` of a shipped UI file.

    Raises:
        NotFoundError: no such file (names are checked against a strict pattern first).
    """
    name = name or "index.html"
    if not _SAFE_NAME.match(name):
        raise NotFoundError(f"no UI file {name[:60]!r}")
    path = UI_DIRECTORY / name
    if not path.is_file():
        raise NotFoundError(f"no UI file {name!r}")
    return path.read_bytes(), _CONTENT_TYPES[path.suffix]


def _serve_ui(call: RestCall) -> Reply:
    content, content_type = ui_file(call.groups[0] if call.groups else "")
    return Reply(raw=content, content_type=content_type, headers=_HEADERS)


def syslog_formatter(runtime: Runtime) -> tuple[AuditSource, object]:
    """Build the row -> framed syslog message function for this Orthanc."""
    config = runtime.config.audit.syslog
    if config is None:
        raise RuntimeError("no syslog configuration")
    hostname = socket.gethostname()
    aet = str(runtime.orthanc_config.get("DicomAet", "ORTHANC"))
    source = AuditSource(source_id=f"{hostname}/{aet}", application=aet, host=hostname)
    procid = str(os.getpid())

    def formatter(row: StoredEvent) -> bytes:
        payload = audit_message(row, source)
        message = syslog_message(payload, time=row.event.time, hostname=hostname, app_name=config.app_name,
                                 procid=procid, failure=row.event.outcome is not Outcome.SUCCESS,
                                 sequence_id=row.seq)
        return frame(message)

    return source, formatter


CHECKPOINT_MSGID = "HARDENING-CHECKPOINT"


def checkpoint_syslog_formatter(runtime: Runtime) -> Callable[[Checkpoint, Checkpoint | None], bytes]:
    """Build the checkpoint -> framed syslog message function (MSGID ``HARDENING-CHECKPOINT``).

    The message is JSON: the signed checkpoint (``seq``, ``hash``, ``time``, ``key_id``,
    ``signature``: verify it over ``audit.chain.checkpoint_bytes``) and the previous checkpoint
    this exporter sent (``previous_seq``, ``previous_hash``; 0 and zeros after a restart).
    """
    config = runtime.config.audit.syslog
    if config is None:
        raise RuntimeError("no syslog configuration")
    hostname = socket.gethostname() or "-"
    procid = str(os.getpid())
    app_name = config.app_name

    def formatter(checkpoint: Checkpoint, previous: Checkpoint | None) -> bytes:
        payload = json.dumps({
            "type": "audit-checkpoint", "v": 1, "seq": checkpoint.seq, "hash": checkpoint.hash,
            "time": checkpoint.time, "key_id": checkpoint.key_id, "signature": checkpoint.signature,
            "previous_seq": previous.seq if previous else 0,
            "previous_hash": previous.hash if previous else GENESIS_HASH,
        }, sort_keys=True, separators=(",", ":")).encode("ascii")
        return frame(syslog_message(payload, time=parse_time(checkpoint.time), hostname=hostname,
                                    app_name=app_name, procid=procid, msgid=CHECKPOINT_MSGID,
                                    sequence_id=checkpoint.seq))

    return formatter


def start_exporter(runtime: Runtime) -> AuditExporter | None:
    """Start the syslog exporter when ``Hardening.Audit.Syslog`` is set; stop it at Orthanc stop."""
    config = runtime.config.audit.syslog
    if config is None:
        return None
    # The exporter has its own connection to the store, so it never waits on the REST readers.
    store = open_store(runtime.config.audit.database, runtime.config.sqlite_synchronous, runtime.config.audit_schema)
    transport = TLSSyslogTransport(config)
    _, formatter = syslog_formatter(runtime)
    metrics = runtime.metrics

    def report(name: str, value: float) -> None:
        metrics.set(name, value)

    exporter = AuditExporter(store, transport, formatter, report=report,  # type: ignore[arg-type]
                             checkpoint_formatter=checkpoint_syslog_formatter(runtime),
                             last_checkpoint=store.last_checkpoint)

    def stop() -> None:
        exporter.stop()
        store.close()

    runtime.stop_actions.append(stop)
    exporter.start()
    logger.info("audit export to syslog %s:%s (tls=%s)", config.host, config.port, config.tls)
    return exporter


def install(runtime: Runtime) -> AuditExporter | None:
    """Register the review page and the Explorer buttons; start the syslog export if configured."""
    register(runtime, UI_INDEX_ROUTE, {"GET": _serve_ui}, role=AUDITOR, name="review-ui")
    register(runtime, UI_ROUTE, {"GET": _serve_ui}, role=AUDITOR, name="review-ui")
    runtime.orthanc.ExtendOrthancExplorer(EXPLORER_JS)
    # The review page as the Python plugin's web page: Orthanc Explorer's plugin list and
    # Orthanc Explorer 2's settings page link to it (RootUri is relative to /app/explorer.html).
    runtime.orthanc.SetRootUri(EXPLORER_ROOT_URI)
    runtime.orthanc.SetDescription(PLUGIN_DESCRIPTION)
    return start_exporter(runtime)


__all__ = ["EXPLORER_JS", "UI_ROUTE", "install", "start_exporter", "syslog_formatter", "ui_file"]
