#!/usr/bin/env bash
# bench.sh: chinwag next to a Socket.IO server and a µWebSockets one, in one
# bounded command.
#
# Builds the release binaries, installs the Socket.IO peer (npm ci in
# loadtest/peers/socketio when node_modules is missing), builds the
# µWebSockets peer when UWS_DIR names a uWebSockets checkout (see
# peers/uws/build.sh; an already built target/peers/uws-server or UWS_BIN is
# used as it is; without either that column stays empty), then for chinwag
# and for each peer, each server on core 0 (chinwag --threads 1; node and
# the µWebSockets peer are one thread) and the harness on core 1, each
# scenario against a fresh server:
#
#   fanout  1000 conns / 10 rooms / 10 publishers / 200 msg/s, 3 rounds of
#           every side, a fresh server each (median server CPU us per
#           delivery, p50, p99; median per-round ratio to µWebSockets)
#   sweep   the same shape from 200 msg/s, doubling, with an SVG plot
#   idle    10,000 connections / 100 rooms (setup rate, server memory)
#
# JSON lines, logs and SVGs go to target/bench-results/ (BENCH_OUT), and a
# summary table to stdout and summary.txt, headed by what the machine
# billed for a wake-up and a synced write at the start (bench/wake.rs,
# wake.txt). About 5 minutes after the build.
# RUNS=N changes the number of fanout rounds (and of cluster runs per rate);
# NO_BUILD=1 skips the build.
#
# Suite `events` (team chat: PROTOCOL.md revision 2), chinwag only, same
# pinning, a fresh server per group:
#
#   mixed   1000 conns / 10 rooms / 10 publishers / 200 msg/s (20,000
#           deliveries/s), pure messages (--mix 0) and 10% reactions and
#           edits (--mix 0.1 --reply-weight 0), alternating, EVENT_RUNS each
#   ingest  word text into 100 rooms at each of INGEST_RATES (10,000 and
#           2,000 msg/s), server with the search index and with
#           CHINWAG_SEARCH=off, alternating, INGEST_RUNS (2) each
#   search  SEARCH_MESSAGES (1,000,000) messages into 1,000 rooms at
#           SEARCH_RATE (2,500/s: what one core stores with the index
#           without falling behind), then 2,000 queries of a member of all
#
# Summary in events-summary.txt. About 10 minutes after the build.
#
# Suite `scale` (storage at scale), chinwag only, the server on core 0 and
# the harness (and the data's generation) on core 1:
#
#   scale   writes a data dir of SCALE_EVENTS (10,000,000) messages in
#           10,000 rooms, 10,000 users with read markers, 10 of them in
#           1,000 rooms each, through the server's own storage code; starts
#           the server on it (SCALE_SEARCH=true: with the search index
#           catching up behind; false: CHINWAG_SEARCH=off) and measures disk
#           bytes per event, start to first accepted connection, RSS, 2,000
#           `history` pages, 200 `hello`s of a user in 1,000 rooms, then
#           SCALE_CHURN (100,000) edits and deletes at 2,000/s, the disk
#           after them, after a stop, in a backup copy (SCALE_BACKUP) and
#           after a restart and SCALE_WAIT (60s) idle. The data dir is
#           SCALE_DIR (default: a temp dir, removed on exit); an existing
#           one of the same shape is reused. SCALE_SERVER_CORE moves the
#           server off core 0.
#
# Summary in scale-summary.txt. Generating 10M events takes ~10-15 minutes
# on one core here, the measurements a few more.
#
#   loadtest/bench.sh                 the first suite (as before)
#   loadtest/bench.sh events          the team chat suite only
#   loadtest/bench.sh scale           storage at scale only
#   loadtest/bench.sh classic events  both
set -euo pipefail
source "$(dirname "$0")/lib.sh"
trap cw_cleanup EXIT

OUT=${BENCH_OUT:-$CW_ROOT/target/bench-results}
RUNS=${RUNS:-3}
SUITES=" ${*:-classic} "
want() { [[ $SUITES == *" $1 "* ]]; }
for s in $SUITES; do
    [[ $s == classic || $s == events || $s == scale ]] ||
        { cw_log "unknown suite $s (classic, events, scale)"; exit 2; }
done
mkdir -p "$OUT"
rm -f "$OUT"/*.jsonl "$OUT"/*.log "$OUT"/*.svg "$OUT"/summary.txt "$OUT"/wake.txt
if (($(nproc) < 2)); then
    cw_log "warning: one core only: server and harness share it, numbers will mix"
fi

if [[ ${NO_BUILD:-0} != 1 ]]; then
    cw_log "building release binaries"
    (cd "$CW_ROOT" && cargo build --release -q -p chinwag -p chinwag-load)
fi

# What this machine bills right now for a wake-up from idle, a hand-off
# between threads and a synced write (bench/wake.rs, ~15 s). chinwag
# wakes from idle twice per message where a server that stores nothing
# wakes once, so on a VM whose speed drifts these lines say which phase
# a run caught. Built with the release binaries; with NO_BUILD=1, run
# only if a build is already there.
if want classic; then
    WAKE_BIN=
    if [[ ${NO_BUILD:-0} != 1 ]]; then
        WAKE_BIN=$(cd "$CW_ROOT" && cargo bench -q --bench wake --no-run --message-format=json 2>/dev/null |
            grep -o '"executable":"[^"]*wake[^"]*"' | cut -d'"' -f4 | tail -1) || true
    else
        WAKE_BIN=$(ls -t "$CW_TARGET"/release/deps/wake-* 2>/dev/null | grep -v '\.d$' | head -1) || true
    fi
    if [[ -x $WAKE_BIN ]]; then
        cw_log "this machine's wake-up and synced-write costs (bench/wake.rs)"
        WAKE_DIR=$CW_TMP "$WAKE_BIN" --bench >"$OUT/wake.txt" 2>&1 || cw_log "bench/wake.rs failed: see $OUT/wake.txt"
    fi
fi

PEER="$CW_ROOT/loadtest/peers/socketio"
SIO=0
if ! want classic; then
    : # The Socket.IO peer is only in the classic suite.
elif command -v node >/dev/null && command -v npm >/dev/null; then
    if [[ ! -d $PEER/node_modules ]]; then
        cw_log "installing the Socket.IO peer"
        (cd "$PEER" && { npm ci --no-audit --no-fund --loglevel=error || npm install --no-audit --no-fund --loglevel=error; }) >&2
    fi
    SIO=1
else
    cw_log "node/npm missing: the Socket.IO column stays empty"
fi
UWS=0
if want classic; then
    if [[ -n ${UWS_DIR:-} && ${NO_BUILD:-0} != 1 ]]; then
        cw_log "building the µWebSockets peer from $UWS_DIR"
        "$CW_ROOT/loadtest/peers/uws/build.sh" >/dev/null 2>"$OUT/uws-build.log" ||
            cw_log "the µWebSockets peer did not build: see $OUT/uws-build.log"
    fi
    if [[ -x $CW_UWS ]]; then
        UWS=1
    else
        cw_log "no µWebSockets peer ($CW_UWS): its column stays empty"
    fi
fi

LOAD="$(cw_pin 1) $CW_LOAD"

# --- summary (plain awk over the JSON lines: no jq or python needed) ---

# field FILE NAME [SCENARIO]: the values of NAME, one a line (lines of
# SCENARIO only, if given).
field() {
    [[ -f $1 ]] || return 0
    { grep -h "\"scenario\":\"${3:-}" "$1" || true; } | { grep -o "\"$2\":[^,}]*" || true; } |
        cut -d: -f2- | tr -d '"'
}
median() {
    sort -g | awk '{a[NR] = $1} END {
        if (NR == 0) print "-"; else if (NR % 2) print a[(NR + 1) / 2];
        else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}
sum() { awk '{s += $1} END {print NR ? s : "-"}'; }
ms() { awk '{print ($1 == "-" || $1 == "") ? "-" : sprintf("%.2f", $1 / 1000)}'; }
cell() { local v; v=$(cat); echo "${v:--}"; }

if want classic; then
SHAPE=(--conns 1000 --rooms 10 --publishers 10)

# start_server SIDE NAME: a fresh server of SIDE (chinwag|socketio|uws) as NAME.
start_server() { cw_start "$1" "$2" 0; }

# load SIDE NAME SCENARIO [flags...]: chinwag-load against server NAME,
# JSON lines appended to OUT/SCENARIO-SIDE.jsonl, progress to its .log.
load() {
    local side=$1 name=$2 scenario=$3
    shift 3
    local addr="${name}_ADDR" pid="${name}_PID" proto=$side title=()
    # The µWebSockets peer speaks chinwag's JSON dialect; its plots say
    # whose they are.
    [[ $side == uws ]] && proto=chinwag title=(--server-name µWebSockets)
    $LOAD "$scenario" --proto "$proto" "${title[@]}" --target "${!addr}" --server-pid "${!pid}" --json "$@" \
        >>"$OUT/$scenario-$side.jsonl" 2>>"$OUT/$scenario-$side.log" ||
        cw_log "$side $scenario failed: see $OUT/$scenario-$side.log"
}

SIDES=(chinwag)
((SIO)) && SIDES+=(socketio)
((UWS)) && SIDES+=(uws)
# fanout in rounds, every side once per round on a fresh server: a VM's
# speed drifts over minutes, and rounds put each side through the same
# phases (the summary's ratio row pairs the sides round by round).
for ((i = 1; i <= RUNS; i++)); do
    for side in "${SIDES[@]}"; do
        cw_log "$side: fanout, round $i of $RUNS"
        start_server "$side" SRV
        load "$side" SRV fanout "${SHAPE[@]}" --rate 200 --warmup 2s --duration 10s --drain 2s
        cw_stop "$SRV_PID"
    done
done

for side in "${SIDES[@]}"; do
    cw_log "$side: sweep"
    start_server "$side" SRV
    load "$side" SRV sweep "${SHAPE[@]}" --start-rate 200 --max-steps 8 --warmup 1s \
        --step-duration 3s --drain 1s --p99-limit 50ms --plot "$OUT/sweep-$side.svg"
    cw_stop "$SRV_PID"

    cw_log "$side: idle 10000"
    start_server "$side" SRV
    load "$side" SRV idle --conns 10000 --rooms 100 --hold 3s --setup-timeout 120s
    cw_stop "$SRV_PID"
done

# The same shape on a cluster: two chinwag nodes and their Redis, all on
# core 0 (so CPU per delivery counts the cluster's whole cost), clients of
# every room spread over both nodes; 200 msg/s and 2000 msg/s. A fresh
# cluster per rate, as the single node is fresh per scenario.
if cw_need_redis; then
    for rate in 200 2000; do
        cw_log "chinwag cluster: 2 nodes + redis at $rate msg/s"
        cw_start_redis 0
        cw_start_chinwag N1 0 --redis "$REDIS_URL"
        cw_start_chinwag N2 0 --redis "$REDIS_URL"
        for ((i = 1; i <= RUNS; i++)); do
            $LOAD cluster --target "$N1_ADDR,$N2_ADDR" --server-pid "$N1_PID,$N2_PID,$REDIS_PID" --json \
                "${SHAPE[@]}" --rate "$rate" --warmup 2s --duration 10s --drain 2s \
                >>"$OUT/cluster-$rate.jsonl" 2>>"$OUT/cluster-$rate.log" ||
                cw_log "cluster at $rate failed: see $OUT/cluster-$rate.log"
        done
        cw_stop "$N1_PID"
        cw_stop "$N2_PID"
        cw_stop "$REDIS_PID"
        # The single node at the same rate, in the same run, for the side-by-side.
        if ((rate != 200)); then
            start_server chinwag SRV
            for ((i = 1; i <= RUNS; i++)); do
                load chinwag SRV fanout "${SHAPE[@]}" --rate "$rate" --warmup 2s --duration 10s --drain 2s
            done
            cw_stop "$SRV_PID"
            mv "$OUT/fanout-chinwag.jsonl" "$OUT/fanout-chinwag.tmp"
            grep -h '"rate":200[,.]' "$OUT/fanout-chinwag.tmp" >"$OUT/fanout-chinwag.jsonl" || true
            grep -hv '"rate":200[,.]' "$OUT/fanout-chinwag.tmp" >"$OUT/single-$rate.jsonl" || true
            rm -f "$OUT/fanout-chinwag.tmp"
        fi
    done
fi

row() {
    local label=$1 c s=- u=-
    c=$($2 chinwag | cell)
    if ((SIO)); then s=$($2 socketio | cell); fi
    if ((UWS)); then u=$($2 uws | cell); fi
    printf '  %-34s %22s %22s %22s\n' "$label" "$c" "$s" "$u"
}
f_cpu() { field "$OUT/fanout-$1.jsonl" server_cpu_us_per_delivery | median; }
# f_ratio SIDE: the median over rounds of SIDE's CPU per delivery over
# µWebSockets' in the same round.
f_ratio() {
    ((UWS)) || return 0
    paste <(field "$OUT/fanout-$1.jsonl" server_cpu_us_per_delivery) \
        <(field "$OUT/fanout-uws.jsonl" server_cpu_us_per_delivery) |
        awk 'NF == 2 && $2 > 0 {printf "%.3f\n", $1 / $2}' | median
}
f_p50() { field "$OUT/fanout-$1.jsonl" lat_p50_us | median | ms; }
f_p99() { field "$OUT/fanout-$1.jsonl" lat_p99_us | median | ms; }
f_lost() { field "$OUT/fanout-$1.jsonl" lost | sum; }
f_dup() { field "$OUT/fanout-$1.jsonl" duplicated | sum; }
f_runs() { field "$OUT/fanout-$1.jsonl" lost | wc -l; }
s_rate() { field "$OUT/sweep-$1.jsonl" last_good_rate sweep_result; }
s_dps() { field "$OUT/sweep-$1.jsonl" last_good_deliveries_per_s sweep_result; }
s_p99() { field "$OUT/sweep-$1.jsonl" last_good_p99_us sweep_result | ms; }
s_scpu() { field "$OUT/sweep-$1.jsonl" last_good_server_cpu_pct sweep_result; }
s_hcpu() { field "$OUT/sweep-$1.jsonl" last_good_harness_cpu_pct sweep_result; }
s_stop() { { grep -ho '"stopped_by":"[^"]*"' "$OUT/sweep-$1.jsonl" 2>/dev/null || true; } | cut -d'"' -f4; }
c_med() { field "$OUT/$1.jsonl" "$2" | median; }
cluster_rows() {
    local rate=$1 single=$2
    printf '  %-34s %22s %22s\n' "deliveries/s" "$(c_med "$single" deliveries_per_s | cell)" "$(c_med "cluster-$rate" deliveries_per_s | cell)"
    printf '  %-34s %22s %22s\n' "server CPU us per delivery" "$(c_med "$single" server_cpu_us_per_delivery | cell)" "$(c_med "cluster-$rate" server_cpu_us_per_delivery | cell)"
    printf '  %-34s %22s %22s\n' "p50 latency ms" "$(c_med "$single" lat_p50_us | ms | cell)" "$(c_med "cluster-$rate" lat_p50_us | ms | cell)"
    printf '  %-34s %22s %22s\n' "p99 latency ms" "$(c_med "$single" lat_p99_us | ms | cell)" "$(c_med "cluster-$rate" lat_p99_us | ms | cell)"
    printf '  %-34s %22s %22s\n' "lost / duplicated (all runs)" \
        "$(field "$OUT/$single.jsonl" lost | sum)/$(field "$OUT/$single.jsonl" duplicated | sum)" \
        "$(field "$OUT/cluster-$rate.jsonl" lost | sum)/$(field "$OUT/cluster-$rate.jsonl" duplicated | sum)"
}
i_setup() { field "$OUT/idle-$1.jsonl" setup_s; }
i_cps() { field "$OUT/idle-$1.jsonl" connects_per_s; }
i_mem() { field "$OUT/idle-$1.jsonl" server_rss_per_conn_bytes; }
i_disc() { field "$OUT/idle-$1.jsonl" disconnects; }

{
    if [[ -s $OUT/wake.txt ]]; then
        echo "this machine during the run (bench/wake.rs, CPU per event)"
        sed 's/^/  /' "$OUT/wake.txt"
    fi
    printf '%-36s %22s %22s %22s\n' "" chinwag socket.io uwebsockets
    echo "fanout 1000 conns/10 rooms/10 pubs/200 msg/s, median of runs"
    row "runs" f_runs
    row "server CPU us per delivery" f_cpu
    row "CPU ratio to uwebsockets, by round" f_ratio
    row "p50 latency ms" f_p50
    row "p99 latency ms" f_p99
    row "lost (all runs)" f_lost
    row "duplicated (all runs)" f_dup
    echo "sweep from 200 msg/s, doubling, p99 limit 50 ms: last good step"
    row "rate msg/s" s_rate
    row "deliveries/s" s_dps
    row "p99 ms" s_p99
    row "server CPU %" s_scpu
    row "harness CPU %" s_hcpu
    row "stopped by (next step)" s_stop
    echo "idle 10000 conns/100 rooms"
    row "setup s" i_setup
    row "connects/s" i_cps
    row "server RSS per connection, bytes" i_mem
    row "disconnects" i_disc
    if [[ -f $OUT/cluster-200.jsonl ]]; then
        printf '%-36s %22s %22s\n' "" "single node" "2 nodes + redis"
        echo "same shape at 200 msg/s (median of runs; cluster CPU = both nodes + redis)"
        cluster_rows 200 fanout-chinwag
        echo "same shape at 2000 msg/s"
        cluster_rows 2000 single-2000
    fi
    echo "results: $OUT"
} | tee "$OUT/summary.txt"
fi

# --- team chat: events and search ---
if want events; then
    EVENT_RUNS=${EVENT_RUNS:-3}
    SEARCH_MESSAGES=${SEARCH_MESSAGES:-1000000}
    SEARCH_RATE=${SEARCH_RATE:-2500}
    INGEST_RATES=${INGEST_RATES:-10000 2000}
    INGEST_RUNS=${INGEST_RUNS:-2}

    cw_log "events: mixed, pure and 10% reactions+edits, x$EVENT_RUNS each"
    cw_start_chinwag SRV 0
    for ((i = 1; i <= EVENT_RUNS; i++)); do
        for mix in 0 0.1; do
            $LOAD mixed --target "$SRV_ADDR" --server-pid "$SRV_PID" --json "${SHAPE[@]}" \
                --rate 200 --warmup 2s --duration 10s --drain 2s --mix "$mix" --reply-weight 0 \
                >>"$OUT/mixed-$mix.jsonl" 2>>"$OUT/mixed-$mix.log" ||
                cw_log "mixed --mix $mix failed: see $OUT/mixed-$mix.log"
        done
    done
    cw_stop "$SRV_PID"

    for rate in $INGEST_RATES; do
        cw_log "events: ingest at $rate msg/s, search on and off, x$INGEST_RUNS each"
        for ((i = 1; i <= INGEST_RUNS; i++)); do
            for side in on off; do
                if [[ $side == off ]]; then
                    CHINWAG_SEARCH=off cw_start_chinwag SRV 0
                else
                    cw_start_chinwag SRV 0
                fi
                $LOAD ingest --target "$SRV_ADDR" --server-pid "$SRV_PID" --json --rooms 100 \
                    --rate "$rate" --warmup 2s --duration 10s --drain 2s --catchup-timeout 120s \
                    >>"$OUT/ingest-$rate-$side.jsonl" 2>>"$OUT/ingest-$rate-$side.log" ||
                    cw_log "ingest at $rate (search $side) failed: see $OUT/ingest-$rate-$side.log"
                cw_stop "$SRV_PID"
            done
        done
    done

    cw_log "events: search, $SEARCH_MESSAGES messages in 1000 rooms at $SEARCH_RATE/s (progress in $OUT/search.log)"
    cw_start_chinwag SRV 0 --max-rooms-per-user 1000000
    $LOAD search --target "$SRV_ADDR" --server-pid "$SRV_PID" --data-dir "$SRV_DATA" --json \
        --messages "$SEARCH_MESSAGES" --rooms 1000 --load-rate "$SEARCH_RATE" --drain 10s \
        --queries 2000 --catchup-timeout 180s \
        >>"$OUT/search.jsonl" 2>>"$OUT/search.log" ||
        cw_log "search failed: see $OUT/search.log"
    cw_stop "$SRV_PID"

    # null: not measured (no acks in the window, no index): not a 0.
    med() { field "$OUT/$1.jsonl" "$2" | { grep -vx null || true; } | median; }
    two() { printf '  %-40s %16s %16s\n' "$1" "$(med "$2" "$4" | $5 | cell)" "$(med "$3" "$4" | $5 | cell)"; }
    asis() { cat; }
    {
        printf '%-42s %16s %16s\n' "" "pure" "10% react+edit"
        echo "mixed 1000 conns/10 rooms/10 pubs/200 msg/s, median of $EVENT_RUNS"
        two "deliveries/s (all events)" mixed-0 mixed-0.1 deliveries_per_s asis
        two "server CPU us per delivery" mixed-0 mixed-0.1 server_cpu_us_per_delivery asis
        two "harness CPU us per delivery" mixed-0 mixed-0.1 harness_cpu_us_per_delivery asis
        two "p50 latency ms (messages, edits)" mixed-0 mixed-0.1 lat_p50_us ms
        two "p99 latency ms (messages, edits)" mixed-0 mixed-0.1 lat_p99_us ms
        two "ack p99 ms" mixed-0 mixed-0.1 ack_p99_us ms
        printf '  %-40s %16s %16s\n' "lost (all runs)" "$(field "$OUT/mixed-0.jsonl" lost | sum)" "$(field "$OUT/mixed-0.1.jsonl" lost | sum)"
        printf '%-42s %16s %16s\n' "" "search on" "search off"
        for rate in $INGEST_RATES; do
            echo "ingest $rate msg/s, 100 rooms, median of $INGEST_RUNS"
            two "acked/s" "ingest-$rate-on" "ingest-$rate-off" acked_per_s asis
            two "ack p50 ms" "ingest-$rate-on" "ingest-$rate-off" ack_p50_us ms
            # p90: one VM pause of ~100 ms decides a 10 s run's p99, not its
            # p90 (BENCHMARKS.md, tenth session).
            two "ack p90 ms" "ingest-$rate-on" "ingest-$rate-off" ack_p90_us ms
            two "ack p99 ms" "ingest-$rate-on" "ingest-$rate-off" ack_p99_us ms
            two "ack max ms" "ingest-$rate-on" "ingest-$rate-off" ack_max_us ms
            two "server CPU %" "ingest-$rate-on" "ingest-$rate-off" server_cpu_pct asis
            two "server CPU us per message (window)" "ingest-$rate-on" "ingest-$rate-off" server_cpu_us_per_msg asis
            two "server CPU us per stored msg (to indexed)" "ingest-$rate-on" "ingest-$rate-off" server_cpu_us_per_stored_to_indexed asis
            two "harness CPU us per message" "ingest-$rate-on" "ingest-$rate-off" harness_cpu_us_per_msg asis
            two "index catch-up s" "ingest-$rate-on" "ingest-$rate-off" index_catchup_s asis
        done
        echo "search: $SEARCH_MESSAGES messages, 1000 rooms, member of all"
        for k in loaded load_ack_p50_us load_ack_p99_us load_server_cpu_us_per_msg catchup_s one_word_p50_us one_word_p99_us two_word_p50_us \
            two_word_p99_us one_word_mean_results two_word_mean_results index_bytes_per_message \
            server_cpu_us_per_query; do
            printf '  %-40s %16s\n' "$k" "$(field "$OUT/search.jsonl" "$k" | cell)"
        done
        echo "results: $OUT"
    } | tee "$OUT/events-summary.txt"
fi

# --- storage at scale ---
if want scale; then
    SCALE_EVENTS=${SCALE_EVENTS:-10000000}
    SCALE_SEARCH=${SCALE_SEARCH:-false}
    SCALE_CHURN=${SCALE_CHURN:-100000}
    SCALE_BACKUP=${SCALE_BACKUP:-true}
    SCALE_DIR=${SCALE_DIR:-$CW_TMP/scale}
    SCALE_WAIT=${SCALE_WAIT:-60s}
    SCALE_SERVER_CORE=${SCALE_SERVER_CORE:-0}
    mkdir -p "$SCALE_DIR"

    cw_log "scale: $SCALE_EVENTS events, search $SCALE_SEARCH (progress in $OUT/scale.log)"
    # The harness pins the server itself (--server-core): it times the
    # server from its spawn to the first accepted connection.
    $LOAD scale --data-dir "$SCALE_DIR/data" --server-bin "$CW_SERVER" --server-core "$SCALE_SERVER_CORE" \
        --events "$SCALE_EVENTS" --search "$SCALE_SEARCH" --churn "$SCALE_CHURN" \
        --backup "$SCALE_BACKUP" --reclaim-wait "$SCALE_WAIT" --json \
        >>"$OUT/scale.jsonl" 2>>"$OUT/scale.log" ||
        cw_log "scale failed: see $OUT/scale.log and $SCALE_DIR/data.server.log"

    sv() { field "$OUT/scale.jsonl" "$1" | tail -1 | cell; }
    mib() { awk '{print ($1 == "-" || $1 == "") ? "-" : sprintf("%.1f", $1 / 1048576)}'; }
    kib() { awk '{print ($1 == "-" || $1 == "") ? "-" : sprintf("%.1f", $1 / 1024)}'; }
    row() { printf '  %-44s %14s %s\n' "$1" "$2" "${3:-}"; }
    {
        echo "storage at scale: $(sv events) events, $(sv rooms) rooms, $(sv users) users, search $(sv search)"
        row "disk bytes per event (without search/)" "$(sv disk_bytes_per_event)"
        row "disk MiB" "$(sv disk_bytes | mib)"
        row "start to first accepted connection s" "$(sv start_to_first_accept_s)" "(target < 5)"
        row "RSS after start MiB" "$(sv rss_after_start_kib | kib)"
        row "history p50 / p99 ms" "$(sv history_p50_us | ms) / $(sv history_p99_us | ms)" "(target p99 < 1)"
        row "history server / harness CPU us per page" "$(sv history_server_cpu_us) / $(sv history_harness_cpu_us)"
        row "hello of a user in $(sv hello_rooms) rooms p50 / p99 ms" "$(sv hello_p50_us | ms) / $(sv hello_p99_us | ms)" "(target < 5)"
        row "hello first after start ms" "$(sv hello_first_us | ms)"
        row "hello server / harness CPU us per hello" "$(sv hello_server_cpu_us) / $(sv hello_harness_cpu_us)"
        row "RSS after reads MiB" "$(sv rss_after_reads_kib | kib)"
        row "churn edits / deletes / errors" "$(sv churn_edits) / $(sv churn_deletes) / $(sv churn_errors)"
        row "churn ack p50 / p99 ms" "$(sv churn_ack_p50_us | ms) / $(sv churn_ack_p99_us | ms)"
        row "churn server / harness CPU us per op" "$(sv churn_server_cpu_us) / $(sv churn_harness_cpu_us)"
        row "disk MiB before / after churn" "$(sv churn_disk_before | mib) / $(sv churn_disk_after | mib)"
        row "disk growth bytes per churn op" "$(sv churn_growth_bytes_per_op)"
        row "disk MiB after stop" "$(sv disk_after_stop | mib)"
        row "disk MiB of a backup copy" "$(sv disk_backup_copy | mib)"
        row "restart to first accepted connection s" "$(sv restart_to_first_accept_s)"
        row "restart after kill -9 s" "$(sv restart_after_kill_s)"
        row "disk MiB after restart / after idle" "$(sv disk_after_restart | mib) / $(sv disk_after_wait | mib)"
        echo "results: $OUT"
    } | tee "$OUT/scale-summary.txt"
fi
