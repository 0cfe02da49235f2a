# lib.sh: shell helpers shared by loadtest/bench.sh and loadtest/cluster.sh.
#
# Owns: finding the workspace and its binaries, free loopback ports, CPU
# pinning, starting chinwag nodes, redis-server, the Socket.IO peer and the
# µWebSockets peer on 127.0.0.1 and waiting until they listen, and stopping
# every process they started (and removing their temp dirs) on exit. Source
# it; it sets no shell options of its own.

CW_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CW_TARGET=${CARGO_TARGET_DIR:-$CW_ROOT/target}
CW_SERVER=${CHINWAG_BIN:-$CW_TARGET/release/chinwag}
CW_LOAD=${CHINWAG_LOAD_BIN:-$CW_TARGET/release/chinwag-load}
CW_UWS=${UWS_BIN:-$CW_TARGET/peers/uws-server}
CW_TMP=$(mktemp -d "${TMPDIR:-/tmp}/chinwag-load.XXXXXX")
CW_PIDS=()

cw_log() { printf '%s\n' "$*" >&2; }

# Stops what we started, newest first, then removes the temp dir.
cw_cleanup() {
    local i
    for ((i = ${#CW_PIDS[@]} - 1; i >= 0; i--)); do
        kill "${CW_PIDS[i]}" 2>/dev/null || true
    done
    for ((i = ${#CW_PIDS[@]} - 1; i >= 0; i--)); do
        wait "${CW_PIDS[i]}" 2>/dev/null || true
    done
    CW_PIDS=()
    rm -rf "$CW_TMP"
}

# Stops one process we started (and forgets it, so its pid, once reused by
# the system, is never signalled again).
cw_stop() {
    local keep=() p
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    for p in "${CW_PIDS[@]}"; do
        [[ $p == "$1" ]] || keep+=("$p")
    done
    CW_PIDS=("${keep[@]}")
}

# `taskset -c N` where pinning makes sense (taskset present, N exists); N
# may be a list or range (`1-15`), whose last core must exist.
cw_pin() {
    if command -v taskset >/dev/null && ((${1##*[-,]} < $(nproc))); then
        echo "taskset -c $1"
    fi
}

# A TCP port nobody listens on at 127.0.0.1 right now.
cw_free_port() {
    local p
    for _ in $(seq 200); do
        p=$((20000 + RANDOM % 30000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return 0
        fi
    done
    cw_log "no free port found"
    return 1
}

# Waits (10 s at most) for `listening on http://ADDR` in log $1; prints ADDR.
cw_wait_listening() {
    local addr
    for _ in $(seq 100); do
        addr=$(grep -o 'listening on http://[0-9.:]*' "$1" 2>/dev/null | head -1 | sed 's#.*http://##')
        if [[ -n $addr ]]; then
            echo "$addr"
            return 0
        fi
        sleep 0.1
    done
    cw_log "no 'listening on' line in $1:"
    tail -5 "$1" >&2
    return 1
}

# cw_start_chinwag NAME CORE [chinwag serve flags...]: a node on a free port
# with a fresh data dir, pinned to CORE; sets NAME_PID, NAME_ADDR and
# NAME_DATA (the data dir); one event loop unless CW_THREADS says more.
# Environment set for the call (e.g. CHINWAG_SEARCH=off cw_start_chinwag
# ...) reaches the server.
cw_start_chinwag() {
    local name=$1 core=$2
    shift 2
    # A new directory per start: a reused log would still hold the address
    # of the server started before under the same name.
    local dir
    dir=$(mktemp -d "$CW_TMP/$name.XXXX")
    # One secret for every node: cluster payloads are sealed with a key
    # derived from it.
    CHINWAG_SECRET=${CHINWAG_SECRET:-chinwag-load-harness-shared-secret-0001} \
        RUST_LOG=${RUST_LOG:-info} $(cw_pin "$core") "$CW_SERVER" serve --listen 127.0.0.1:0 \
        --data-dir "$dir/data" --open --rate 1000000 --burst 1000000 --threads "${CW_THREADS:-1}" \
        --max-connections 1000000 --max-conns-per-ip 1000000 --max-conns-per-user 1000000 "$@" \
        2>"$dir/log" &
    local pid=$!
    CW_PIDS+=("$pid")
    printf -v "${name}_PID" '%s' "$pid"
    printf -v "${name}_DATA" '%s' "$dir/data"
    printf -v "${name}_ADDR" '%s' "$(cw_wait_listening "$dir/log")"
}

# cw_start_peer NAME CORE COMMAND...: a peer server that listens on PORT
# (0 here: any free port) and prints `listening on http://ADDR` on stderr,
# pinned to CORE; sets NAME_PID and NAME_ADDR.
cw_start_peer() {
    local name=$1 core=$2
    shift 2
    local dir
    dir=$(mktemp -d "$CW_TMP/$name.XXXX")
    env PORT=0 $(cw_pin "$core") "$@" 2>"$dir/log" &
    local pid=$!
    CW_PIDS+=("$pid")
    printf -v "${name}_PID" '%s' "$pid"
    printf -v "${name}_ADDR" '%s' "$(cw_wait_listening "$dir/log")"
}

# cw_start_socketio NAME CORE [env assignments...]: the Socket.IO peer.
cw_start_socketio() {
    local name=$1 core=$2
    shift 2
    cw_start_peer "$name" "$core" env "$@" node "$CW_ROOT/loadtest/peers/socketio/server.js"
}

# cw_start_uws NAME CORE: the µWebSockets peer (UWS_BIN, default
# target/peers/uws-server, built by peers/uws/build.sh).
cw_start_uws() {
    cw_start_peer "$1" "$2" "$CW_UWS"
}

# cw_start SIDE NAME CORE: a fresh server of SIDE (chinwag, socketio or
# uws) as NAME, pinned to CORE, with each one's defaults.
cw_start() {
    case $1 in
    chinwag) cw_start_chinwag "$2" "$3" ;;
    socketio) cw_start_socketio "$2" "$3" ;;
    uws) cw_start_uws "$2" "$3" ;;
    *) cw_log "unknown server $1 (chinwag, socketio, uws)"; return 2 ;;
    esac
}

# Installs redis-server if it is missing (Debian/Ubuntu, as root).
cw_need_redis() {
    command -v redis-server >/dev/null && return 0
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        cw_log "installing redis-server"
        apt-get install -y redis-server >/dev/null || { apt-get update >/dev/null && apt-get install -y redis-server >/dev/null; }
    fi
    command -v redis-server >/dev/null || { cw_log "redis-server is missing"; return 1; }
}

# cw_start_redis [CORE]: a throwaway redis-server (no persistence) on a
# free port, pinned to CORE if given; sets REDIS_PID and REDIS_URL.
cw_start_redis() {
    cw_need_redis || return 1
    local port
    port=$(cw_free_port) || return 1
    ${1:+$(cw_pin "$1")} redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
        --dir "$CW_TMP" --daemonize no >"$CW_TMP/redis.log" 2>&1 &
    REDIS_PID=$!
    CW_PIDS+=("$REDIS_PID")
    REDIS_URL="redis://127.0.0.1:$port"
    for _ in $(seq 50); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    cw_log "redis-server did not start:"
    tail -5 "$CW_TMP/redis.log" >&2
    return 1
}
