#!/usr/bin/env bash
# probe.sh: the small measurements behind BENCHMARKS.md's comparisons,
# for when one `bench.sh` run is too noisy to tell two builds apart.
#
#   loadtest/probe.sh pairs ROUNDS SERVER...   CPU per delivery of fresh
#       servers taken in turn, ROUNDS times (alternating cancels the VM's
#       drift); prints one line a round and each SERVER's median (with
#       MODE=cluster, each SERVER as a cluster)
#   loadtest/probe.sh threads SERVER [cluster]  each thread's share of core 0
#   loadtest/probe.sh switches SERVER [cluster] each thread's sleeps and
#       preemptions per message
#
# SERVER is a chinwag binary, or `uws` for the µWebSockets peer (built
# into target/peers/uws-server, see loadtest/peers/uws). `cluster` runs
# two nodes of SERVER and their redis-server instead of one node (Redis
# on core 0 too; REDIS_CORE= leaves it to the scheduler). Every
# run is `fanout` (`cluster`) with 1,000 connections in 10 rooms and 10
# publishers at RATE messages/s (default 200, i.e. 20,000 deliveries/s):
# a 2 s warm-up, 10 s measured, 2 s drain. Servers run on core 0 with
# `--threads 1`, the harness on core 1. `threads` and `switches` read
# /proc/PID/task/*/ over 8 s in the middle of the window: a thread that
# starts and ends inside it (tantivy's) is missed.
set -euo pipefail
export LC_ALL=C # one collation for sort and join
source "$(dirname "$0")/lib.sh"
trap cw_cleanup EXIT

RATE=${RATE:-200}
SHAPE=(--conns 1000 --rooms 10 --publishers 10 --rate "$RATE")
WINDOW=(--warmup 2s --duration 10s --drain 2s)
LOAD="$(cw_pin 1) $CW_LOAD"

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
}

# start SERVER MODE: starts one node (or two and Redis); sets PIDS and TARGET.
start() {
    local server=$1 mode=$2
    if [[ $mode == cluster ]]; then
        [[ $server != uws ]] || { cw_log "the µWebSockets peer has no cluster"; exit 2; }
        CW_SERVER=$server
        cw_start_redis "${REDIS_CORE-0}"
        cw_start_chinwag N1 0 --redis "$REDIS_URL"
        cw_start_chinwag N2 0 --redis "$REDIS_URL"
        PIDS=("$N1_PID" "$N2_PID" "$REDIS_PID")
        TARGET="$N1_ADDR,$N2_ADDR"
    elif [[ $server == uws ]]; then
        cw_start_uws SRV 0
        PIDS=("$SRV_PID")
        TARGET=$SRV_ADDR
    else
        CW_SERVER=$server
        cw_start_chinwag SRV 0
        PIDS=("$SRV_PID")
        TARGET=$SRV_ADDR
    fi
}

stop_all() {
    local p
    for p in "${PIDS[@]}"; do cw_stop "$p"; done
}

# load MODE OUT: one run's JSON into OUT.
load() {
    local scenario=fanout pids
    [[ $1 == cluster ]] && scenario=cluster
    pids=$(IFS=,; echo "${PIDS[*]}")
    $LOAD "$scenario" --proto chinwag --target "$TARGET" --server-pid "$pids" --json \
        "${SHAPE[@]}" "${WINDOW[@]}" >"$2" 2>"$2.log" || {
        cw_log "chinwag-load $scenario failed:"
        tail -5 "$2.log" >&2
        return 1
    }
}

cpu_per_delivery() {
    grep -o '"server_cpu_us_per_delivery":[^,}]*' "$1" | cut -d: -f2
}

median() {
    sort -g | awk '{v[NR] = $1} END { if (NR == 0) print "-"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

pairs() {
    local rounds=$1 i s c line
    shift
    (($# > 0)) || usage
    declare -A got
    for ((i = 1; i <= rounds; i++)); do
        line="round $i:"
        for s in "$@"; do
            start "$s" "${MODE:-single}"
            load "${MODE:-single}" "$CW_TMP/run.json"
            stop_all
            c=$(cpu_per_delivery "$CW_TMP/run.json")
            got[$s]+="$c "
            line+="  $(basename "$s") $c"
        done
        echo "$line"
    done
    for s in "$@"; do
        echo "median $(basename "$s"): $(tr ' ' '\n' <<<"${got[$s]}" | grep . | median) µs per delivery"
    done
}

# snapshot READER: a line "PID/THREAD VALUE..." per thread name (threads of
# one name summed), VALUE... from READER of /proc/PID/task/TID.
snapshot() {
    local p t
    for p in "${PIDS[@]}"; do
        for t in /proc/"$p"/task/*; do
            printf '%s/%s %s\n' "$p" "$(tr ' ' _ <"$t/comm" 2>/dev/null || echo gone)" "$("$1" "$t")"
        done
    done | awk '{k = $1; for (i = 2; i <= NF; i++) s[k, i] += $i; n[k] = NF} END {for (k in n) {printf "%s", k; for (i = 2; i <= n[k]; i++) printf " %s", s[k, i]; print ""}}' | sort
}

ticks() { awk '{match($0, /\) /); split(substr($0, RSTART + 2), f, " "); print f[12] + f[13]}' "$1/stat" 2>/dev/null || echo 0; }
switches_of() { awk '/^voluntary_ctxt_switches/ {v = $2} /^nonvoluntary_ctxt_switches/ {n = $2} END {print v + 0, n + 0}' "$1/status" 2>/dev/null || echo 0 0; }

# observe READER MODE SERVER: 8 s of per-thread counters in the middle of a run.
observe() {
    local kind=$1 mode=$2 server=$3 hz
    start "$server" "$mode"
    load "$mode" "$CW_TMP/run.json" &
    local l=$!
    sleep 5
    snapshot "$kind" >"$CW_TMP/a"
    sleep 8
    snapshot "$kind" >"$CW_TMP/b"
    wait "$l" || true
    stop_all
    hz=$(getconf CLK_TCK)
    join "$CW_TMP/a" "$CW_TMP/b" | awk -v kind="$kind" -v hz="$hz" -v msgs=$((RATE * 8)) '
        kind == "ticks" { d = $3 - $2; tot += d; if (d > 0) printf "%-34s %6.2f%% of a core\n", $1, 100 * d / hz / 8 }
        kind == "switches_of" { v = $4 - $2; n = $5 - $3; if (v + n > 8) printf "%-34s %5.2f sleeps %5.2f preemptions per message\n", $1, v / msgs, n / msgs }
        END { if (kind == "ticks") printf "%-34s %6.2f%% of a core\n", "total", 100 * tot / hz / 8 }'
    echo "server CPU per delivery (harness): $(cpu_per_delivery "$CW_TMP/run.json") µs"
}

case ${1:-} in
pairs)
    (($# >= 3)) || usage
    shift
    pairs "$@"
    ;;
threads | switches)
    (($# >= 2)) || usage
    kind=ticks
    [[ $1 == switches ]] && kind=switches_of
    observe "$kind" "${3:-single}" "$2"
    ;;
*) usage ;;
esac
