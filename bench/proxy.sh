#!/usr/bin/env bash
# Throughput and latency of the proxy, measured with wrk against a local mock upstream:
#   1. the mock directly (the floor),
#   2. through spendgate with the memory store,
#   3. through spendgate with the Redis store (a local redis-server).
# Prints requests/s and p50/p99 latency for each. Builds in release mode first.
#
# Environment: DURATION (10s), CONNECTIONS (64), THREADS (2), WARMUP (3s),
# CARGO_TARGET_DIR (target). Needs wrk, redis-server, redis-cli, curl, python3.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
WARMUP=${WARMUP:-3s}
TARGET=${CARGO_TARGET_DIR:-target}

for tool in wrk redis-server redis-cli curl python3; do
  command -v "$tool" >/dev/null || { echo "missing: $tool" >&2; exit 1; }
done

cargo build --release --bin spendgate --example mock_upstream >&2

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_port() {
  for _ in $(seq 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing listens on port $1" >&2
  exit 1
}

MOCK=$(free_port)
"$TARGET/release/examples/mock_upstream" "127.0.0.1:$MOCK" 2>"$WORK/mock.log" &
PIDS+=($!)
REDIS=$(free_port)
redis-server --port "$REDIS" --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK" >"$WORK/redis.log" 2>&1 &
PIDS+=($!)
wait_port "$MOCK"
wait_port "$REDIS"

# Runs wrk against a URL; prints "req/s p50 p99 non-2xx".
load() {
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$WARMUP" -s bench/tts.lua "$1" >/dev/null
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s bench/tts.lua "$1" >"$WORK/wrk.out"
  awk '
    /^Requests\/sec:/ { rps = $2 }
    /^ +50%/ { p50 = $2 }
    /^ +99%/ { p99 = $2 }
    /Non-2xx or 3xx responses:/ { bad = $5 }
    END { printf "%s %s %s %s\n", rps, p50, p99, (bad == "" ? 0 : bad) }
  ' "$WORK/wrk.out"
}

# Starts spendgate with a store section; sets PROXY and ADMIN.
start_proxy() {
  PROXY=$(free_port)
  ADMIN=$(free_port)
  cat >"$WORK/spendgate.yaml" <<YAML
listen: "127.0.0.1:$PROXY"
admin:
  listen: "127.0.0.1:$ADMIN"
providers:
  elevenlabs: {kind: elevenlabs, prefix: /elevenlabs, upstream: "http://127.0.0.1:$MOCK"}
limits:
  default_profile:
    - {metric: cost_usd, window: monthly, max: 1000000000}
    - {metric: requests, window: daily, max: 1000000000}
$1
YAML
  RUST_LOG=warn "$TARGET/release/spendgate" --config "$WORK/spendgate.yaml" 2>"$WORK/spendgate.log" &
  PROXY_PID=$!
  PIDS+=("$PROXY_PID")
  wait_port "$ADMIN"
  for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$ADMIN/readyz" >/dev/null && return 0
    sleep 0.05
  done
  echo "spendgate did not become ready:" >&2
  cat "$WORK/spendgate.log" >&2
  exit 1
}

stop_proxy() {
  kill "$PROXY_PID"
  wait "$PROXY_PID" 2>/dev/null || true
}

store_errors() {
  curl -fs "http://127.0.0.1:$ADMIN/metrics" | awk '/^spendgate_store_errors_total/ { n += $2 } END { print n + 0 }'
}

declare -A RESULT
RESULT[mock]=$(load "http://127.0.0.1:$MOCK/v1/text-to-speech/voice")

start_proxy ""
RESULT[memory]=$(load "http://127.0.0.1:$PROXY/elevenlabs/v1/text-to-speech/voice")
stop_proxy

redis-cli -p "$REDIS" CONFIG RESETSTAT >/dev/null
start_proxy "store:
  backend: redis
  url: \"redis://127.0.0.1:$REDIS/0\""
RESULT[redis]=$(load "http://127.0.0.1:$PROXY/elevenlabs/v1/text-to-speech/voice")
REDIS_ERRORS=$(store_errors)
stop_proxy

echo
echo "wrk: $THREADS threads, $CONNECTIONS connections, $DURATION after a $WARMUP warm-up;"
echo "ElevenLabs TTS requests (615 characters) over 100 profiles; $(nproc) CPUs shared by everything."
echo
printf "%-28s %12s %10s %10s %8s\n" "target" "req/s" "p50" "p99" "non-2xx"
for name in mock memory redis; do
  read -r rps p50 p99 bad <<<"${RESULT[$name]}"
  case $name in
    mock) label="mock upstream directly" ;;
    memory) label="spendgate, memory store" ;;
    redis) label="spendgate, Redis store" ;;
  esac
  printf "%-28s %12s %10s %10s %8s\n" "$label" "$rps" "$p50" "$p99" "$bad"
done
echo
echo "Redis store: $REDIS_ERRORS store errors (timeouts that fell back to on_error) during the run."
redis-cli -p "$REDIS" INFO commandstats | tr -d '\r' | awk -F'[:,=]' '
  /^cmdstat_evalsha:/ { printf "Redis EVALSHA (reserve and apply): %s calls, %s us of Redis time per call\n", $3, $7 }'
