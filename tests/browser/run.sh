#!/usr/bin/env bash
# Real-browser test of the web console: starts `streamhouse serve` on free ports with a fresh
# data dir, then drives Debian's headless Chromium through every page with playwright-core.
# The server binary: $STREAMHOUSE_BIN, else ${CARGO_TARGET_DIR:-target}/debug/streamhouse (built
# first when $STREAMHOUSE_BIN is unset). Screenshots: $SCREENSHOT_DIR (default
# target/console-screenshots). Extra arguments go to `node --test`.
set -euo pipefail
cd "$(dirname "$0")/../.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if [ ! -x /usr/bin/chromium ]; then
  echo "installing Debian's chromium for the browser test…" >&2
  as_root apt-get install -y -q chromium >/dev/null 2>&1 \
    || { as_root apt-get update -q >/dev/null && as_root apt-get install -y -q chromium >/dev/null; }
fi

# node_modules is missing or older than the lock file: install exactly what the lock file says.
if [ ! -f tests/browser/node_modules/.package-lock.json ] \
  || [ tests/browser/package-lock.json -nt tests/browser/node_modules/.package-lock.json ]; then
  (cd tests/browser && npm ci --no-audit --no-fund)
fi

if [ -z "${STREAMHOUSE_BIN:-}" ]; then
  cargo build --locked -q -p streamhouse-cli
fi
BIN=${STREAMHOUSE_BIN:-${CARGO_TARGET_DIR:-target}/debug/streamhouse}
[ -x "$BIN" ] || { echo "no server binary at $BIN (set STREAMHOUSE_BIN)" >&2; exit 1; }

data_dir=$(mktemp -d)
log_dir=$(mktemp -d)
server_pid=
feeder_pid=
cleanup() {
  if [ -n "$feeder_pid" ]; then kill "$feeder_pid" 2>/dev/null || true; wait "$feeder_pid" 2>/dev/null || true; fi
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill "$server_pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$data_dir" "$log_dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$BIN" serve --data-dir "$data_dir" --kafka-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 \
  --group-initial-rebalance-delay-ms 0 \
  >"$log_dir/stdout" 2>"$log_dir/stderr" &
server_pid=$!

http=
deadline=$((SECONDS + 60))
while [ -z "$http" ]; do
  line=$(grep -s -m1 '^streamhouse ready kafka=' "$log_dir/stdout" || true)
  if [ -n "$line" ]; then
    http=$(tr ' ' '\n' <<<"$line" | sed -n 's/^http=//p')
    [ -n "$http" ] || { echo "the ready line has no http= field: $line" >&2; exit 1; }
    break
  fi
  if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "the server exited before it was ready; its stderr:" >&2
    tail -n 40 "$log_dir/stderr" >&2
    exit 1
  fi
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "the server did not print its ready line within 60 s; its stderr:" >&2
    tail -n 40 "$log_dir/stderr" >&2
    exit 1
  fi
  sleep 0.1
done

kafka=$(tr ' ' '\n' <<<"$line" | sed -n 's/^kafka=//p')

# Something to look at: a topic with records, a consumer group that read part of it (so it
# has lag), and a producer that keeps the throughput chart moving while the test runs.
"$BIN" topic create console-seed --partitions 3 -b "$kafka" >/dev/null
seq 1 300 | sed 's/.*/key-&:value-&/' | "$BIN" produce console-seed -K: -b "$kafka" >/dev/null
"$BIN" consume console-seed --group console-readers -n 200 -b "$kafka" >/dev/null
(while :; do seq 1 20 | "$BIN" produce console-seed -b "$kafka" >/dev/null 2>&1; sleep 2; done) &
feeder_pid=$!

export STREAMHOUSE_HTTP="http://$http"
echo "server ready: $STREAMHOUSE_HTTP" >&2
status=0
node --test "$@" tests/browser/console.test.mjs || status=$?
if [ "$status" != 0 ]; then
  echo "server stderr (last 40 lines):" >&2
  tail -n 40 "$log_dir/stderr" >&2
fi
exit "$status"
