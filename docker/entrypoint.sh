#!/bin/bash
# Container entry point of the orthanc service: add the per-instance keys devsetup generated
# (RegisteredUsers with the random passwords) to the configuration, export the signing-key
# passphrase, then hand over to the image's own entry point (which merges /etc/orthanc/*.json
# and the ORTHANC__* variables and starts Orthanc).
set -euo pipefail
: "${HARDENING_HOME:?}"
if [[ ! -f "$HARDENING_HOME/credentials.json" ]]; then
    echo "entrypoint: $HARDENING_HOME has no credentials.json — the init service must run first" >&2
    exit 1
fi
python3 - "$HARDENING_HOME/credentials.json" /tmp/hardening-users.json <<'PY'
import json, os, sys
users = json.load(open(sys.argv[1]))
fd = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
with os.fdopen(fd, "w") as out:
    json.dump(users, out)
PY
export ORTHANC__REGISTERED_USERS="$(cat /tmp/hardening-users.json)"
rm -f /tmp/hardening-users.json
HARDENING_KEY_PASSPHRASE="$(cat "$HARDENING_HOME/keys/passphrase")"
export HARDENING_KEY_PASSPHRASE
exec /docker-entrypoint.sh "$@"
