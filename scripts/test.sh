#!/usr/bin/env bash
# The test command: installs the toolchain and services when missing, then runs every test
# of the workspace against the real services.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/toolchain.sh
# A toolchain that rustup just installed is not on PATH yet.
command -v cargo >/dev/null || . "$HOME/.cargo/env"
scripts/services.sh
cargo test --workspace --locked
