#!/usr/bin/env bash
# Run a command on one of the Debian releases orthanc-hardening supports.
#
#   scripts/in-target.sh TARGET COMMAND...        TARGET: bookworm | trixie | forky
#   scripts/in-target.sh --rebuild TARGET         rebuild that target's root filesystem now
#
#   bookworm  Orthanc 1.10.1, Python plugin 4.0, Python 3.11  (Debian 12, old stable)
#   trixie    Orthanc 1.12.7, Python plugin 5.0, Python 3.13  (Debian 13, stable)
#   forky     Orthanc 1.13.0, Python plugin 7.1, Python 3.14  (Debian testing; the versions of
#             the newest orthancteam/orthanc images)
#
# On a host of the same release the command runs natively. Otherwise it runs in a root
# filesystem of that release, built once with debootstrap from the host's Debian mirror and
# provisioned with scripts/install-deps.sh (what `make deps` installs, for that release). The
# root filesystems live outside the checkout ($HARDENING_TARGETS, default
# /var/cache/orthanc-hardening/targets), so a fresh clone reuses them; a target is rebuilt from
# its pristine debootstrap image when scripts/install-deps.sh changes (downloaded packages are
# kept, so a rebuild costs the installation, not the download).
#
# Inside, the repository and /tmp are at the same paths as on the host; the repository's .venv
# and build/ are the target's own (a venv and a libssl shim belong to one Python and one
# OpenSSL), so the host's and every target's stay side by side. The host's loopback is shared:
# a server started inside is reached from the host on the same port. HARDENING_HOME,
# HTTPS_PORT, DICOM_PORT, DICOM_AET, HARDENING_POSTGRES, HARDENING_STORAGE, HARDENING_JOIN and
# CI are passed through (HARDENING_HOME defaults to var/TARGET, so that each Orthanc version
# keeps its own index); the command runs in the repository root. The command runs in its own
# PID and mount namespaces: Ctrl-C and SIGTERM reach it, and when it ends every process it left
# behind is killed and every mount is gone, however it ended. Needs root (debootstrap, chroot, mounts).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGETS_DIR="${HARDENING_TARGETS:-/var/cache/orthanc-hardening/targets}"
INSTALL_SCRIPT="$REPO/scripts/install-deps.sh"

log() { printf '[in-target] %s\n' "$*" >&2; }
fail() { printf 'in-target: %s\n' "$*" >&2; exit 2; }

usage() {
    sed -n '2,6p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

REBUILD=0
if [[ "${1:-}" == "--rebuild" ]]; then
    REBUILD=1
    shift
fi
[[ $# -ge 1 ]] || usage
TARGET="$1"
shift
case "$TARGET" in
    bookworm | trixie | forky) ;;
    *) fail "unknown target '$TARGET' (bookworm, trixie or forky)" ;;
esac
[[ $REBUILD == 1 || $# -ge 1 ]] || usage

host_release() {
    # shellcheck disable=SC1091 # the host's own file
    (. /etc/os-release && printf '%s' "${VERSION_CODENAME:-}")
}

if [[ $REBUILD == 0 && "$(host_release)" == "$TARGET" ]]; then
    cd "$REPO"
    exec "$@"
fi

[[ "$(id -u)" == 0 ]] || fail "building and entering a $TARGET root filesystem needs root"

ROOT="$TARGETS_DIR/$TARGET"
BASE="$TARGETS_DIR/$TARGET.base.tar"
ARCHIVES="$TARGETS_DIR/apt-archives/$TARGET"
STAMP="$ROOT/etc/orthanc-hardening-target"
mkdir -p "$TARGETS_DIR" "$ARCHIVES/partial"

# The host's Debian mirror (the one its own apt uses), deb822 or one-line format.
debian_mirror() {
    local uri
    uri="$(grep -hsE '^\s*URIs:\s*\S+/debian/?\s*$' /etc/apt/sources.list.d/*.sources | head -n 1 | awk '{print $2}')"
    if [[ -z "$uri" ]]; then
        uri="$(grep -hsE '^\s*deb\s+(\[[^]]*\]\s+)?\S+/debian/?\s' /etc/apt/sources.list /etc/apt/sources.list.d/*.list |
            head -n 1 | sed -E 's/^\s*deb\s+(\[[^]]*\]\s+)?(\S+).*/\2/')"
    fi
    printf '%s' "${uri:-http://deb.debian.org/debian}"
}

install_hash() {
    sha256sum "$INSTALL_SCRIPT" | cut -c1-16
}

# A pristine debootstrap image of the release, made once (1-3 minutes).
make_base() {
    [[ -s "$BASE" ]] && return
    command -v debootstrap >/dev/null || {
        log "installing debootstrap"
        DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap </dev/null >&2
    }
    local mirror tmp script=()
    mirror="$(debian_mirror)"
    tmp="$TARGETS_DIR/$TARGET.debootstrap"
    rm -rf "$tmp"
    # forky is Debian testing: debootstrap of every host release knows it as sid's layout.
    [[ "$TARGET" == forky ]] && script=(/usr/share/debootstrap/scripts/sid)
    log "debootstrap $TARGET from $mirror (once)"
    debootstrap --variant=minbase --include=ca-certificates "$TARGET" "$tmp" "$mirror" "${script[@]}" \
        >"$TARGETS_DIR/$TARGET.debootstrap.log" 2>&1 ||
        fail "debootstrap of $TARGET failed; see $TARGETS_DIR/$TARGET.debootstrap.log"
    tar -C "$tmp" -cf "$BASE.tmp" .
    mv -f "$BASE.tmp" "$BASE"
    rm -rf "$tmp"
}

# Apt sources and settings of a real machine of the release, and the host's extra CA
# certificates (pip and apt inside reach the registries through them).
configure_root() {
    local mirror security
    mirror="$(debian_mirror)"
    security="${mirror%/debian}/debian-security"
    case "$TARGET" in
        forky) printf 'deb %s forky main\n' "$mirror" >"$ROOT/etc/apt/sources.list" ;;
        *) printf 'deb %s %s main\ndeb %s %s-updates main\ndeb %s %s-security main\n' \
            "$mirror" "$TARGET" "$mirror" "$TARGET" "$security" "$TARGET" >"$ROOT/etc/apt/sources.list" ;;
    esac
    # Debian testing's Release file can be past its Valid-Until against this clock.
    printf 'Acquire::Check-Valid-Until "false";\n' >"$ROOT/etc/apt/apt.conf.d/99orthanc-hardening"
    # Keep downloaded packages: they live outside the root filesystem and survive a rebuild.
    printf 'Binary::apt::APT::Keep-Downloaded-Packages "true";\n' >>"$ROOT/etc/apt/apt.conf.d/99orthanc-hardening"
    rm -f "$ROOT/etc/apt/apt.conf.d/docker-clean"
    if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
        mkdir -p "$ROOT/usr/local/share/ca-certificates"
        cp -f /usr/local/share/ca-certificates/*.crt "$ROOT/usr/local/share/ca-certificates/"
    fi
    cp -fL /etc/resolv.conf "$ROOT/etc/resolv.conf" 2>/dev/null || true
    cp -fL /etc/hosts "$ROOT/etc/hosts" 2>/dev/null || true
}

# Per checkout: the target's own .venv and build/ (bind-mounted over the repository's).
CHECKOUT_STATE="/var/lib/orthanc-hardening/checkouts/$(printf '%s' "$REPO" | sha256sum | cut -c1-16)"

# The environment inside: only what the command needs, never the host's library or CA paths.
inner_environment() {
    local name
    printf '%s\0' \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        HOME=/root LANG=C.UTF-8 LC_ALL=C.UTF-8 \
        "TERM=${TERM:-dumb}" "HARDENING_TARGET=$TARGET" \
        "HARDENING_HOME=${HARDENING_HOME:-$REPO/var/$TARGET}"
    for name in HTTPS_PORT DICOM_PORT DICOM_AET HARDENING_POSTGRES HARDENING_STORAGE HARDENING_JOIN CI PYTEST_ARGS \
        HARDENING_SUITE_BUDGET http_proxy https_proxy no_proxy \
        HTTP_PROXY HTTPS_PROXY NO_PROXY PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_DEFAULT_TIMEOUT; do
        [[ -n "${!name:-}" ]] && printf '%s=%s\0' "$name" "${!name}"
    done
    return 0
}

# Enter the root filesystem in new PID and mount namespaces and run "$@" in the repository.
# Everything mounted here disappears with the namespace; every process left behind is killed
# when the command (PID 1's child) ends.
enter() {
    local -a environment
    mapfile -d '' environment < <(inner_environment)
    mkdir -p "$ROOT$REPO" "$ROOT/tmp" "$ROOT$CHECKOUT_STATE/venv" "$ROOT$CHECKOUT_STATE/build"
    mkdir -p "$REPO/.venv" "$REPO/build"
    unshare --mount --pid --fork --propagation private -- \
        /bin/bash -c '
            set -euo pipefail
            root="$1" repo="$2" state="$3" archives="$4"
            shift 4
            mount -t proc proc "$root/proc"
            mount --rbind /sys "$root/sys"
            mount --rbind /dev "$root/dev"
            mkdir -p "$root/dev/shm" "$root/var/cache/apt/archives"
            mount --bind "$archives" "$root/var/cache/apt/archives"
            mount --bind /tmp "$root/tmp"
            mount --bind "$repo" "$root$repo"
            mount --bind "$root$state/venv" "$root$repo/.venv"
            mount --bind "$root$state/build" "$root$repo/build"
            # PID 1 of the namespace: forward Ctrl-C and SIGTERM to the command, report its status.
            child=0
            forward() { [[ $child != 0 ]] && kill -"$1" "$child" 2>/dev/null; }
            trap "forward INT" INT
            trap "forward TERM" TERM
            trap "forward HUP" HUP
            count="$1"
            shift
            environment=("${@:1:$count}")
            shift "$count"
            chroot "$root" /usr/bin/env -i "${environment[@]}" /bin/bash -c "cd \"\$0\" && exec \"\$@\"" "$repo" "$@" &
            child=$!
            status=0
            while :; do
                wait "$child" && status=0 || status=$?
                # wait returns early (status > 128) when a trapped signal arrives; go on waiting.
                kill -0 "$child" 2>/dev/null || break
            done
            exit "$status"
        ' in-target "$ROOT" "$REPO" "$CHECKOUT_STATE" "$ARCHIVES" "${#environment[@]}" "${environment[@]}" "$@" &
    local pid=$! status=0
    # unshare ignores INT and TERM while it waits; hand them to the namespace's PID 1.
    trap 'pkill -TERM -P "$pid" 2>/dev/null || true' TERM HUP
    trap 'pkill -INT -P "$pid" 2>/dev/null || true' INT
    while :; do
        wait "$pid" && status=0 || status=$?
        kill -0 "$pid" 2>/dev/null || break
    done
    trap - TERM HUP INT
    return "$status"
}

# Build (or rebuild) the root filesystem from the base image and provision it.
provision() {
    local wanted
    wanted="$(install_hash)"
    if [[ $REBUILD == 0 && -f "$STAMP" && "$(cat "$STAMP")" == "$wanted" ]]; then
        return
    fi
    make_base
    if [[ -d "$ROOT" ]]; then
        log "rebuilding $TARGET (scripts/install-deps.sh changed or --rebuild)"
        # A leftover bind mount of an interrupted run would make rm descend into the host's files.
        if grep -qsF " $ROOT/" /proc/mounts; then
            fail "$ROOT still has mounts (a run in progress?); not rebuilding"
        fi
        rm -rf --one-file-system "$ROOT"
    fi
    log "unpacking $TARGET"
    mkdir -p "$ROOT.new"
    tar -C "$ROOT.new" -xf "$BASE"
    mv "$ROOT.new" "$ROOT"
    configure_root
    log "provisioning $TARGET with scripts/install-deps.sh (a few minutes)"
    enter /bin/bash -c 'update-ca-certificates >/dev/null 2>&1 || true; exec bash scripts/install-deps.sh' ||
        fail "provisioning $TARGET failed (scripts/install-deps.sh, output above)"
    printf '%s\n' "$wanted" >"$STAMP"
}

# One build at a time per target (two concurrent runs would unpack over each other).
exec 9>"$TARGETS_DIR/$TARGET.lock"
flock 9
provision
flock -u 9
[[ $# -ge 1 ]] || exit 0
# Keep the lock shared while the command runs, so that no rebuild removes the tree under it.
flock -s 9
enter "$@"
