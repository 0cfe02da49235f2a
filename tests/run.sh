#!/usr/bin/env bash
# The test command of the README. On a fresh machine it installs what the
# suite needs (redis-server, systemd-analyze, Chromium, the browser test's npm
# packages), then runs every test: unit tests, the integration suite against
# the real binary (real sockets, sled files, redis-server), the load
# harness's smoke runs, and the browser test in headless Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "tests/run.sh: cargo is required (https://rustup.rs)" >&2
  exit 1
fi

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "tests/run.sh: installing ${missing[*]}"
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The suite opens a few thousand sockets at most; make sure the soft limit allows it.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

cargo build --workspace --all-targets
cargo test --workspace

export SCREENSHOT_DIR="${SCREENSHOT_DIR:-$PWD/target/screenshots}"
CHINWAG_BIN="$PWD/target/debug/chinwag" tests/browser/run.sh
echo "tests/run.sh: browser screenshots are in $SCREENSHOT_DIR"
