#!/usr/bin/env bash
# The proxy's cost per request, side by side with nginx, in one run on one machine.
#
# Targets, all in front of the same local mock upstream (examples/mock_upstream.rs, an
# ElevenLabs stand-in) and driven by wrk with the same load (bench/tts.lua: 615-character TTS
# requests over 100 profiles):
#   1. the mock directly (the floor),
#   2. nginx `proxy_pass` with upstream keepalive (the reference),
#   3. a bare hyper proxy on spendgate's stack doing nothing but forward
#      (examples/bare_proxy.rs: what the stack itself costs),
#   4. spendgate with the memory store,
#   5. spendgate with the Redis store (a local redis-server).
# Then an LLM-shaped load (OpenAI chat completions, JSON and SSE streams with usage) through
# nginx and the memory store, and the TTS load spread over 100,000 profiles instead of 100.
# For each: requests/s, p50/p99 at CONNECTIONS connections, the CPU time the proxy process
# (and Redis) spent per request over the measured run (from /proc/<pid>/stat), the ratios to
# nginx on the same load, and the p50 one connection sees (added over the mock).
#
# Environment: DURATION (10s), CONNECTIONS (64), THREADS (2), WARMUP (3s), WARMUP_100K (20s),
# CARGO_TARGET_DIR (target). Needs wrk, nginx, redis-server, redis-cli, curl, python3.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
WARMUP=${WARMUP:-3s}
TARGET=${CARGO_TARGET_DIR:-target}
# Resolved here: the proxy is started from the work directory.
BIN=$(realpath -m "$TARGET/release/spendgate")

for tool in wrk nginx redis-server redis-cli curl python3; do
  command -v "$tool" >/dev/null || { echo "missing: $tool" >&2; exit 1; }
done

# shellcheck source=bench/common.sh
source bench/common.sh

REDIS=$(free_port)
redis-server --port "$REDIS" --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK" >"$WORK/redis.log" 2>&1 &
REDIS_PID=$!
PIDS+=("$REDIS_PID")
wait_port "$REDIS"

start_nginx /elevenlabs/ /openai/

# Starts spendgate with the extra YAML $1 (a store section); sets PROXY, ADMIN and PROXY_PID.
PROVIDERS="  elevenlabs: {kind: elevenlabs, prefix: /elevenlabs, upstream: \"http://127.0.0.1:$MOCK\"}
  openai: {kind: openai, prefix: /openai, upstream: \"http://127.0.0.1:$MOCK\"}"
start_proxy() {
  start_spendgate "$BIN" "$PROVIDERS" "$1"
}

declare -A RESULT SINGLE
TTS=bench/tts.lua
CHAT=bench/chat.lua
tts_path=/v1/text-to-speech/voice
chat_path=/v1/chat/completions
RESULT[mock]=$(load $TTS "http://127.0.0.1:$MOCK$tts_path")
SINGLE[mock]=$(single $TTS "http://127.0.0.1:$MOCK$tts_path")
SINGLE[mock_chat]=$(single $CHAT "http://127.0.0.1:$MOCK$chat_path")
SINGLE[mock_sse]=$(STREAM=1 single $CHAT "http://127.0.0.1:$MOCK$chat_path")
RESULT[nginx]=$(load $TTS "http://127.0.0.1:$NGINX/elevenlabs$tts_path" "${NGINX_PROCS[@]}")
SINGLE[nginx]=$(single $TTS "http://127.0.0.1:$NGINX/elevenlabs$tts_path")
RESULT[nginx_chat]=$(load $CHAT "http://127.0.0.1:$NGINX/openai$chat_path" "${NGINX_PROCS[@]}")
SINGLE[nginx_chat]=$(single $CHAT "http://127.0.0.1:$NGINX/openai$chat_path")
RESULT[nginx_sse]=$(STREAM=1 load $CHAT "http://127.0.0.1:$NGINX/openai$chat_path" "${NGINX_PROCS[@]}")
SINGLE[nginx_sse]=$(STREAM=1 single $CHAT "http://127.0.0.1:$NGINX/openai$chat_path")

cargo build --release --example bare_proxy >&2
BARE=$(free_port)
"$TARGET/release/examples/bare_proxy" "127.0.0.1:$BARE" "http://127.0.0.1:$MOCK" 2>"$WORK/bare.log" &
BARE_PID=$!
PIDS+=("$BARE_PID")
wait_port "$BARE"
RESULT[bare]=$(load $TTS "http://127.0.0.1:$BARE/elevenlabs$tts_path" "$BARE_PID")
SINGLE[bare]=$(single $TTS "http://127.0.0.1:$BARE/elevenlabs$tts_path")
kill "$BARE_PID"

start_proxy ""
RESULT[memory]=$(load $TTS "http://127.0.0.1:$PROXY/elevenlabs$tts_path" "$PROXY_PID")
SINGLE[memory]=$(single $TTS "http://127.0.0.1:$PROXY/elevenlabs$tts_path")
RESULT[memory_chat]=$(load $CHAT "http://127.0.0.1:$PROXY/openai$chat_path" "$PROXY_PID")
SINGLE[memory_chat]=$(single $CHAT "http://127.0.0.1:$PROXY/openai$chat_path")
RESULT[memory_sse]=$(STREAM=1 load $CHAT "http://127.0.0.1:$PROXY/openai$chat_path" "$PROXY_PID")
SINGLE[memory_sse]=$(STREAM=1 single $CHAT "http://127.0.0.1:$PROXY/openai$chat_path")
stop_spendgate

start_proxy ""
RESULT[memory_100k]=$(TENANTS=100000 load $TTS "http://127.0.0.1:$PROXY/elevenlabs$tts_path" "$PROXY_PID")
SINGLE[memory_100k]=$(TENANTS=100000 single $TTS "http://127.0.0.1:$PROXY/elevenlabs$tts_path")
stop_spendgate

# The same 100,000 tenants once every one of them has been seen (a warm-up long enough for
# each wrk thread to go through all the ids): the steady state of a proxy with many tenants,
# where the run above is mostly tenants seen for the first time.
start_proxy ""
RESULT[memory_100k_seen]=$(TENANTS=100000 WARMUP=${WARMUP_100K:-20s} load $TTS "http://127.0.0.1:$PROXY/elevenlabs$tts_path" "$PROXY_PID")
SINGLE[memory_100k_seen]=$(TENANTS=100000 single $TTS "http://127.0.0.1:$PROXY/elevenlabs$tts_path")
stop_spendgate

start_proxy "store:
  backend: redis
  url: \"redis://127.0.0.1:$REDIS/0\""
RESULT[redis]=$(load $TTS "http://127.0.0.1:$PROXY/elevenlabs$tts_path" "$PROXY_PID")
SINGLE[redis]=$(single $TTS "http://127.0.0.1:$PROXY/elevenlabs$tts_path")
stop_spendgate

echo
echo "wrk: $THREADS threads, $CONNECTIONS connections, $DURATION after a $WARMUP warm-up; 1-connection p50 over $DURATION."
echo "TTS: ElevenLabs requests (615 characters) over 100 profiles (or 100,000); chat: OpenAI chat"
echo "completions over 100 profiles, JSON or SSE. $(nproc) CPUs shared by everything."
echo
printf "%-34s %10s %8s %9s %9s %7s %11s %8s %13s %11s\n" "target" "req/s" "x nginx" "p50" "p99" "non-2xx" "CPU us/req" "x nginx" "Redis us/req" "+p50 1conn"
# name | label | the nginx row it is compared with | the mock's 1-connection p50 on that load
for row in \
  "mock|mock upstream directly (TTS)|nginx|mock" \
  "nginx|nginx proxy_pass, TTS|nginx|mock" \
  "bare|bare hyper proxy (floor), TTS|nginx|mock" \
  "memory|spendgate memory, TTS|nginx|mock" \
  "memory_100k|spendgate memory, TTS, 100k tenants|nginx|mock" \
  "memory_100k_seen|spendgate memory, 100k tenants seen|nginx|mock" \
  "redis|spendgate Redis, TTS|nginx|mock" \
  "nginx_chat|nginx proxy_pass, chat JSON|nginx_chat|mock_chat" \
  "memory_chat|spendgate memory, chat JSON|nginx_chat|mock_chat" \
  "nginx_sse|nginx proxy_pass, chat SSE|nginx_sse|mock_sse" \
  "memory_sse|spendgate memory, chat SSE|nginx_sse|mock_sse"; do
  IFS='|' read -r name label ref mock <<<"$row"
  read -r rps p50 p99 bad cpu rcpu <<<"${RESULT[$name]}"
  read -r ref_rps _ _ _ ref_cpu _ <<<"${RESULT[$ref]}"
  [ "$name" = mock ] && cpu="-"
  [ "$name" = redis ] || rcpu="-"
  ratio=$(awk -v a="$rps" -v b="$ref_rps" 'BEGIN { printf "%.2f", a / b }')
  cratio=$([ "$cpu" = "-" ] && echo "-" || awk -v a="$cpu" -v b="$ref_cpu" 'BEGIN { printf "%.2f", a / b }')
  added=$(awk -v a="$(us "${SINGLE[$name]}")" -v b="$(us "${SINGLE[$mock]}")" 'BEGIN { printf "%+.0f us", a - b }')
  printf "%-34s %10s %8s %9s %9s %7s %11s %8s %13s %11s\n" "$label" "$rps" "$ratio" "$p50" "$p99" "$bad" "$cpu" "$cratio" "$rcpu" "$added"
done
