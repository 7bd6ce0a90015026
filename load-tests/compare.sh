#!/usr/bin/env bash
# The broker beside the uWebSockets.js comparison peer (load-tests/peers/uws),
# the same scenarios with the same shape, alternated in one sitting: each
# round runs every scenario once against every server, a fresh server per
# run, pinned to core 0, the harness to core 1. Loopback only; every run is
# bounded (--duration).
#
#   cargo build --release --workspace --bins
#   load-tests/compare.sh [fanout|chat40k|chat10k|idle|churn ...]   (default: the first four;
#   churn runs against the broker only)
#
# Env: ROUNDS (default 3); SERVERS (default "switchboard uws"; a broker entry
#      may name its durability, e.g. "switchboard:memory switchboard:fsync
#      uws", and a binary of its own, to alternate two builds:
#      "switchboard:memory@/tmp/old/switchboard switchboard:memory@/tmp/new/switchboard",
#      labelled by the binary's folder name); DURABILITY (of a bare "switchboard"; default memory); OUT (report
#      folder, default /tmp/switchboard-compare); BROKER, LOAD (binaries);
#      SWITCHBOARD_JWT_SECRET; RUST_LOG (broker; default warn).
#
# Each run writes $OUT/SCENARIO.SERVER.rN.json (and .txt, the human table);
# the order of the servers alternates from round to round. At the end a
# table gives, per scenario and server, the spread (min / median / max) of
# each figure over the rounds; summarize.sh prints it again from the JSON.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-/tmp/switchboard-compare}
ROUNDS=${ROUNDS:-3}
DURABILITY=${DURABILITY:-memory}
read -r -a servers <<<"${SERVERS:-switchboard uws}"
# shellcheck source=servers.sh
. "$ROOT/load-tests/servers.sh"
trap stop_server EXIT INT TERM

# The scenarios, one shape for both servers.
scenario_args() {
    case $1 in
    fanout) echo "--duration 90 --drain 30 fanout --observers 1000 --messages 5000 --body-bytes 200 --window 32" ;;
    chat40k) echo "--duration 60 chat --engagements 500 --rate 20000 --typing-share 0.1 --run 10" ;;
    chat10k) echo "--duration 60 chat --engagements 500 --rate 5000 --typing-share 0.1 --run 10" ;;
    idle) echo "--duration 60 idle --connections 10000 --hold 5" ;;
    churn) echo "--duration 60 churn --rate 6000 --total 30000 --concurrency 2000" ;;
    *) return 1 ;;
    esac
}

scenarios=("$@")
[ ${#scenarios[@]} -eq 0 ] && scenarios=(fanout chat40k chat10k idle)
for s in "${scenarios[@]}"; do
    scenario_args "$s" >/dev/null || { echo "unknown scenario $s (fanout chat40k chat10k idle churn)" >&2; exit 2; }
done
for srv in "${servers[@]}"; do
    case ${srv%%@*} in
    switchboard | switchboard:fsync | switchboard:os | switchboard:memory | uws) ;;
    *) echo "unknown server $srv (switchboard[:fsync|os|memory] or uws)" >&2; exit 2 ;;
    esac
done

# run SCENARIO SERVER ROUND
run() {
    local scenario=$1 round=$3 entry bin tag
    split_build "$2"
    local srv=$entry
    local kind=${srv%%:*} durability=$DURABILITY
    [[ $srv == *:* ]] && durability=${srv#*:}
    local label=$kind
    [ "$kind" = switchboard ] && label="switchboard-$durability$tag"
    local base="$OUT/$scenario.$label.r$round"
    if [ "$scenario" = churn ] && [ "$kind" = uws ]; then
        echo "== round $round, churn, uws: skipped (the peer has no engagements)"
        return 0
    fi
    # shellcheck disable=SC2046
    set -- $(scenario_args "$scenario")
    BROKER=$bin start_server "$kind" "$durability"
    echo "== round $round, $scenario, $label (pid $SPID, $URL; load average $(cut -d' ' -f1-3 /proc/loadavg))"
    taskset -c 1 "$LOAD" --target "$kind" --url "$URL" --server-pid "$SPID" --quiet \
        --json-out "$base.json" "$@" >"$base.txt" || echo "(exit status $?)"
    stop_server
    jq -r 'def r(n): if . == null then "-" else . * pow(10; n) | round / pow(10; n) end;
        "   CPU/delivery \(.server.cpu_us_per_delivery | r(3)) µs (user \(.server.cpu_user_us_per_delivery | r(3)) + kernel \(.server.cpu_system_us_per_delivery | r(3))), deliveries/s \(.deliveries.per_s | r(0)), p50/p99 \(.latency_us.p50 | r(0))/\(.latency_us.p99 | r(0)) µs, RSS/conn \(.server.rss_per_connection_bytes | r(0)) B, errors \(.errors_total), missing \(.deliveries.missing // 0), other CPU \(.harness.other_cpu_s | r(2)) s"' \
        "$base.json" || true
}

echo "machine: $(nproc) cores, $(uname -sr), $(date -u +%Y-%m-%dT%H:%M:%SZ), $ROUNDS rounds, servers: ${servers[*]}"
echo "node $(node --version), uws peer $(jq -r '.packages["node_modules/@trufflesuite/uws-js-unofficial"].version' "$ROOT/load-tests/peers/uws/package-lock.json")"
for round in $(seq "$ROUNDS"); do
    round_order "$round" "${servers[@]}"
    for s in "${scenarios[@]}"; do
        for srv in "${order[@]}"; do
            run "$s" "$srv" "$round"
        done
    done
done
echo
"$ROOT/load-tests/summarize.sh" "$OUT"
