#!/usr/bin/env bash
# Runs the JavaScript SDK tests and the browser end-to-end tests against a
# real broker binary. Each test starts its own broker on an ephemeral port
# and stops it afterwards.
#
#   SWITCHBOARD_BIN=path/to/switchboard clients/js/run-tests.sh
#
# SWITCHBOARD_BIN defaults to ../../target/release/switchboard (relative to
# this script). Installs what is missing: npm packages (npm ci) and Debian's
# chromium (apt-get, as root). Never downloads a browser build.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

bin="${SWITCHBOARD_BIN:-$here/../../target/release/switchboard}"
case "$bin" in
  /*) ;;
  *) bin="$PWD/$bin" ;;
esac
if [[ ! -x "$bin" ]]; then
  echo "run-tests.sh: no broker binary at $bin" >&2
  echo "  build it with 'cargo build --release' in the repo, or set SWITCHBOARD_BIN" >&2
  exit 1
fi
bin="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"
export SWITCHBOARD_BIN="$bin"

cd "$here"

if ! command -v node >/dev/null 2>&1; then
  echo "run-tests.sh: node (>= 20) is required" >&2
  exit 1
fi
node_major="$(node -p 'process.versions.node.split(".")[0]')"
if (( node_major < 20 )); then
  echo "run-tests.sh: node >= 20 is required (found $(node --version))" >&2
  exit 1
fi

# npm packages (the codec, playwright-core, ws, typescript, axe-core), exactly as locked.
if [[ ! -d node_modules/playwright-core || ! -d node_modules/@msgpack/msgpack || ! -d node_modules/ws || ! -d node_modules/typescript || ! -d node_modules/axe-core ]]; then
  echo "run-tests.sh: installing npm packages (npm ci)"
  npm ci --no-audit --no-fund
fi

# Debian's chromium for the end-to-end tests.
chromium="${CHROMIUM_PATH:-/usr/bin/chromium}"
if [[ ! -x "$chromium" ]]; then
  echo "run-tests.sh: installing Debian's chromium"
  if [[ "$(id -u)" -eq 0 ]]; then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y chromium
  elif command -v sudo >/dev/null 2>&1; then
    sudo -n apt-get update
    sudo -n env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium
  else
    echo "run-tests.sh: $chromium is missing and cannot be installed without root" >&2
    exit 1
  fi
fi
export CHROMIUM_PATH="$chromium"

# Node 20 has a WebSocket client only behind a flag; Node >= 22 has it built in.
node_flags=()
if ! node -e 'process.exit(typeof WebSocket === "function" ? 0 : 1)'; then
  node_flags+=(--experimental-websocket)
fi

mkdir -p test-artifacts

echo "run-tests.sh: broker $SWITCHBOARD_BIN"
echo "run-tests.sh: SDK tests and browser end-to-end tests"
# One run, one file at a time (2-core machines): the closing summary counts
# every test. Each test file's tests have their own waits; the timeout only
# stops a hung run.
exec node "${node_flags[@]}" --test --test-concurrency=1 --test-timeout=180000 \
  test/sdk/*.test.js test/e2e/*.test.js
