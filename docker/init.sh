#!/bin/bash
# One-shot init service: create (or reuse) the deployment's CA, certificates, signing key and
# accounts in the shared volume, plus a certificate for the syslog collector's host name.
set -euo pipefail
: "${HARDENING_HOME:?}"
python3 -m orthanc_hardening devsetup --home "$HARDENING_HOME" \
    --https-port "${HTTPS_PORT:-8443}" --dicom-port "${DICOM_PORT:-4242}" --aet "${DICOM_AET:-HARDENED}"
python3 /usr/share/orthanc-hardening/docker/syslog_cert.py "$HARDENING_HOME" "${SYSLOG_HOSTNAME:-syslog}"
# The syslog collector runs as its own user: it may read the CA and its own certificate only.
chmod 755 "$HARDENING_HOME" "$HARDENING_HOME/tls"
