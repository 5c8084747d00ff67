#!/bin/bash
# Health check of the syslog collector: healthy while a socket listens on the TLS port
# (SYSLOG_PORT, default 6514). It reads the kernel's socket tables instead of connecting, so
# that no half-open TLS session appears in rsyslog's log every interval; and it needs only bash
# and grep, which every Debian image has (the slim image has no pgrep, ps or openssl).
set -uo pipefail
port="${SYSLOG_PORT:-6514}"
[[ "$port" =~ ^[0-9]+$ ]] || { echo "unhealthy: SYSLOG_PORT is not a number: $port" >&2; exit 1; }
# /proc/net/tcp and tcp6: "sl local_address rem_address st ...", the port in hexadecimal after
# the address, state 0A = LISTEN.
hex="$(printf '%04X' "$port")"
if grep -qsE "^ *[0-9]+: [0-9A-F]+:${hex} [0-9A-F]+:[0-9A-F]{4} 0A " /proc/net/tcp /proc/net/tcp6; then
    exit 0
fi
echo "unhealthy: nothing listens on TCP port $port" >&2
exit 1
