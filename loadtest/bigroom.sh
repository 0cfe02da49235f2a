#!/usr/bin/env bash
# bigroom.sh: issue 12's big rooms, on a machine with cores to spare.
#
# One room of BIG_MEMBERS members (2,000, then 10,000), 10 publishers, a
# `sweep` from BIG_START deliveries/s (80,000: what the 2-core VM
# sustains), doubling each step until the delivery p99 passes 50 ms
# (BIG_STEPS steps at most). The server runs on BIG_SERVER_CORES (core 0)
# with CW_THREADS event loops (1, like the single-threaded µWebSockets it
# is compared with), everything else at its default (the search index
# on); the harness runs on BIG_HARNESS_CORES (the other cores) with
# BIG_HARNESS_THREADS workers (one per core), so that it is not what
# saturates first. Then, with BIG_CALIBRATE=1 (the default), the classic
# shape (1,000 connections, 10 rooms, 10 publishers) from 20,000
# deliveries/s, to set the machine beside the 2-core VM the other tables
# come from.
#
# BIG_PEER=uws runs the same sweeps against the µWebSockets peer
# (loadtest/peers/uws) instead of chinwag.
#
# A fresh server per sweep. JSON lines go to BENCH_OUT/bigroom.jsonl
# (target/bench-results), progress to bigroom.log, a table to stdout and
# bigroom-summary.txt. Needs built release binaries (cargo build --release
# -p chinwag -p chinwag-load, or CHINWAG_BIN and CHINWAG_LOAD_BIN). On a
# 2-core machine it runs, but the harness saturates first: its busiest
# thread is in the table.
#
#   loadtest/bigroom.sh
#   BIG_MEMBERS=2000 BIG_CALIBRATE=0 loadtest/bigroom.sh
#   BIG_PEER=uws loadtest/bigroom.sh
set -euo pipefail
source "$(dirname "$0")/lib.sh"
trap cw_cleanup EXIT

OUT=${BENCH_OUT:-$CW_ROOT/target/bench-results}
CORES=$(nproc)
SERVER_CORES=${BIG_SERVER_CORES:-0}
HARNESS_CORES=${BIG_HARNESS_CORES:-1-$((CORES - 1))}
HARNESS_THREADS=${BIG_HARNESS_THREADS:-$((CORES > 2 ? CORES - 1 : 1))}
MEMBERS=${BIG_MEMBERS:-2000 10000}
STEPS=${BIG_STEPS:-6}
START=${BIG_START:-80000}
mkdir -p "$OUT"
rm -f "$OUT"/bigroom.jsonl "$OUT"/bigroom.log "$OUT"/bigroom-*.svg "$OUT"/bigroom-summary.txt
((CORES >= 4)) || cw_log "warning: $CORES cores: the harness saturates before the server"
# Each member is a socket on both sides; 10,000 need more than the usual 1,024.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# sweep LABEL [flags...]: a fresh server, one sweep against it.
sweep() {
    local label=$1
    shift
    cw_start "${BIG_PEER:-chinwag}" SRV "$SERVER_CORES"
    cw_log "$label: server pid $SRV_PID on cores $SERVER_CORES, harness on $HARNESS_CORES x$HARNESS_THREADS"
    # The label names the plot; in the JSON the conns and rooms say which.
    local title=()
    [[ ${BIG_PEER:-chinwag} == uws ]] && title=(--server-name µWebSockets)
    $(cw_pin "$HARNESS_CORES") "$CW_LOAD" sweep "${title[@]}" --target "$SRV_ADDR" --server-pid "$SRV_PID" --json \
        --threads "$HARNESS_THREADS" --publishers 10 --warmup 1s --step-duration 3s --drain 1s \
        --p99-limit 50ms --setup-timeout 240s --plot "$OUT/bigroom-$label.svg" "$@" \
        >>"$OUT/bigroom.jsonl" 2>>"$OUT/bigroom.log" ||
        cw_log "$label failed: see $OUT/bigroom.log"
    cw_stop "$SRV_PID"
}

for m in $MEMBERS; do
    sweep "room-$m" --conns "$m" --rooms 1 --start-rate $(((START + m - 1) / m)) --max-steps "$STEPS"
done
if [[ ${BIG_CALIBRATE:-1} == 1 ]]; then
    sweep "rooms-10" --conns 1000 --rooms 10 --start-rate 200 --max-steps 8
fi

# --- summary: one row per step, from the JSON lines (awk only) ---
{
    echo "machine: $CORES cores, $(uname -sr); server on cores $SERVER_CORES (${CW_THREADS:-1} loop),"
    echo "harness on $HARNESS_CORES with $HARNESS_THREADS threads"
    echo
    printf '%-6s %-6s %-8s %-12s %-10s %-10s %-9s %-11s %-12s %s\n' conns rooms msg/s deliveries/s p50_ms p99_ms srv_cpu% srv_us/deliv harness_cpu% busiest%
    awk '
        function get(k,   r) {
            if (match($0, "\"" k "\":[^,}]*")) { r = substr($0, RSTART + length(k) + 3, RLENGTH - length(k) - 3); gsub(/"/, "", r); return r }
            return "-"
        }
        /"scenario":"sweep"/ {
            printf "%-6s %-6s %-8s %-12s %-10.2f %-10.2f %-9s %-11s %-12s %s\n", get("conns"), get("rooms"), get("rate"),
                get("deliveries_per_s"), get("lat_p50_us") / 1000, get("lat_p99_us") / 1000, get("server_cpu_pct"),
                get("server_cpu_us_per_delivery"), get("harness_cpu_pct"), get("harness_busiest_thread_pct")
        }
        /"scenario":"sweep_result"/ {
            printf "  -> capacity at p99 <= 50 ms: %s deliveries/s (stopped by: %s)\n", get("last_good_deliveries_per_s"), get("stopped_by")
        }' "$OUT/bigroom.jsonl"
} | tee "$OUT/bigroom-summary.txt"
