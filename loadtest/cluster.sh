#!/usr/bin/env bash
# cluster.sh: a short `chinwag-load cluster` run on loopback.
#
# Starts redis-server on a free port and two chinwag nodes sharing it (each
# pinned to core 0, --threads 1, fresh data dirs), runs the cluster scenario
# against both (harness on core 1), then stops everything it started.
# Extra arguments go to chinwag-load (e.g. --json, --conns 2000).
#
#   loadtest/cluster.sh [chinwag-load cluster flags...]
#
# Builds the release binaries first unless NO_BUILD=1; CHINWAG_BIN and
# CHINWAG_LOAD_BIN point at other binaries.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
trap cw_cleanup EXIT

if [[ ${NO_BUILD:-0} != 1 ]]; then
    (cd "$CW_ROOT" && cargo build --release -q -p chinwag -p chinwag-load)
fi
cw_start_redis
cw_start_chinwag NODE1 0 --redis "$REDIS_URL"
cw_start_chinwag NODE2 0 --redis "$REDIS_URL"
cw_log "redis $REDIS_URL, nodes $NODE1_ADDR and $NODE2_ADDR"
$(cw_pin 1) "$CW_LOAD" cluster --target "$NODE1_ADDR,$NODE2_ADDR" \
    --server-pid "$NODE1_PID,$NODE2_PID" --conns 1000 --rooms 10 --publishers 20 \
    --rate 400 --warmup 1s --duration 3s --drain 2s "$@"
