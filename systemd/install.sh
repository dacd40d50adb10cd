#!/usr/bin/env bash
# Installs the edge gateway and backend as systemd services. Safe to run again: binaries,
# units and the sysctl file are replaced, existing configuration is kept.
#
#   systemd/install.sh [--dry-run] [--bin-dir DIR]
#
#   --bin-dir DIR  where the release binaries `gateway` and `backend` are
#                  (default: target/release of this checkout)
#   --dry-run      print what would be done, change nothing
#   DESTDIR=/path  install the files under /path instead of /, and skip what acts on the
#                  running system (user creation, sysctl, daemon-reload): for packaging
#                  and for testing without root.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
bin_dir=$repo/target/release
dry_run=0
destdir=${DESTDIR:-}
destdir=${destdir%/}

usage() {
    sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

while [ $# -gt 0 ]; do
    case $1 in
        --dry-run) dry_run=1 ;;
        --bin-dir)
            [ $# -ge 2 ] || { echo "--bin-dir needs a directory" >&2; exit 2; }
            bin_dir=$2
            shift
            ;;
        --bin-dir=*) bin_dir=${1#--bin-dir=} ;;
        -h | --help) usage; exit 0 ;;
        *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

# Acts on the system only when DESTDIR is empty: a staged install cannot create users or
# load kernel settings for the host it will run on.
live=1
[ -z "$destdir" ] || live=0

run() {
    if [ "$dry_run" = 1 ]; then
        printf 'would run:'
        printf ' %q' "$@"
        printf '\n'
    else
        "$@"
    fi
}

say() {
    if [ "$dry_run" = 1 ]; then
        printf '(dry run) %s\n' "$*"
    else
        printf '%s\n' "$*"
    fi
}

# install(1) into a temporary name, then rename: a running binary is replaced, not
# rewritten in place (which fails with "Text file busy" or corrupts the old process).
put() {
    local mode=$1 src=$2 dest=$3
    run install -d -m 0755 "$(dirname "$dest")"
    run install -m "$mode" "$src" "$dest.new"
    run mv -f "$dest.new" "$dest"
}

[ "$live" = 0 ] || [ "$dry_run" = 1 ] || [ "$(id -u)" = 0 ] || {
    echo "run as root, or set DESTDIR (staged install) or pass --dry-run" >&2
    exit 1
}

# --- binaries -------------------------------------------------------------------------
[ -x "$bin_dir/gateway" ] || {
    echo "no gateway binary in $bin_dir: build with 'cargo build --release' or pass --bin-dir" >&2
    exit 1
}
put 0755 "$bin_dir/gateway" "$destdir/usr/local/bin/edge-gateway"
say "installed $destdir/usr/local/bin/edge-gateway"
if [ -x "$bin_dir/backend" ]; then
    put 0755 "$bin_dir/backend" "$destdir/usr/local/bin/edge-backend"
    say "installed $destdir/usr/local/bin/edge-backend"
else
    say "warning: no backend binary in $bin_dir; edge-backend.service will not start until it is installed" >&2
fi

# --- system user ----------------------------------------------------------------------
if [ "$live" = 1 ]; then
    if ! getent group edge >/dev/null; then
        run groupadd --system edge
    fi
    if ! getent passwd edge >/dev/null; then
        run useradd --system --gid edge --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin --comment "edge gateway and backend" edge
    fi
else
    say "skipped (DESTDIR): creating the system user and group edge"
fi

# --- units ----------------------------------------------------------------------------
for unit in edge-gateway.socket edge-gateway.service edge-backend.service; do
    put 0644 "$here/$unit" "$destdir/etc/systemd/system/$unit"
done
say "installed units in $destdir/etc/systemd/system (local changes belong in drop-ins: systemctl edit)"

# --- configuration: never overwritten ---------------------------------------------------
# The directory is group edge so that key files (JWT public key, TLS) can be 0640
# root:edge; the env files are read by systemd as root and stay 0600 root:root.
config_dir=$destdir/etc/edge
run install -d -m 0750 "$config_dir"
if [ "$live" = 1 ]; then
    run chown root:edge "$config_dir"
fi
for name in gateway backend; do
    example=$here/$name.env.example
    run install -m 0644 "$example" "$config_dir/$name.env.example"
    if [ -e "$config_dir/$name.env" ]; then
        say "kept $config_dir/$name.env (the new example is $name.env.example beside it)"
    else
        run install -m 0600 "$example" "$config_dir/$name.env"
        say "created $config_dir/$name.env from the example"
    fi
done

# --- kernel settings ------------------------------------------------------------------
sysctl_file=$destdir/etc/sysctl.d/60-edge-gateway.conf
put 0644 "$here/sysctl.d/60-edge-gateway.conf" "$sysctl_file"
if [ "$live" = 1 ]; then
    # Some keys are read-only in containers; report them and go on.
    run sysctl -q -p "$sysctl_file" || say "warning: some settings in $sysctl_file were not applied (see above)" >&2
else
    say "skipped (DESTDIR): applying $sysctl_file"
fi

# --- systemd --------------------------------------------------------------------------
if [ "$live" = 1 ] && [ -d /run/systemd/system ]; then
    run systemctl daemon-reload
else
    say "skipped: systemctl daemon-reload (DESTDIR set or systemd not running)"
fi

cat <<EOF

Next steps:
  1. Set the JWT secret (and the broker, Redis and database URLs) in /etc/edge/gateway.env
     and /etc/edge/backend.env; generate a secret with: head -c 32 /dev/urandom | base64
  2. The client port is 8080 on every address; to change it:
       systemctl edit edge-gateway.socket   # [Socket] ListenStream= then ListenStream=443
  3. Start and enable:
       systemctl enable --now edge-gateway.socket edge-gateway.service edge-backend.service
  4. Check:
       systemctl status edge-gateway.service
       journalctl -u edge-gateway.service -f
       curl -s 127.0.0.1:9090/readyz; curl -s 127.0.0.1:9090/metrics | head
  Upgrades: run this script again, then systemctl restart edge-gateway.service
  (the socket stays open, so no connection is refused; clients get 1001 and reconnect).
EOF
