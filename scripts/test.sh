#!/usr/bin/env bash
# The test command: installs the toolchain, the services, Node.js and Chromium when missing,
# then runs every test of the workspace against the real services, and the clients' tests
# (the TypeScript SDK on both engines, the browser page in headless Chromium) against the
# gateway and backend those tests built.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/toolchain.sh
# A toolchain that rustup just installed is not on PATH yet.
command -v cargo >/dev/null || . "$HOME/.cargo/env"
scripts/services.sh
cargo test --workspace --locked
# The gateway's suite again with its cores on monoio (the fallback driver): both drivers
# answer to one set of tests.
GATEWAY_IO_DRIVER=io-uring cargo test --locked -p gateway
scripts/node.sh --chromium
# The binaries the clients' tests start (already built by the tests above).
cargo build --locked -p gateway -p backend
for client in clients/ts clients/web; do
  npm ci --prefix "$client" --no-audit --no-fund --loglevel=error
  npm test --prefix "$client"
done
