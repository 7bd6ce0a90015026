#!/usr/bin/env bash
# Saturation: the broker held to a share of one core by a cgroup CPU quota,
# so that the harness (on the other core, unlimited) can push it past what
# it can serve, and the deliveries/s it reaches are the broker's limit, not
# the harness's. Durability levels (or builds) alternated in one sitting,
# each run against a fresh broker and data directory.
#
#   cargo build --release --workspace --bins
#   load-tests/saturation.sh            (as root: it makes a cgroup)
#
# Env: QUOTA (percent of one core, default 35); ROUNDS (default 3); SERVERS
#      (default "memory fsync": durability levels, each optionally with a
#      binary of its own, "fsync@/tmp/old/switchboard", labelled by the
#      binary's folder name); RUN (seconds of traffic, default 15); OUT
#      (report folder, default /tmp/switchboard-saturation); BROKER, LOAD
#      (binaries); SWITCHBOARD_JWT_SECRET; RUST_LOG (broker; default warn).
#
# Each run writes $OUT/LABEL.rN.json and prints deliveries/s, CPU per
# delivery, the broker's share of a core (at the quota: the broker is the
# bound) and the harness's (near 100 %: the harness is, and the run says
# nothing about the broker). cgroup v2 (cpu.max) or v1 (cpu.cfs_quota_us).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-/tmp/switchboard-saturation}
QUOTA=${QUOTA:-35}
ROUNDS=${ROUNDS:-3}
RUN=${RUN:-15}
read -r -a servers <<<"${SERVERS:-memory fsync}"
# shellcheck source=servers.sh
. "$ROOT/load-tests/servers.sh"

for srv in "${servers[@]}"; do
    case ${srv%%@*} in
    memory | os | fsync) ;;
    *) echo "unknown durability ${srv%%@*} (memory, os or fsync)" >&2; exit 2 ;;
    esac
done
if ! [[ $QUOTA =~ ^[0-9]+$ ]] || [ "$QUOTA" -lt 5 ] || [ "$QUOTA" -gt 100 ]; then
    echo "QUOTA is a percentage of one core, 5 to 100" >&2
    exit 2
fi

# The cgroup that holds the broker: made here, removed at the end.
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
    CG=/sys/fs/cgroup/switchboard-saturation
    echo +cpu >/sys/fs/cgroup/cgroup.subtree_control 2>/dev/null || true
    mkdir -p "$CG" 2>/dev/null || true
    set_quota() { echo "$((QUOTA * 1000)) 100000" >"$CG/cpu.max"; }
else
    CG=/sys/fs/cgroup/cpu/switchboard-saturation
    mkdir -p "$CG" 2>/dev/null || true
    set_quota() {
        echo 100000 >"$CG/cpu.cfs_period_us"
        echo $((QUOTA * 1000)) >"$CG/cpu.cfs_quota_us"
    }
fi
if ! { [ -d "$CG" ] && set_quota 2>/dev/null; }; then
    echo "cannot set a CPU quota in $CG (run as root, with the cpu controller)" >&2
    exit 1
fi
cleanup() {
    stop_server
    rmdir "$CG" 2>/dev/null || true
}
trap cleanup EXIT INT TERM

# run SERVER ROUND
run() {
    local round=$2 entry bin tag
    split_build "$1"
    local srv=$entry label="$entry$tag" base
    base="$OUT/$label.r$round"
    BROKER=$bin start_server switchboard "$srv"
    # Every thread of the broker, and those it starts later, under the quota.
    echo "$SPID" >"$CG/cgroup.procs"
    taskset -c 1 "$LOAD" --target switchboard --url "$URL" --server-pid "$SPID" --quiet \
        --json-out "$base.json" --duration 60 \
        chat --engagements 500 --rate 100000 --typing-share 0.1 --run "$RUN" \
        >"$base.txt" || echo "(exit status $?)"
    stop_server
    jq -r --arg name "$label" --arg round "$round" '
        def r(n): if . == null then "-" else . * pow(10; n) | round / pow(10; n) end;
        "round \($round), \($name): \(.deliveries.per_s | r(0)) deliveries/s, CPU/delivery \(.server.cpu_us_per_delivery | r(3)) µs, broker \(.server.cpu_s / .measured_s * 100 | r(0)) % of a core, harness \(.harness.cpu_percent | r(0)) %, p50 \(.latency_us.p50 / 1000 | r(0)) ms, missing \(.deliveries.missing // 0), errors \(.errors_total), other CPU \(.harness.other_cpu_s | r(2)) s"' \
        "$base.json" || true
}

echo "machine: $(nproc) cores, $(uname -sr), $(date -u +%Y-%m-%dT%H:%M:%SZ), broker quota $QUOTA % of core 0, $ROUNDS rounds: ${servers[*]}"
for round in $(seq "$ROUNDS"); do
    round_order "$round" "${servers[@]}"
    for srv in "${order[@]}"; do
        run "$srv" "$round"
    done
done
