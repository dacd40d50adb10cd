#!/usr/bin/env bash
# Checks the systemd directory: unit files (systemd-analyze verify, strict: any warning
# fails), their security exposure (systemd-analyze security --offline), the sysctl file's
# syntax, the shell scripts (shellcheck, when installed) and a staged install.sh run.
#
#   systemd/verify.sh [--gateway-bin PATH] [--backend-bin PATH]
#
# `verify` needs ExecStart= to name an existing executable, so the units are checked in a
# temporary copy whose ExecStart points at the built binaries (target/release, else
# target/debug), or at a stub when they are not built. Needs systemd-analyze (package
# systemd); as root with apt-get it is installed when missing. No root otherwise.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
# Highest acceptable exposure, in tenths as systemd-analyze counts (15 means 1.5).
max_exposure=15

gateway_bin=
backend_bin=
while [ $# -gt 0 ]; do
    case $1 in
        --gateway-bin) gateway_bin=$2; shift ;;
        --backend-bin) backend_bin=$2; shift ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done

if ! command -v systemd-analyze >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get install -y --no-install-recommends systemd >/dev/null
    else
        echo "systemd-analyze is missing: install the systemd package" >&2
        exit 1
    fi
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/bin"

# The built binary named $1, or a stub that stands in for it.
binary() {
    local name=$1 given=$2 dir
    if [ -n "$given" ]; then
        [ -x "$given" ] || { echo "$given is not an executable" >&2; exit 1; }
        ln -s "$(cd "$(dirname "$given")" && pwd)/$(basename "$given")" "$work/bin/edge-$name"
        return
    fi
    for dir in "$repo/target/release" "$repo/target/debug"; do
        if [ -x "$dir/$name" ]; then
            ln -s "$dir/$name" "$work/bin/edge-$name"
            return
        fi
    done
    echo "note: no built $name binary; verifying against a stub" >&2
    printf '#!/bin/sh\nexit 0\n' >"$work/bin/edge-$name"
    chmod +x "$work/bin/edge-$name"
}
binary gateway "$gateway_bin"
binary backend "$backend_bin"

units=(edge-gateway.socket edge-gateway.service edge-backend.service)
for unit in "${units[@]}"; do
    sed "s#/usr/local/bin/#$work/bin/#g" "$here/$unit" >"$work/$unit"
done

failed=0
fail() {
    echo "FAIL: $*" >&2
    failed=1
}

echo "== systemd-analyze verify ($(systemd-analyze --version | head -n 1))"
# verify exits 0 on unknown keys and bad values (it only warns), so any output fails.
(cd "$work" && systemd-analyze verify "${units[@]/#/./}") >"$work/verify.log" 2>&1 \
    || fail "systemd-analyze verify exited non-zero"
if [ -s "$work/verify.log" ]; then
    sed "s#$work/#systemd/#g" "$work/verify.log" >&2
    fail "systemd-analyze verify reported problems"
else
    echo "ok: ${units[*]}"
fi

echo "== systemd-analyze security --offline (fails above $max_exposure/10)"
for unit in edge-gateway.service edge-backend.service; do
    if (cd "$work" && systemd-analyze security --offline=true --threshold="$max_exposure" \
        "./$unit") >"$work/security.log" 2>&1; then
        grep -F 'Overall exposure level' "$work/security.log"
    else
        grep -F '✗' "$work/security.log" >&2 || cat "$work/security.log" >&2
        fail "$unit: exposure above $max_exposure/10"
    fi
done

echo "== sysctl.d syntax"
sysctl_file=$here/sysctl.d/60-edge-gateway.conf
if grep -vE '^[[:space:]]*(#.*)?$' "$sysctl_file" \
    | grep -vE '^[a-z0-9_.-]+ = [0-9]+([,-][0-9]+)*( [0-9]+)*$' >&2; then
    fail "$sysctl_file: lines above are not 'key = number...' or 'key = port,port-port'"
else
    grep -oE '^[a-z0-9_.-]+' "$sysctl_file" | while read -r key; do
        [ -e "/proc/sys/${key//.//}" ] || echo "note: this kernel has no $key" >&2
    done
    echo "ok: $(grep -cE '^[a-z]' "$sysctl_file") settings"
fi
# A widened ephemeral range must not hand RabbitMQ's listening ports to outbound sockets.
low=$(sed -nE 's/^net\.ipv4\.ip_local_port_range = ([0-9]+) [0-9]+$/\1/p' "$sysctl_file")
reserved=$(sed -nE 's/^net\.ipv4\.ip_local_reserved_ports = (.*)$/\1/p' "$sysctl_file")
for port in 15672 15692 25672; do
    if [ -n "$low" ] && [ "$port" -ge "$low" ] && ! grep -qE "(^|,)$port(,|$)" <<<"$reserved"; then
        fail "$sysctl_file: port $port is in ip_local_port_range but not in ip_local_reserved_ports"
    fi
done

echo "== shellcheck"
if command -v shellcheck >/dev/null; then
    if shellcheck "$here/install.sh" "$here/verify.sh"; then
        echo "ok"
    else
        fail "shellcheck"
    fi
else
    echo "skipped: shellcheck is not installed"
fi

echo "== install.sh into a staging directory"
mkdir "$work/stage-bin"
cp "$work/bin/edge-gateway" "$work/stage-bin/gateway"
cp "$work/bin/edge-backend" "$work/stage-bin/backend"
stage=$work/stage
staged=ok
# Twice: the second run must succeed on top of the first and keep the configuration.
for round in first second; do
    if ! DESTDIR=$stage "$here/install.sh" --bin-dir "$work/stage-bin" >"$work/install.log" 2>&1; then
        cat "$work/install.log" >&2
        fail "install.sh ($round run)"
        staged=failed
    fi
    [ "$round" = second ] || echo "GATEWAY_NODE_ID=7" >>"$stage/etc/edge/gateway.env"
done
grep -qx 'GATEWAY_NODE_ID=7' "$stage/etc/edge/gateway.env" \
    || { fail "install.sh overwrote an existing gateway.env"; staged=failed; }
for path in usr/local/bin/edge-gateway usr/local/bin/edge-backend \
    etc/systemd/system/edge-gateway.socket etc/systemd/system/edge-gateway.service \
    etc/systemd/system/edge-backend.service etc/edge/gateway.env etc/edge/backend.env \
    etc/sysctl.d/60-edge-gateway.conf; do
    [ -e "$stage/$path" ] || { fail "install.sh did not install /$path"; staged=failed; }
done
[ "$(stat -c %a "$stage/etc/edge/gateway.env")" = 600 ] \
    || { fail "gateway.env is not 0600"; staged=failed; }
[ "$staged" = failed ] || echo "ok: installed, reinstalled, configuration kept"

if [ "$failed" != 0 ]; then
    echo "systemd/verify.sh: FAILED" >&2
    exit 1
fi
echo "systemd/verify.sh: all checks passed"
