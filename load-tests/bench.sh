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
# The broker runs with $OUT/bench.toml (servers.sh): the chosen durability,
# per-session rate limits off (a load test sends faster than one person) and
# admission limits raised above the run's connection count (all of them come
# from a few loopback addresses). Each run gets a fresh data directory,
# removed after. The same scenarios against the uWebSockets.js comparison
# peer, alternated with the broker: compare.sh.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-/tmp/switchboard-bench}
ENCODING=${ENCODING:-json}
DURABILITY=${DURABILITY:-fsync}
# shellcheck source=servers.sh
. "$ROOT/load-tests/servers.sh"

trap stop_server EXIT INT TERM

# run NAME ARGS...: fresh broker, one scenario, human table on stdout and
# JSON in $OUT/NAME.json.
run() {
    local name=$1
    shift
    start_server switchboard "$DURABILITY"
    echo "== $name: switchboard-load $* (broker pid $SPID, $URL; load average $(cut -d' ' -f1-3 /proc/loadavg))"
    taskset -c 1 "$LOAD" --url "$URL" --server-pid "$SPID" --encoding "$ENCODING" \
        --json-out "$OUT/$name.json" "$@" || echo "(exit status $?)"
    stop_server
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
