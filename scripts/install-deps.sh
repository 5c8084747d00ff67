#!/usr/bin/env bash
# Install what orthanc-hardening needs on Debian (bookworm, trixie or forky), only what is missing.
#
# Idempotent and quiet when everything is present (it then takes a few seconds): Debian
# packages (Orthanc, the Python, DICOMweb and PostgreSQL plugins, DCMTK, a C compiler for the
# libssl shim and the tests' Orthanc plugins, PostgreSQL and rsyslog for the stores and the
# audit export, SoftHSM for keys in a token), the virtualenv in .venv (made from
# /usr/bin/python3, the interpreter Orthanc's Python plugin embeds) and the libssl shim in
# build/libssl-shim. Every package name is the same on the three releases. Runs
# non-interactively (CI=true, no stdin). scripts/in-target.sh runs it to provision a target.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

PACKAGES=(
    orthanc orthanc-python orthanc-dicomweb   # the server and its plugins
    orthanc-postgresql                        # Orthanc's index in PostgreSQL (several nodes, Docker)
    orthanc-dev                               # the plugin SDK headers (the tests' audit-log consumer)
    dcmtk                                     # echoscu/storescu/findscu with +tls (tests, examples)
    gcc libc6-dev make                        # builds build/libssl-shim/libssl.so
    openssl ca-certificates curl              # TLS tooling, the curl example
    python3 python3-venv                      # the venv the plugin loads its dependencies from
    postgresql                                # stores on PostgreSQL (tests start their own cluster)
    rsyslog rsyslog-openssl                   # audit export to syslog over TLS (tests)
    softhsm2 opensc                           # a PKCS#11 token for the signing key (tests)
    procps                                    # pgrep (minimal root filesystems lack it)
    chromium                                  # the review page tested in a headless browser (tests)
    trang                                     # converts the DICOM audit schema (tests/data) from RELAX NG compact
)

log() { printf '[deps] %s\n' "$*"; }

POLICY=/usr/sbin/policy-rc.d
POLICY_CREATED=0
remove_policy() {
    if [[ $POLICY_CREATED == 1 ]]; then
        rm -f "$POLICY"
        POLICY_CREATED=0
    fi
}
trap remove_policy EXIT

missing_packages() {
    local package status
    for package in "${PACKAGES[@]}"; do
        status="$(dpkg-query -W -f='${db:Status-Status}' "$package" 2>/dev/null || true)"
        [[ "$status" == "installed" ]] || printf '%s\n' "$package"
    done
}

install_packages() {
    local -a missing
    mapfile -t missing < <(missing_packages)
    if ((${#missing[@]} == 0)); then
        return
    fi
    if [[ "$(id -u)" != 0 ]]; then
        log "missing Debian packages: ${missing[*]} — run 'make deps' as root"
        exit 1
    fi
    log "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Debian starts services when it installs them; Orthanc's own service would take ports 8042
    # and 4242 with an insecure default configuration. policy-rc.d forbids every service start
    # during this installation only.
    if [[ ! -e "$POLICY" ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$POLICY"
        chmod 755 "$POLICY"
        POLICY_CREATED=1
    fi
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null
    remove_policy
}

stop_debian_orthanc() {
    # The Debian orthanc service runs an unhardened Orthanc (HTTP on 8042, plain DICOM on 4242):
    # make sure it is neither running nor started at boot. Only the service's own process is
    # touched (it runs as the "orthanc" user); any other Orthanc on this machine is left alone.
    if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
        if systemctl is-enabled --quiet orthanc 2>/dev/null || systemctl is-active --quiet orthanc 2>/dev/null; then
            log "disabling Debian's orthanc service (unhardened default configuration)"
            systemctl disable --now orthanc >/dev/null 2>&1 || true
        fi
        return
    fi
    if compgen -G '/etc/rc[2345].d/S*orthanc' >/dev/null; then
        log "disabling Debian's orthanc service at boot (unhardened default configuration)"
        update-rc.d orthanc disable >/dev/null 2>&1 || true
    fi
    local pids
    pids="$(pgrep -u orthanc -x Orthanc 2>/dev/null || true)"
    if [[ -n "$pids" ]]; then
        log "stopping Debian's orthanc service (unhardened default configuration)"
        # shellcheck disable=SC2086 # one pid per word
        kill $pids 2>/dev/null || true
        rm -f /run/orthanc.pid
    fi
}

make_venv() {
    local venv="$REPO/.venv" stamp="$REPO/.venv/.requirements-stamp"
    if [[ ! -x "$venv/bin/python" ]]; then
        log "creating $venv from /usr/bin/python3"
        /usr/bin/python3 -m venv "$venv"
    fi
    if [[ -f "$stamp" && "$stamp" -nt requirements.txt && "$stamp" -nt requirements-dev.txt ]]; then
        return
    fi
    log "installing Python requirements into $venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -r requirements.txt -r requirements-dev.txt
    touch "$stamp"
}

install_packages
stop_debian_orthanc
make_venv
make -s shim
