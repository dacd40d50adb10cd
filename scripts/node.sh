#!/usr/bin/env bash
# Makes sure Node.js and npm are here for the clients (clients/ts, clients/web), and with
# --chromium also Debian's Chromium for the page's browser test, installing them from
# Debian's packages when missing. Idempotent, like services.sh.
set -euo pipefail

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
if [[ ${1:-} == --chromium ]] && ! command -v chromium >/dev/null; then
  missing+=(chromium)
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "node: installing ${missing[*]}"
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi
echo "node: $(node --version), npm $(npm --version)${1:+, $(chromium --version 2>/dev/null || true)}"
