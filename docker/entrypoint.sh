#!/bin/bash
# Entry point of the orthanc service (ENTRYPOINT of docker/Dockerfile, CMD ["/tmp/orthanc.json"]).
#
# Runs before the image's own entry point, which builds Orthanc's configuration from
# /etc/orthanc/*.json and the ORTHANC__* variables and starts Orthanc. It adds what the init
# service generated for this deployment:
# - the accounts of credentials.json (RegisteredUsers), the PostgreSQL password (PostgreSQL.Password)
#   and the audit database URL with that password (Hardening.Audit.Database), as one JSON
#   document in ORTHANC_JSON: the image types every ORTHANC__* value with json.loads, so a
#   password such as 20261201 would reach Orthanc as a number, while ORTHANC_JSON keeps strings
#   strings (docker/instance_config.py);
# - the signing key's passphrase, in HARDENING_KEY_PASSPHRASE (the plugin reads it there);
# - private data directories (Docker creates volume mount points with mode 0755);
# - on a further node of the archive (HARDENING_JOIN: the first node's home, mounted read-only),
#   the first node's trust (CA, client certificate, accounts, signing key with its passphrase,
#   key registry and its anchor: orthanc_hardening.commands.devnode.join_home, as make run's
#   HARDENING_JOIN), then this node's own server certificate from that CA (devsetup), before
#   the files checked below are required.
# Then it hands its one argument to the image's entry point, which expects exactly one.
#
# Paths default to the image's; the end-to-end test (tests/integration/test_docker_deployment.py)
# points them at a temporary tree.
set -euo pipefail

HARDENING_HOME="${HARDENING_HOME:-/var/lib/orthanc-hardening}"
image_entrypoint="${HARDENING_IMAGE_ENTRYPOINT:-/docker-entrypoint.sh}"
db_password_file="${HARDENING_DB_PASSWORD_FILE:-/run/hardening/db/password}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
site_packages="${HARDENING_SITE_PACKAGES:-/usr/share/orthanc-hardening/site-packages}"

fail() {
    echo "orthanc-hardening entrypoint: $*" >&2
    exit 1
}

if [[ $# -ne 1 ]]; then
    echo "orthanc-hardening entrypoint: expected exactly one argument, the configuration file the image" \
        "generates (CMD [\"/tmp/orthanc.json\"] in docker/Dockerfile), got $#" >&2
    exit 2
fi
if [[ -n "${HARDENING_JOIN:-}" ]]; then
    # Files this home already has must equal the joined node's (a node never trusts two CAs or
    # signs with a key the others do not know): join_home refuses otherwise, naming them.
    (
        umask 077 && mkdir -p "$HARDENING_HOME" && export PYTHONPATH="$here/../plugin:$site_packages" &&
        python3 -c 'import sys
from pathlib import Path
from orthanc_hardening.commands import devnode
copied = devnode.join_home(Path(sys.argv[1]), Path(sys.argv[2]))
print("orthanc-hardening entrypoint: joined " + sys.argv[1] + (": took " + ", ".join(copied) if copied else ""))
' "$HARDENING_JOIN" "$HARDENING_HOME" &&
        python3 -m orthanc_hardening devsetup --home "$HARDENING_HOME" >/dev/null
    ) || fail "could not join the node whose home is HARDENING_JOIN=$HARDENING_JOIN (see above)"
fi
for file in "$HARDENING_HOME/credentials.json" "$HARDENING_HOME/keys/passphrase" "$HARDENING_HOME/keys/seal-key.pem"; do
    [[ -f "$file" ]] || fail "$file is missing: the init service creates it (docker compose up runs it first)"
done

# Orthanc's storage and the plugin's data (orthanc.json: ${HARDENING_HOME}/storage and
# ${HARDENING_HOME}/hardening) hold patient data, seals and the audit spool.
chmod 0700 "$HARDENING_HOME"
for directory in "$HARDENING_HOME/storage" "$HARDENING_HOME/hardening"; do
    mkdir -p "$directory"
    chmod 0700 "$directory"
done

arguments=(--credentials "$HARDENING_HOME/credentials.json")
if [[ -n "${HARDENING_AUDIT_DATABASE:-}" || -n "${HARDENING_DATABASE:-}" || -e "$db_password_file" ]]; then
    [[ -f "$db_password_file" ]] || fail "$db_password_file is missing: the init service creates it"
    arguments+=(--db-password-file "$db_password_file")
fi
if [[ -n "${HARDENING_AUDIT_DATABASE:-}" ]]; then
    arguments+=(--audit-database "$HARDENING_AUDIT_DATABASE")
fi
if [[ -n "${HARDENING_DATABASE:-}" ]]; then
    arguments+=(--database "$HARDENING_DATABASE")
fi
ORTHANC_JSON="$(python3 "$here/instance_config.py" "${arguments[@]}")"
export ORTHANC_JSON

HARDENING_KEY_PASSPHRASE="$(<"$HARDENING_HOME/keys/passphrase")"
export HARDENING_KEY_PASSPHRASE

exec "$image_entrypoint" "$@"
