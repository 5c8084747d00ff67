#!/bin/bash
# The init service (runs once per `docker compose up`, before the other services): creates, or
# reuses, everything the deployment generates.
# - In the hardening-home volume: the development CA, the server and client certificates, the
#   passphrase-protected signing key with its passphrase, and random passwords for the accounts
#   admin, auditor and user (python -m orthanc_hardening devsetup).
# - In the syslog-tls volume: the collector's certificate for SYSLOG_HOSTNAME and the CA
#   certificate (docker/syslog_cert.py); the collector mounts nothing else.
# - In the db-secret volume: the PostgreSQL password (docker/db_password.py); PostgreSQL and
#   Orthanc mount it, and nothing else of the deployment is in it.
#
# Paths default to the image's; the end-to-end test points them at a temporary tree. The
# plugin and these scripts are found next to this script, as the Dockerfile lays them out.
set -euo pipefail

HARDENING_HOME="${HARDENING_HOME:-/var/lib/orthanc-hardening}"
site_packages="${HARDENING_SITE_PACKAGES:-/usr/share/orthanc-hardening/site-packages}"
syslog_tls="${HARDENING_SYSLOG_TLS_DIR:-/run/hardening/syslog-tls}"
db_password_file="${HARDENING_DB_PASSWORD_FILE:-/run/hardening/db/password}"
here="$(dirname "${BASH_SOURCE[0]}")"
export PYTHONPATH="$here/../plugin:$site_packages"

# Everything created here is private unless chmod-ed below.
umask 077
mkdir -p "$HARDENING_HOME"
chmod 0700 "$HARDENING_HOME"
# devsetup's port and AE title options only fill config/instance.json, which `make run` uses and
# Docker does not (the ports and the AE title are ORTHANC__* variables of docker-compose.yml).
python3 -m orthanc_hardening devsetup --home "$HARDENING_HOME"
python3 "$here/syslog_cert.py" "$HARDENING_HOME" "$syslog_tls" "${SYSLOG_HOSTNAME:-syslog}"
chmod 0755 "$syslog_tls"
python3 "$here/db_password.py" "$db_password_file"
