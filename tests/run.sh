#!/usr/bin/env bash
# The test command of the README: installs what the suite needs when it is
# missing, then runs every test (unit, integration against the real binary,
# harness smoke runs). Bounded: the integration tests carry their own
# watchdogs.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "tests/run.sh: cargo is required (https://rustup.rs)" >&2
  exit 1
fi

# The suite opens a few thousand sockets at most; make sure the soft limit allows it.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

cargo build --workspace --all-targets
cargo test --workspace -- --test-threads=4
