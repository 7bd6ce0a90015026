#!/usr/bin/env bash
# The table of a compare.sh sitting, from its JSON reports: per scenario and
# server, each figure as median (min–max) over the rounds.
#
#   load-tests/summarize.sh [OUT]      (default /tmp/switchboard-compare)
set -euo pipefail
OUT=${1:-/tmp/switchboard-compare}
shopt -s nullglob
files=("$OUT"/*.r*.json)
if [ ${#files[@]} -eq 0 ]; then
    echo "no reports (*.rN.json) in $OUT" >&2
    exit 1
fi
jq -rn '
  def r(n): . * pow(10; n) | round / pow(10; n);
  # median (min–max) of the non-null values, rounded to n decimals
  def spread(f; n):
    [ .[] | f | select(. != null) ] | sort
    | if length == 0 then "–"
      elif length == 1 then "\(.[0] | r(n))"
      else "\(.[(length - 1) / 2 | floor] | r(n)) (\(.[0] | r(n))–\(.[-1] | r(n)))"
      end;
  [ inputs | . + { key: (input_filename | split("/") | last | split(".")) } ]
  | group_by(.key[0], .key[1])
  | ( "| scenario | server | runs | CPU µs/delivery | user | kernel | deliveries/s | p50 ms | p99 ms | RSS KiB/conn | frame B | other CPU s (max) | errors + missing |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|---|" ),
    ( .[] | "| \(.[0].key[0]) | \(.[0].key[1]) | \(length) | \(spread(.server.cpu_us_per_delivery; 2)) | \(spread(.server.cpu_user_us_per_delivery; 2)) | \(spread(.server.cpu_system_us_per_delivery; 2)) | \(spread(.deliveries.per_s; 0)) | \(spread(.latency_us.p50 / 1000?; 2)) | \(spread(.latency_us.p99 / 1000?; 2)) | \(spread(.server.rss_per_connection_bytes / 1024?; 2)) | \(spread(.deliveries.mean_frame_bytes; 0)) | \([ .[].harness.other_cpu_s // 0 ] | max | r(2)) | \([ .[] | .errors_total + (.deliveries.missing // 0) ] | add) |" )
' "${files[@]}"
