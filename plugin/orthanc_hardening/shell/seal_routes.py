"""The plugin's REST routes about seals and keys.

* ``GET /hardening/instances/{id}/seal`` (any user): each attachment's seal and its verification now.
* ``GET /hardening/keys``, ``POST /hardening/keys/rotate`` (administrators): the key ids and
  their status; rotation to a new signing key (the old one stays trusted).
* ``POST /hardening/seal-existing`` (administrators): seal the attachments Orthanc stored before
  sealing began, one page of instances at a time, with the same planner as the offline
  ``seal-existing`` command (``integrity/legacy.py``): legacy is what the signed legacy inventory
  holds for the instance the index names; anything else without a seal is refused and alerted.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from orthanc_hardening.audit.event import Action, AuditEvent, EventCode, Outcome
from orthanc_hardening.errors import BadRequestError, SealInvalidError, SealMissingError
from orthanc_hardening.identity import ADMINISTRATOR
from orthanc_hardening.integrity.legacy import StoredAttachment, plan_legacy_sealing
from orthanc_hardening.request_body import parse_json_object
from orthanc_hardening.seal.identity import NO_IDENTITY, identify
from orthanc_hardening.seal.layout import attachment_path
from orthanc_hardening.seal.record import seal_attachment
from orthanc_hardening.shell.rest import Reply, RestCall, register
from orthanc_hardening.shell.runtime import Runtime
from orthanc_hardening.shell.storage import DICOM, DICOM_UNTIL_PIXEL_DATA, SealedStorage
from orthanc_hardening.stores import key_files
from orthanc_hardening.stores.attachment_files import read_file

logger = logging.getLogger(__name__)


def seal_existing(storage: SealedStorage, since: int, limit: int) -> dict[str, Any]:
    """Seal the legacy attachments of up to ``limit`` instances from index position ``since``.

    Raises:
        SealInvalidError: the signed start of sealing does not verify (nothing is sealed).
    """
    if not storage.sealing_since:
        raise SealInvalidError("the signed start of sealing does not verify: no data can be proven legacy")
    orthanc = storage.runtime.orthanc
    ids = json.loads(orthanc.RestApiGet(f"/instances?since={since}&limit={limit}"))
    listed = [StoredAttachment(instance_id, content_type, uuid, None)
              for instance_id in ids for _name, content_type, uuid in storage.attachments_of(instance_id)]
    plan = plan_legacy_sealing(listed, lambda uuid, kind: storage.store.get(uuid, kind) is not None,
                               lambda a: storage.is_provably_legacy(a.uuid, a.content_type, a.instance_id))
    for attachment in plan.refused:
        storage.report_failure(attachment.uuid, attachment.content_type, None, SealMissingError(
            f"attachment {attachment.uuid} of instance {attachment.instance_id} was stored after sealing began "
            "and has no seal; it is not sealed now"))
    sealed = 0
    for attachment in plan.to_seal:
        data = read_file(attachment_path(storage.root, attachment.uuid))
        try:
            identity = identify(data) if attachment.content_type in (DICOM, DICOM_UNTIL_PIXEL_DATA) else NO_IDENTITY
        except ValueError:
            identity = NO_IDENTITY
        storage.store.put(seal_attachment(attachment.uuid, attachment.content_type, data, identity,
                                          storage.keyring.signer, storage.runtime.clock(), sealed_after_ingest=True))
        sealed += 1
    return {"instances": len(ids), "sealed": sealed, "already_sealed": plan.already_sealed,
            "refused": len(plan.refused), "refused_instances": plan.refused_instances, "next": since + len(ids),
            "done": len(ids) < limit}


def install(runtime: Runtime, storage: SealedStorage, passphrase: bytes | None = None) -> None:
    """Register the seal and key routes (``passphrase``: the signing key's, read once at start)."""
    config = runtime.config

    def seal_of_instance(call: RestCall) -> Reply:
        return Reply(storage.seal_report(call.groups[0]))

    def list_keys(call: RestCall) -> Reply:
        # The registry file is verified again (against its anchor): a file edited since the
        # start is refused (409), never listed as if it were trusted.
        state = key_files.registry_state(config.signing_key, config.key_directory, config.key_registry_anchor)
        current = storage.keyring.signer.key_id
        accepted = storage.keyring.public_keys()
        rows = []
        for kid in sorted(set(state.keys) | set(accepted)):
            entry = state.keys.get(kid)
            status = "current" if kid == current else "revoked" if entry and entry.is_revoked else "trusted"
            rows.append({
                "key_id": kid,
                "status": status,
                "algorithm": entry.algorithm if entry else "",
                "created_at": entry.created_at if entry else "",
                "retired_at": entry.retired_at if entry else "",
                "revoked_at": entry.revoked_at if entry else "",
                "source": "registry" if entry else "TrustedKeys",
                "public_key": accepted.get(kid, b"").decode("ascii"),
            })
        return Reply({"current": current, "keys": rows, "registry": {"entries": state.count, "head": state.head}})

    def rotate(call: RestCall) -> Reply:
        if not passphrase:
            raise BadRequestError("passphrase", f"{config.signing_key_passphrase_env} is not set")
        old, new = key_files.rotate_key(config.signing_key, config.key_directory, passphrase, runtime.clock(),
                                       anchor_file=config.key_registry_anchor)
        storage.keyring.replace_signer(new)
        runtime.audit.record(AuditEvent(
            time=runtime.clock(), event=EventCode.APPLICATION_ACTIVITY, action=Action.EXECUTE,
            outcome=Outcome.SUCCESS, transport=call.requester.transport, user=call.requester.user,
            roles=call.requester.roles, source_ip=call.requester.source_ip, route="/hardening/keys/rotate",
            detail=f"signing key rotated from {old.key_id} to {new.key_id}",
        ))
        logger.warning("signing key rotated from %s to %s", old.key_id, new.key_id)
        return Reply({"previous": old.key_id, "current": new.key_id, "algorithm": new.algorithm})

    def seal_existing_route(call: RestCall) -> Reply:
        body = parse_json_object(call.body, empty_ok=True)
        since = body.get("Since", 0)
        limit = body.get("Limit", 1000)
        if type(since) is not int or since < 0:
            raise BadRequestError("Since", "must be a non-negative integer")
        if type(limit) is not int or not 1 <= limit <= 100000:
            raise BadRequestError("Limit", "must be an integer from 1 to 100000")
        return Reply(seal_existing(storage, since, limit))

    register(runtime, "/hardening/instances/([^/]+)/seal", {"GET": seal_of_instance}, name="seal")
    register(runtime, "/hardening/keys", {"GET": list_keys}, role=ADMINISTRATOR, name="keys")
    register(runtime, "/hardening/keys/rotate", {"POST": rotate}, role=ADMINISTRATOR, name="keys-rotate")
    register(runtime, "/hardening/seal-existing", {"POST": seal_existing_route}, role=ADMINISTRATOR,
             name="seal-existing")
