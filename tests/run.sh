#!/usr/bin/env bash
# The test command of the README. On a fresh machine it installs what the
# suite needs and says so, package by package: redis-server, systemd
# (systemd-analyze), chromium and npm (the browser test), nginx and, where
# the distribution has it, caddy (the integration suite's `proxy` tests),
# lintian and cargo-deb (tests/deb.sh; cargo-deb through cargo). Then it runs every test: unit
# tests, the integration suite against the real binary (real sockets, sled
# files, redis-server, nginx and Caddy in front), the load harness's smoke
# runs, the package check, and the browser test in headless Chromium.
#
# Temporary files of the browser test (which makes its own temp folder and
# does not remove it) go into one folder that this script removes on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "tests/run.sh: cargo is required (https://rustup.rs)" >&2
  exit 1
fi

tmp="$(mktemp -d "${TMPDIR:-/tmp}/chinwag-run.XXXXXX")"
# Removed on exit; kept (and named) only when a step failed, for its logs.
trap 'rc=$?; if [ "$rc" -ne 0 ]; then echo "tests/run.sh: failed; logs kept in $tmp" >&2; else rm -rf "$tmp"; fi' EXIT

if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
apt_updated=""
apt_update() {
  [ -n "$apt_updated" ] || { $SUDO apt-get update -qq; apt_updated=1; }
}
# apt_install PACKAGE...: installs those not installed yet, naming them.
apt_install() {
  local want=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || want+=("$p")
  done
  [ "${#want[@]}" -gt 0 ] || return 0
  echo "tests/run.sh: installing with apt-get: ${want[*]}"
  apt_update
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${want[@]}" \
    >"$tmp/apt.log" 2>&1 || { cat "$tmp/apt.log" >&2; exit 1; }
  echo "tests/run.sh: installed ${want[*]}"
}

pkgs=()
command -v redis-server >/dev/null 2>&1 || pkgs+=(redis-server)
command -v systemd-analyze >/dev/null 2>&1 || pkgs+=(systemd)
command -v chromium >/dev/null 2>&1 || pkgs+=(chromium)
command -v npm >/dev/null 2>&1 || pkgs+=(npm)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || pkgs+=(nginx)
command -v lintian >/dev/null 2>&1 || pkgs+=(lintian)
if ! command -v caddy >/dev/null 2>&1; then
  # Caddy is optional: only where the distribution has a candidate.
  apt_update
  if apt-cache policy caddy 2>/dev/null | grep -q 'Candidate: [0-9]'; then
    pkgs+=(caddy)
  else
    echo "tests/run.sh: caddy has no apt candidate here; the proxy tests cover nginx only"
  fi
fi
[ "${#pkgs[@]}" -eq 0 ] || apt_install "${pkgs[@]}"

# The suite opens a few thousand sockets at most; make sure the soft limit allows it.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

cargo build --workspace --all-targets
cargo test --workspace

tests/deb.sh

# The JS client library (clients/js) against the real binary; no npm install.
CHINWAG_BIN="$PWD/target/debug/chinwag" clients/js/test.sh

export SCREENSHOT_DIR="${SCREENSHOT_DIR:-$PWD/target/screenshots}"
CHINWAG_BIN="$PWD/target/debug/chinwag" TMPDIR="$tmp" tests/browser/run.sh
echo "tests/run.sh: browser screenshots are in $SCREENSHOT_DIR"
