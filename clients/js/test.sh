#!/bin/sh
# Tests of the JS client against the real server binary: no npm install needed.
# Env: CHINWAG_BIN (default <repo>/target/debug/chinwag), CHINWAG_SECRET (default: random).
# Node < 22 has WebSocket behind --experimental-websocket (Node >= 20.10); older
# Node would need a WebSocket passed in (the tests use the global one).
set -eu
cd "$(dirname "$0")"
flags=""
if ! node -e 'process.exit(typeof WebSocket === "function" ? 0 : 1)' 2>/dev/null; then
  flags="--experimental-websocket"
fi
exec node $flags --test --test-reporter=spec test/*.test.js
