#!/usr/bin/env bash
# The embedded store's cost: throughput and CPU per request with `durability: batched` and
# `strict`, next to nginx (the reference) and, when BASELINE_BIN names one, a spendgate binary
# of an earlier version (the memory store it replaced), on the same mock and load in one run;
# then the memory (RSS) and the usage API's latency for one tenant with 100,000 tenants stored.
#
# Environment: DURATION (10s), CONNECTIONS (64), THREADS (2), WARMUP (3s), TENANTS_BIG
# (100000), MEMORY_DURATION (20s: long enough for every one of them to be stored),
# BASELINE_BIN (optional), CARGO_TARGET_DIR (target), SECTIONS ("throughput
# memory": either alone runs only that part). Needs wrk, nginx, curl, python3.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
WARMUP=${WARMUP:-3s}
TENANTS_BIG=${TENANTS_BIG:-100000}
MEMORY_DURATION=${MEMORY_DURATION:-20s}
TARGET=${CARGO_TARGET_DIR:-target}
SECTIONS=${SECTIONS:-throughput memory}
BIN=$(realpath -m "$TARGET/release/spendgate")

for tool in wrk nginx curl python3; do
  command -v "$tool" >/dev/null || { echo "missing: $tool" >&2; exit 1; }
done

# shellcheck source=bench/common.sh
source bench/common.sh
start_nginx /elevenlabs/

# Starts the spendgate binary $1 with the store section $2; sets PROXY, ADMIN, PROXY_PID.
start_proxy() {
  start_spendgate "$1" "  elevenlabs: {kind: elevenlabs, prefix: /elevenlabs, upstream: \"http://127.0.0.1:$MOCK\"}" "$2"
}

rss_mib() {
  awk -v k="$2" '$1 == k":" { printf "%.0f", $2 / 1024 }' "/proc/$1/status"
}

# The usage API for one tenant, sequentially, N times: "p50 p99" in milliseconds.
usage_latency() {
  local url=$1 n=${2:-200}
  for _ in $(seq "$n"); do curl -s -o /dev/null -w '%{time_total}\n' "$url"; done |
    sort -n | awk '{ v[NR] = $1 * 1000 } END { printf "%.2f %.2f\n", v[int(NR * 0.5)], v[int(NR * 0.99)] }'
}

TTS=/v1/text-to-speech/voice
if [[ " $SECTIONS " == *" throughput "* ]]; then
declare -A RESULT
RESULT[nginx]=$(load bench/tts.lua "http://127.0.0.1:$NGINX/elevenlabs$TTS" "${NGINX_PROCS[@]}")
if [ -n "${BASELINE_BIN:-}" ]; then
  start_proxy "$BASELINE_BIN" ""
  RESULT[baseline]=$(load bench/tts.lua "http://127.0.0.1:$PROXY/elevenlabs$TTS" "$PROXY_PID")
  stop_spendgate
fi
for d in batched strict; do
  start_proxy "$BIN" "store:
  durability: $d"
  RESULT[$d]=$(load bench/tts.lua "http://127.0.0.1:$PROXY/elevenlabs$TTS" "$PROXY_PID")
  stop_spendgate
done

echo
echo "wrk: $THREADS threads, $CONNECTIONS connections, $DURATION after a $WARMUP warm-up; TTS over 100 profiles. $(nproc) CPUs shared by everything."
printf "%-44s %10s %8s %9s %9s %7s %11s %9s\n" "target" "req/s" "x nginx" "p50" "p99" "non-2xx" "CPU us/req" "x nginx"
read -r ref_rps _ _ _ ref_cpu _ <<<"${RESULT[nginx]}"
for row in "nginx|nginx proxy_pass" "baseline|spendgate before (memory store, BASELINE_BIN)" "batched|spendgate embedded, durability: batched" "strict|spendgate embedded, durability: strict"; do
  IFS='|' read -r name label <<<"$row"
  [ -n "${RESULT[$name]:-}" ] || continue
  read -r rps p50 p99 bad cpu _ <<<"${RESULT[$name]}"
  printf "%-44s %10s %8s %9s %9s %7s %11s %9s\n" "$label" "$rps" \
    "$(awk -v a="$rps" -v b="$ref_rps" 'BEGIN { printf "%.2f", a / b }')" "$p50" "$p99" "$bad" "$cpu" \
    "$(awk -v a="$cpu" -v b="$ref_cpu" 'BEGIN { printf "%.2f", a / b }')"
done

fi

# Memory and reads with many tenants stored.
[[ " $SECTIONS " == *" memory "* ]] || exit 0
start_proxy "$BIN" ""
echo
echo "embedded store, TTS over $TENANTS_BIG profiles for $MEMORY_DURATION:"
read -r rps p50 p99 bad cpu _ <<<"$(TENANTS=$TENANTS_BIG DURATION=$MEMORY_DURATION load bench/tts.lua "http://127.0.0.1:$PROXY/elevenlabs$TTS" "$PROXY_PID")"
rss="$(rss_mib "$PROXY_PID" VmRSS) MiB (peak during the load $(rss_mib "$PROXY_PID" VmHWM) MiB)"
stored=$(curl -s "http://127.0.0.1:$ADMIN/v1/profiles?limit=1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["total"])')
echo "  $rps req/s, p50 $p50, p99 $p99, $cpu CPU us/req; $stored profiles stored"
echo "  RSS after the load: $rss; database $(du -sh "$WORK/run" | cut -f1)"
read -r u50 u99 <<<"$(usage_latency "http://127.0.0.1:$ADMIN/v1/profiles/bench-4242/usage?range=30d")"
echo "  usage API, one tenant (30d), sequential: p50 $u50 ms, p99 $u99 ms"
read -r u50 u99 <<<"$(usage_latency "http://127.0.0.1:$ADMIN/v1/profiles/bench-4242/usage?range=all")"
echo "  usage API, one tenant (all), sequential: p50 $u50 ms, p99 $u99 ms"
read -r u50 u99 <<<"$(usage_latency "http://127.0.0.1:$ADMIN/v1/profiles?limit=50" 50)"
echo "  listing, first 50 of $stored, sequential: p50 $u50 ms, p99 $u99 ms"
echo "  RSS after the reads: $(rss_mib "$PROXY_PID" VmRSS) MiB (peak $(rss_mib "$PROXY_PID" VmHWM) MiB)"
stop_spendgate
