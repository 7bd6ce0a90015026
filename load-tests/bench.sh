#!/usr/bin/env bash
# Budget run: each scenario against a fresh broker, the broker pinned to core 0
# and the harness to core 1. Loopback only; every run is bounded (--duration).
#
#   cargo build --release --workspace --bins
#   load-tests/bench.sh [fanout|chat|idle|idle50k|churn ...]   (default: all)
#
# Env: BROKER, LOAD (binaries; default target/release/...), OUT (report folder),
#      ENCODING (json|msgpack), DURABILITY (fsync|os|memory; default fsync, the
#      broker's default), SWITCHBOARD_JWT_SECRET, RUST_LOG (broker; default warn).
#
# The broker runs with $OUT/bench.toml: the chosen durability, per-session
# rate limits off (a load test sends faster than one person) and admission
# limits raised above the run's connection count (all of them come from a
# few loopback addresses). Each run gets a fresh data directory, removed after.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BROKER=${BROKER:-$TARGET/release/switchboard}
LOAD=${LOAD:-$TARGET/release/switchboard-load}
OUT=${OUT:-/tmp/switchboard-bench}
ENCODING=${ENCODING:-json}
DURABILITY=${DURABILITY:-fsync}
export SWITCHBOARD_JWT_SECRET=${SWITCHBOARD_JWT_SECRET:-bench-secret-$$}
export RUST_LOG=${RUST_LOG:-warn}
mkdir -p "$OUT"
cat >"$OUT/bench.toml" <<TOML
durability = "$DURABILITY"

[rate_limits]
enabled = false

[admission]
max_connections = 200000
max_connections_per_ip = 200000
TOML

# Both processes need one descriptor per connection (and the harness raises
# its own soft limit); raise ours as far as allowed so the broker inherits it.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

BPID=""
stop_broker() {
    if [ -n "$BPID" ] && kill -0 "$BPID" 2>/dev/null; then
        kill "$BPID" 2>/dev/null || true
        wait "$BPID" 2>/dev/null || true
    fi
    BPID=""
    [ -n "${DATA:-}" ] && rm -rf "$DATA"
    DATA=""
}
trap stop_broker EXIT INT TERM

start_broker() {
    : >"$OUT/broker.out"
    DATA="$OUT/data.$$"
    rm -rf "$DATA"
    taskset -c 0 "$BROKER" --config "$OUT/bench.toml" --listen 127.0.0.1:0 --data-dir "$DATA" \
        >"$OUT/broker.out" 2>"$OUT/broker.err" &
    BPID=$!
    for _ in $(seq 100); do
        grep -q 'switchboard listening on' "$OUT/broker.out" && break
        sleep 0.1
    done
    ADDR=$(awk '/switchboard listening on/{print $4}' "$OUT/broker.out")
    if [ -z "$ADDR" ]; then
        echo "broker did not start:" >&2
        cat "$OUT/broker.err" >&2
        exit 1
    fi
    URL="ws://$ADDR/ws"
}

# run NAME ARGS...: fresh broker, one scenario, human table on stdout and
# JSON in $OUT/NAME.json.
run() {
    local name=$1
    shift
    start_broker
    echo "== $name: switchboard-load $* (broker pid $BPID, $URL; load average $(cut -d' ' -f1-3 /proc/loadavg))"
    taskset -c 1 "$LOAD" --url "$URL" --server-pid "$BPID" --encoding "$ENCODING" \
        --json-out "$OUT/$name.json" "$@" || echo "(exit status $?)"
    stop_broker
    echo
}

scenarios=("$@")
[ ${#scenarios[@]} -eq 0 ] && scenarios=(fanout chat idle idle50k churn)
echo "machine: $(nproc) cores, $(uname -sr), $(date -u +%Y-%m-%dT%H:%M:%SZ), encoding $ENCODING, durability $DURABILITY"
for s in "${scenarios[@]}"; do
    case $s in
    fanout) run fanout --duration 60 fanout --observers 1000 --messages 5000 --body-bytes 200 --window 32 ;;
    chat) run chat --duration 60 chat --engagements 500 --rate 20000 --typing-share 0.1 --run 10 ;;
    idle) run idle10k --duration 60 idle --connections 10000 --hold 10 ;;
    idle50k)
        if [ "$(ulimit -n)" -lt 50300 ]; then
            # Not enough descriptors for 50,000 sessions: measure the most
            # this machine allows instead, and say so.
            n=$(($(ulimit -n) - 500))
            echo "== idle50k: the fd limit here is $(ulimit -n) (< 50,300 needed by each process); running $n instead"
            run "idle$n" --duration 120 idle --connections "$n" --hold 10
        else
            run idle50k --duration 120 idle --connections 50000 --hold 10
        fi
        ;;
    churn) run churn --duration 60 churn --rate 6000 --total 30000 --concurrency 2000 ;;
    *) echo "unknown scenario $s" >&2; exit 2 ;;
    esac
done
