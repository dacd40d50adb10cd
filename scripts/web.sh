#!/usr/bin/env bash
# The browser chat page: builds the gateway and the clients, starts a gateway on the memory
# engine (--amqp: the full path, with the backend on PostgreSQL, Redis and RabbitMQ, which
# it starts when needed) and serves the page, printing its URL. Open it in two tabs and sign
# in as two users. Ctrl-C stops everything.
#
# Settings (environment): PORT (8000, the page), GATEWAY_PORT (0: any free port).
set -euo pipefail
cd "$(dirname "$0")/.."

engine=memory
[[ ${1:-} == --amqp ]] && engine=amqp

scripts/toolchain.sh
# A toolchain that rustup just installed is not on PATH yet.
command -v cargo >/dev/null || . "$HOME/.cargo/env"
scripts/node.sh
packages=(-p gateway)
if [[ $engine == amqp ]]; then
  scripts/services.sh
  packages+=(-p backend)
fi
cargo build --locked "${packages[@]}"
npm ci --prefix clients/ts --no-audit --no-fund --loglevel=error
npm run --prefix clients/ts build
npm ci --prefix clients/web --no-audit --no-fund --loglevel=error
npm run --prefix clients/web build
exec node clients/web/dist/src/server.js --engine "$engine" --port "${PORT:-8000}" --gateway-port "${GATEWAY_PORT:-0}"
