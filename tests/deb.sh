#!/usr/bin/env bash
# Builds chinwag's .deb with cargo-deb (Cargo.toml, [package.metadata.deb])
# and checks what it holds: the stripped binary (0755, runs), the systemd
# unit, the example config as a conffile readable by root only (0640: it
# may hold the secret), the docs and proxy examples, the postinst that makes
# /var/backups/chinwag (0700), and lintian without errors. Installs nothing
# on this machine but cargo-deb (with cargo, saying so) when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo-deb >/dev/null 2>&1; then
  echo "tests/deb.sh: installing cargo-deb with: cargo install cargo-deb --locked"
  cargo install cargo-deb --locked
fi

tmp="$(mktemp -d "${TMPDIR:-/tmp}/chinwag-deb.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
fail() { echo "tests/deb.sh: FAIL: $*" >&2; exit 1; }

echo "tests/deb.sh: cargo deb (release build)"
cargo deb -p chinwag --output "$tmp/" >"$tmp/build.log" 2>&1 || { cat "$tmp/build.log" >&2; fail "cargo deb"; }
deb="$(ls "$tmp"/*.deb)"
echo "tests/deb.sh: built $(basename "$deb")"

info="$(dpkg-deb -I "$deb")"
grep -q '^ Package: chinwag$' <<<"$info" || fail "package name: $info"
grep -q '^ Depends:.*libc6' <<<"$info" || fail "no libc6 dependency: $info"
[ "$(dpkg-deb -f "$deb" Section)" = net ] || fail "section"
dpkg-deb -I "$deb" conffiles | grep -qx '/etc/chinwag/chinwag.toml' || fail "the config is not a conffile"

# Modes and owners as listed in the archive: "MODE OWNER SIZE DATE TIME ./PATH",
# the owner root, by name or number.
listing="$(dpkg-deb -c "$deb")"
echo "$listing" | sed 's/^/  /'
mode_of() { awk -v p="./$1" '$6 == p { sub("^root/root$", "0/0", $2); print $1 " " $2 }' <<<"$listing"; }
expect() {
  local got; got="$(mode_of "$1")"
  [ "$got" = "$2 0/0" ] || fail "$1: want $2 owned by root, got '${got:-missing}'"
}
expect usr/bin/chinwag -rwxr-xr-x
expect etc/chinwag/chinwag.toml -rw-r-----
expect usr/share/doc/chinwag/README.md -rw-r--r--
expect usr/share/doc/chinwag/PROTOCOL.md -rw-r--r--
expect usr/share/doc/chinwag/examples/nginx.conf -rw-r--r--
expect usr/share/doc/chinwag/examples/Caddyfile -rw-r--r--
expect usr/share/doc/chinwag/examples/grafana-chinwag.json -rw-r--r--
unit="$(awk '$6 ~ /\/systemd\/system\/chinwag\.service$/ { print $6 }' <<<"$listing")"
[ -n "$unit" ] || fail "no systemd unit in the package"
expect "${unit#./}" -rw-r--r--

# The files themselves.
dpkg-deb -x "$deb" "$tmp/root"
bin="$tmp/root/usr/bin/chinwag"
"$bin" --version | grep -qx "chinwag $(cargo pkgid -p chinwag | sed 's/.*[#@]//')" || fail "--version"
if command -v readelf >/dev/null 2>&1; then
  ! readelf -S "$bin" | grep -qE '\.(symtab|debug_[a-z]+)' || fail "the binary has symbols or debug info"
else
  echo "tests/deb.sh: readelf missing; symbol check skipped"
fi
grep -q '^ExecStart=/usr/bin/chinwag serve' "$tmp/root/${unit#./}" || fail "unit ExecStart"
grep -q '^data_dir = "/var/lib/chinwag"' "$tmp/root/etc/chinwag/chinwag.toml" || fail "config data_dir"
dpkg-deb -e "$deb" "$tmp/control"
grep -q 'install -d -m 0700 -o root -g root /var/backups/chinwag' "$tmp/control/postinst" || fail "postinst: backups"
grep -q 'deb-systemd-helper' "$tmp/control/postinst" || fail "postinst: the unit is not enabled"

if command -v lintian >/dev/null 2>&1; then
  echo "tests/deb.sh: lintian"
  lintian --fail-on error --tag-display-limit 0 "$deb" | sed 's/^/  /' || fail "lintian reports errors"
else
  echo "tests/deb.sh: lintian is not installed; skipped (tests/run.sh installs it)"
fi
echo "tests/deb.sh: ok"
