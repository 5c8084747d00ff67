#!/usr/bin/env bash
# Start a hardened Orthanc in the foreground (Ctrl-C stops it).
#
# Environment (all optional):
#   HARDENING_HOME  certificates, keys, credentials, storage, audit database (default ./var)
#   HTTPS_PORT      HTTPS port (default 8443)
#   DICOM_PORT      DICOM TLS port (default 4242)
#   DICOM_AET       Orthanc's application entity title (default HARDENED)
#
# The first run creates a development CA and certificates, the passphrase-protected Ed25519
# signing key and random passwords for admin/auditor/user under $HARDENING_HOME; later runs
# reuse them (and the stored data). Expects `make deps` to have run (`make run` does).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

HARDENING_HOME="${HARDENING_HOME:-$REPO/var}"
HTTPS_PORT="${HTTPS_PORT:-8443}"
DICOM_PORT="${DICOM_PORT:-4242}"
DICOM_AET="${DICOM_AET:-HARDENED}"

PYTHON="$REPO/.venv/bin/python"
SHIM_DIR="$REPO/build/libssl-shim"
ORTHANC="$(command -v Orthanc || echo /usr/sbin/Orthanc)"

fail() { printf 'run: %s\n' "$*" >&2; exit 1; }
[[ -x "$PYTHON" ]] || fail "$PYTHON is missing: run 'make deps' (or 'make run')"
[[ -f "$SHIM_DIR/libssl.so" ]] || fail "$SHIM_DIR/libssl.so is missing: run 'make deps' (or 'make run')"
[[ -x "$ORTHANC" ]] || fail "Orthanc is not installed: run 'make deps' (or 'make run')"
[[ "$HTTPS_PORT" =~ ^[0-9]+$ ]] || fail "HTTPS_PORT must be a number, not '$HTTPS_PORT'"
[[ "$DICOM_PORT" =~ ^[0-9]+$ ]] || fail "DICOM_PORT must be a number, not '$DICOM_PORT'"

mkdir -p "$HARDENING_HOME"
HARDENING_HOME="$(cd "$HARDENING_HOME" && pwd)"   # Orthanc's ${HARDENING_HOME} needs an absolute path
umask 077

PYTHONPATH="$REPO/plugin" "$PYTHON" -m orthanc_hardening devsetup \
    --home "$HARDENING_HOME" --https-port "$HTTPS_PORT" --dicom-port "$DICOM_PORT" --aet "$DICOM_AET"

# One configuration directory: this repository's orthanc.json (linked, so edits apply on the
# next start) + the per-instance keys devsetup wrote.
CONFIG_DIR="$HARDENING_HOME/config"
ln -sfn "$REPO/orthanc.json" "$CONFIG_DIR/orthanc.json"
[[ -f "$CONFIG_DIR/instance.json" ]] || fail "devsetup did not write $CONFIG_DIR/instance.json"
# The audit witness lives outside DataDirectory ($HARDENING_HOME/hardening); on a real server put
# it on another file system and make it append-only (chattr +a), see README "Audit witness".
mkdir -p "$HARDENING_HOME/storage" "$HARDENING_HOME/hardening" "$HARDENING_HOME/witness"

TLS="$HARDENING_HOME/tls"
cat <<INFO

orthanc-hardening: starting a hardened Orthanc (Ctrl-C stops it)
  Web / REST   https://localhost:$HTTPS_PORT/   (CA certificate: $TLS/ca.pem)
  DICOM TLS    AET $DICOM_AET on port $DICOM_PORT, client certificate required; declared client AET: DEVSCU
  Accounts     admin, auditor, user — passwords in $HARDENING_HOME/credentials.json (mode 0600)
  Data         $HARDENING_HOME   (configuration: $CONFIG_DIR)
  Audit        witnessed checkpoints appended to $HARDENING_HOME/witness/audit.witness
  Signing key  $HARDENING_HOME/keys/seal-key.pem; its passphrase is in $HARDENING_HOME/keys/passphrase,
               beside the key: FOR DEVELOPMENT ONLY (whoever reads that directory can sign; the
               posture report flags it). In production pass it from a secret store.

  Try:
    curl --cacert $TLS/ca.pem -u admin:\$(python3 -c 'import json;print(json.load(open("$HARDENING_HOME/credentials.json"))["admin"])') https://localhost:$HTTPS_PORT/system
    /usr/bin/storescu -aet DEVSCU -aec $DICOM_AET +tls $TLS/client.key $TLS/client.pem +cf $TLS/ca.pem localhost $DICOM_PORT file.dcm

INFO

export HARDENING_HOME
export LD_LIBRARY_PATH="$SHIM_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
HARDENING_KEY_PASSPHRASE="$(cat "$HARDENING_HOME/keys/passphrase")"
export HARDENING_KEY_PASSPHRASE
export HARDENING_SITE_PACKAGES
HARDENING_SITE_PACKAGES="$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
# A CA bundle variable in the caller's environment would change how the plugin's HTTPS client verifies peers.
unset REQUESTS_CA_BUNDLE SSL_CERT_FILE LD_PRELOAD

# POST /tools/reset stops Orthanc cleanly and leaves this file (plugin/orthanc_hardening/shell/reset.py):
# start Orthanc again, as Orthanc's in-process reset would have. Any other exit ends make run.
RESTART_MARKER="$HARDENING_HOME/hardening/restart-requested"
rm -f "$RESTART_MARKER"
pid=""
# Ctrl-C: the terminal sends SIGINT to the whole process group, Orthanc included, which stops
# on it (its own handler); forwarding it as well would reach Orthanc after it has restored the
# default handlers for its shutdown and kill it half-way. SIGTERM (systemd, Docker, kill) reaches
# this script only: forwarded once, then waited for. Either way make run ends with Orthanc.
trap 'rm -f "$RESTART_MARKER"' INT
trap '[[ -n "$pid" ]] && kill -TERM "$pid" 2>/dev/null; rm -f "$RESTART_MARKER"' TERM
while true; do
    "$ORTHANC" "$CONFIG_DIR" &
    pid=$!
    status=0
    wait "$pid" || status=$?
    # A trapped signal interrupts `wait`: wait again for Orthanc's own exit status.
    while kill -0 "$pid" 2>/dev/null; do
        status=0
        wait "$pid" || status=$?
    done
    pid=""
    if [[ $status -ne 0 || ! -f "$RESTART_MARKER" ]]; then
        exit "$status"
    fi
    rm -f "$RESTART_MARKER"
    echo "orthanc-hardening: POST /tools/reset: starting Orthanc again" >&2
done
