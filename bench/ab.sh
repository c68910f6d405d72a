#!/usr/bin/env bash
# Compares spendgate builds on one load, alternating them round by round: on a shared
# 2-vCPU machine two runs of one build differ by 10-15 %, so a change is judged by the
# medians of alternating runs, not by one run against a figure from earlier.
#
#   bench/ab.sh OLD_BINARY NEW_BINARY [MORE...]
#
# Each round starts every binary in turn on a fresh database (the embedded store unless
# STORE sets a store section), puts the TTS load on it and prints, per binary: req/s, p50,
# p99, non-2xx, CPU µs per request (from /proc/<pid>/stat).
#
# Environment: ROUNDS (3), DURATION (6s), WARMUP (2s), CONNECTIONS (64), THREADS (2),
# TENANTS (100), STORE (extra YAML, e.g. a redis store section), CARGO_TARGET_DIR (target).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { echo "usage: bench/ab.sh OLD_BINARY NEW_BINARY [MORE...]" >&2; exit 2; }
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-6s}
WARMUP=${WARMUP:-2s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
TARGET=${CARGO_TARGET_DIR:-target}
BINS=()
for b in "$@"; do BINS+=("$(realpath "$b")"); done

# shellcheck source=bench/common.sh
source bench/common.sh

PROVIDERS="  elevenlabs: {kind: elevenlabs, prefix: /elevenlabs, upstream: \"http://127.0.0.1:$MOCK\"}"
printf "%-6s %-28s %10s %9s %9s %7s %11s\n" round binary req/s p50 p99 non-2xx "CPU us/req"
for round in $(seq "$ROUNDS"); do
  for b in "${BINS[@]}"; do
    start_spendgate "$b" "$PROVIDERS" "${STORE:-}"
    read -r rps p50 p99 bad cpu _ <<<"$(load bench/tts.lua "http://127.0.0.1:$PROXY/elevenlabs/v1/text-to-speech/voice" "$PROXY_PID")"
    printf "%-6s %-28s %10s %9s %9s %7s %11s\n" "$round" "$(basename "$b")" "$rps" "$p50" "$p99" "$bad" "$cpu"
    stop_spendgate
  done
done
