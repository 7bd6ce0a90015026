# Sourced by bench.sh, compare.sh and saturation.sh: their common defaults,
# and starting and stopping one server under test, pinned to core 0, on a
# loopback port the kernel picks.
#
# Needs ROOT (the repository) and OUT (a folder for its output, made here).
# BROKER and LOAD default to this checkout's release builds. start_server sets
# SPID (its PID) and URL (its WebSocket URL).

TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BROKER=${BROKER:-$TARGET/release/switchboard}
LOAD=${LOAD:-$TARGET/release/switchboard-load}
export SWITCHBOARD_JWT_SECRET=${SWITCHBOARD_JWT_SECRET:-bench-secret-$$}
export RUST_LOG=${RUST_LOG:-warn}
mkdir -p "$OUT"
# Both processes need one descriptor per connection (and the harness raises
# its own soft limit); raise ours as far as allowed so the broker inherits it.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# write_broker_config DURABILITY FILE: the broker's load-test config. It keeps
# the chosen durability but switches off what would stop a load test as
# hostile traffic: per-session rate limits, and admission limits below the
# run's connection count (all of them come from a few loopback addresses).
write_broker_config() {
    cat >"$2" <<TOML
durability = "$1"

[rate_limits]
enabled = false

[admission]
max_connections = 200000
max_connections_per_ip = 200000
TOML
}

# ensure_peer: the uWebSockets.js peer's npm packages, exactly as locked.
ensure_peer() {
    local dir="$ROOT/load-tests/peers/uws"
    if [ ! -d "$dir/node_modules/@trufflesuite/uws-js-unofficial" ]; then
        echo "installing the uws peer's npm packages (npm ci)" >&2
        (cd "$dir" && npm ci --no-audit --no-fund >&2)
    fi
}

# split_build ENTRY: an entry of SERVERS may end in @BINARY, a build of its
# own. Sets `entry` to what comes before the @, `bin` to the binary ($BROKER
# without one) and `tag` to "-FOLDER", the binary's folder name, for labels
# ("" without one).
split_build() {
    entry=${1%%@*}
    bin=$BROKER
    tag=""
    if [[ $1 == *@* ]]; then
        bin=${1#*@}
        tag="-$(basename "$(dirname "$bin")")"
    fi
}

# round_order ROUND ENTRY...: sets `order` to the entries, reversed in even
# rounds, so that no server always runs first.
round_order() {
    local round=$1 i
    shift
    order=("$@")
    if [ $((round % 2)) -eq 0 ]; then
        order=()
        for ((i = $#; i >= 1; i--)); do order+=("${!i}"); done
    fi
}

SPID=""
DATA=""

stop_server() {
    if [ -n "$SPID" ] && kill -0 "$SPID" 2>/dev/null; then
        kill "$SPID" 2>/dev/null || true
        wait "$SPID" 2>/dev/null || true
    fi
    SPID=""
    [ -n "$DATA" ] && rm -rf "$DATA"
    DATA=""
}

# start_server KIND [DURABILITY]: KIND is switchboard (a fresh data directory,
# removed by stop_server) or uws.
start_server() {
    local kind=$1 durability=${2:-${DURABILITY:-fsync}}
    : >"$OUT/server.out"
    case $kind in
    switchboard)
        write_broker_config "$durability" "$OUT/bench.toml"
        DATA="$OUT/data.$$"
        rm -rf "$DATA"
        taskset -c 0 "$BROKER" --config "$OUT/bench.toml" --listen 127.0.0.1:0 \
            --data-dir "$DATA" >"$OUT/server.out" 2>"$OUT/server.err" &
        ;;
    uws)
        ensure_peer
        taskset -c 0 node "$ROOT/load-tests/peers/uws/server.js" --port 0 \
            >"$OUT/server.out" 2>"$OUT/server.err" &
        ;;
    *)
        echo "unknown server $kind (switchboard or uws)" >&2
        return 2
        ;;
    esac
    SPID=$!
    local addr=""
    for _ in $(seq 100); do
        addr=$(awk '/ listening on /{print $4; exit}' "$OUT/server.out")
        [ -n "$addr" ] && break
        kill -0 "$SPID" 2>/dev/null || break
        sleep 0.1
    done
    if [ -z "$addr" ]; then
        echo "$kind did not start:" >&2
        cat "$OUT/server.err" >&2
        return 1
    fi
    URL="ws://$addr/ws"
}
