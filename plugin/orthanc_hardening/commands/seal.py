"""``python -m orthanc_hardening seal-existing``: seal data stored before the plugin sealed anything.

Two ways:

* offline, on a **stopped** Orthanc with a SQLite index: ``seal-existing CONFIG`` reads the index
  (``IndexDirectory/index``) read-only, and seals every attachment without a seal that the signed
  legacy inventory holds for the instance the index names (``integrity/legacy.py``; every
  attachment when the plugin never ran). Seals are marked ``sealed_after_ingest``.
* online, through a running Orthanc: ``seal-existing --url https://host:8042 --user admin``
  (password from ``--password-env``, CA from ``--ca``) pages through
  ``POST /hardening/seal-existing``.

An instance stored after sealing began that has no seal is never sealed: it is reported as
refused (its seal was removed — an incident, not a migration).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sqlite3
from pathlib import Path
from typing import Any

from orthanc_hardening.commands.posture import load_orthanc_configuration
from orthanc_hardening.config import load_config, passphrase_from_env
from orthanc_hardening.errors import ConfigError, IntegrityError, StoreUnavailableError
from orthanc_hardening.integrity.legacy import (
    InventoryRule,
    StoredAttachment,
    check_legacy_entry,
    plan_inventory,
    plan_legacy_sealing,
    sign_legacy_entry,
)
from orthanc_hardening.seal import epoch
from orthanc_hardening.seal import keys as keymod
from orthanc_hardening.seal.identity import NO_IDENTITY, identify
from orthanc_hardening.seal.layout import attachment_path
from orthanc_hardening.seal.record import seal_attachment
from orthanc_hardening.stores import key_files
from orthanc_hardening.stores.legacy_inventory import SQLLegacyInventory, inventory_path
from orthanc_hardening.stores.seal_store import SQLSealStore
from orthanc_hardening.stores.sql import LEGACY_SCHEMA, SEALS_SCHEMA, open_store_database

RECEPTION_DATE = 2  # Orthanc's MetadataType_Instance_ReceptionDate
INSTANCE = 4  # Orthanc's ResourceType_Instance in the SQLite index (Patient 1 … Instance 4)


def _sealing_since(store: SQLSealStore, keyring: keymod.KeyRing) -> str | None:
    """The signed start of sealing; ``None`` when the plugin never ran.

    Raises:
        ConfigError: the recorded start does not verify (refuse to guess).
    """
    value = store.get_meta(epoch.META_NAME)
    if value is None:
        return None
    try:
        epoch.verify_epoch(value, store.get_meta(epoch.META_SIGNATURE) or "", keyring)
    except IntegrityError as exc:
        raise ConfigError("Hardening.DataDirectory", "the signed start of sealing does not verify") from exc
    return value


def seal_offline(orthanc_config: dict[str, Any], env: dict[str, str], now: dt.datetime) -> dict[str, Any]:
    """Seal legacy attachments of a stopped Orthanc; return counts.

    Raises:
        ConfigError: keys or configuration are unusable.
        StoreUnavailableError: the index cannot be read (Orthanc still running?) or the seal
            store cannot be written.
    """
    config = load_config(orthanc_config)
    storage = Path(str(orthanc_config.get("StorageDirectory", "OrthancStorage"))).absolute()
    index_dir = Path(str(orthanc_config.get("IndexDirectory", storage))).absolute()
    keyring = key_files.load_key_ring(config.signing_key, passphrase_from_env(config, env), config.key_directory,
                                   config.trusted_keys, now, config.key_registry_anchor)
    store = SQLSealStore(open_store_database(config.shared_database, SEALS_SCHEMA, config.seal_database,
                                             config.sqlite_synchronous))
    since = _sealing_since(store, keyring)
    try:
        index = sqlite3.connect(f"file:{index_dir / 'index'}?mode=ro", uri=True, timeout=2)
        rows = index.execute(
            "SELECT r.publicId, a.fileType, a.uuid, (SELECT value FROM Metadata m WHERE m.id = r.internalId"
            " AND m.type = ?) FROM Resources r JOIN AttachedFiles a ON a.id = r.internalId"
            " WHERE r.resourceType = ? ORDER BY r.internalId, a.fileType",
            (RECEPTION_DATE, INSTANCE),
        ).fetchall()
        index.close()
    except sqlite3.Error as exc:
        raise StoreUnavailableError(f"cannot read Orthanc's index in {index_dir} (is Orthanc stopped?): {exc}") from exc
    listed = [StoredAttachment(str(instance_id), int(content_type), str(uuid), received)
              for instance_id, content_type, uuid, received in rows]
    is_sealed = lambda uuid, kind: store.get(uuid, kind) is not None  # noqa: E731
    inventory = SQLLegacyInventory(open_store_database(config.shared_database, LEGACY_SCHEMA,
                                                       inventory_path(config.seal_database)))
    if since is not None and inventory.taken() is None:
        # Upgraded from a version without inventory and not started since: the older rule, once.
        entries = plan_inventory(listed, is_sealed, InventoryRule.RECEPTION_DATE, since)
        inventory.take(((e, sign_legacy_entry(e, keyring.signer)) for e in entries), InventoryRule.RECEPTION_DATE.value)

    def is_provably_legacy(attachment: StoredAttachment) -> bool:
        if since is None:
            return True  # the plugin never ran here: nothing was ever sealed, everything predates it
        found = inventory.get(attachment.uuid, attachment.content_type)
        try:
            check_legacy_entry(attachment, found[0] if found else None, found[1] if found else "", keyring)
        except IntegrityError:
            return False
        return True

    plan = plan_legacy_sealing(listed, is_sealed, is_provably_legacy)
    inventory.close()
    counts: dict[str, Any] = {"attachments": len(rows), "sealed": 0, "already_sealed": plan.already_sealed,
                              "refused": len(plan.refused), "missing_files": 0,
                              "refused_instances": plan.refused_instances}
    for attachment in plan.to_seal:
        try:
            data = attachment_path(storage, attachment.uuid).read_bytes()
        except FileNotFoundError:
            counts["missing_files"] += 1
            continue
        try:
            identity = identify(data) if attachment.content_type in (1, 3) else NO_IDENTITY
        except ValueError:
            identity = NO_IDENTITY
        store.put(seal_attachment(attachment.uuid, attachment.content_type, data, identity, keyring.signer, now,
                                  sealed_after_ingest=True))
        counts["sealed"] += 1
    store.close()
    return counts


def seal_online(url: str, user: str, password: str, ca: str | None, page: int) -> dict[str, Any]:
    """Page through ``POST /hardening/seal-existing`` of a running Orthanc."""
    import requests

    totals: dict[str, Any] = {"instances": 0, "sealed": 0, "already_sealed": 0, "refused": 0, "refused_instances": []}
    since = 0
    while True:
        response = requests.post(f"{url.rstrip('/')}/hardening/seal-existing", auth=(user, password),
                                 json={"Since": since, "Limit": page}, verify=ca or True, timeout=600)
        if response.status_code != 200:
            raise StoreUnavailableError(f"seal-existing answered {response.status_code}: {response.text[:300]}")
        answer = response.json()
        for key in ("instances", "sealed", "already_sealed", "refused"):
            totals[key] += answer[key]
        totals["refused_instances"] += answer["refused_instances"]
        since = answer["next"]
        if answer["done"]:
            return totals


def run(args: argparse.Namespace) -> int:
    if args.url:
        password = os.environ.get(args.password_env, "")
        if not password:
            raise ConfigError(args.password_env, "is not set")
        result = seal_online(args.url, args.user, password, args.ca, args.page)
    else:
        if not args.config:
            raise ConfigError("config", "give the Orthanc configuration (offline) or --url (online)")
        raw, _base = load_orthanc_configuration(Path(args.config), os.environ)
        result = seal_offline(raw, dict(os.environ), dt.datetime.now(dt.UTC))
    print(json.dumps(result, indent=2))
    return 1 if result["refused"] else 0


def register(subparsers: Any) -> None:
    """Add the ``seal-existing`` command."""
    parser = subparsers.add_parser("seal-existing", help="seal instances stored before the plugin (migration)")
    parser.add_argument("config", nargs="?", help="Orthanc configuration of a stopped Orthanc (offline)")
    parser.add_argument("--url", help="a running Orthanc (online, through REST)")
    parser.add_argument("--user", default="admin")
    parser.add_argument("--password-env", default="ORTHANC_PASSWORD")
    parser.add_argument("--ca", default=None, help="CA certificate to verify the server")
    parser.add_argument("--page", type=int, default=500)
    parser.set_defaults(handler=run)
