#!/usr/bin/env bash
# Browser test of the embedded web client (src/web/index.html).
# Env: CHINWAG_BIN (server binary, default target/debug/chinwag),
#      CHROMIUM (default /usr/bin/chromium), SCREENSHOT_DIR (default tests/browser/screenshots).
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -d node_modules/playwright-core ]; then
  if [ -f package-lock.json ]; then npm ci --no-audit --no-fund; else npm install --no-audit --no-fund; fi
fi
exec node --test --test-reporter=spec chat.test.js
