#!/usr/bin/env bash
# Instructions per request, counted by valgrind's callgrind: repeatable for the same build and
# load whatever else the machine does, unlike CPU time on a shared 2-vCPU machine. Use it to
# judge a change to the request path before and after, then confirm with bench/proxy.sh.
#
# Runs the bare hyper proxy (examples/bare_proxy.rs) and spendgate on the embedded store under
# callgrind, each behind the same mock with the same light load (wrk -t1 -c8, bench/tts.lua,
# TENANTS profiles), counts from after a warm-up, and prints per request: all instructions,
# those of the tokio workers (the request path) and of the store's writer thread, then
# spendgate's functions with the most instructions of their own.
#
# At this load (under a thousand requests a second under callgrind) the writer's batches are
# small: its count per request is higher than under full load, where a commit carries many
# calls and recent requests past a profile's `recent_max` are never written.
#
# Environment: DURATION (15s), TENANTS (100), TOP (25), CARGO_TARGET_DIR (target). Needs
# valgrind (callgrind_control, callgrind_annotate), wrk, curl, python3.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-15s}
TOP=${TOP:-25}
export TENANTS=${TENANTS:-100}
TARGET=${CARGO_TARGET_DIR:-target}
BIN=$(realpath -m "$TARGET/release/spendgate")

for tool in valgrind callgrind_control callgrind_annotate wrk curl python3; do
  command -v "$tool" >/dev/null || { echo "missing: $tool" >&2; exit 1; }
done

# shellcheck source=bench/common.sh
source bench/common.sh
cargo build --release --example bare_proxy >&2

TTS=/elevenlabs/v1/text-to-speech/voice

# Runs the load against $1 (a base URL) while the callgrind process $2 counts, then stops
# it and waits for its profile. Sets N to the number of requests served.
count() {
  local url=$1 vg=$2
  wrk -t1 -c8 -d3s -s bench/tts.lua "$url$TTS" >/dev/null
  callgrind_control -z "$vg" >/dev/null
  wrk -t1 -c8 -d"$DURATION" -s bench/tts.lua "$url$TTS" >"$WORK/wrk.out"
  kill -TERM "$vg"
  wait "$vg" 2>/dev/null || true
  N=$(awk '/requests in/ { print $1 }' "$WORK/wrk.out")
}

# Instructions of the functions (inclusive) whose name matches $2 in the profile $1.
inclusive() {
  callgrind_annotate --inclusive=yes "$1" 2>/dev/null | awk -v pat="$2" '
    $0 ~ pat { gsub(",", "", $1); print $1; exit }'
}

total() {
  callgrind_annotate "$1" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }'
}

per() { awk -v a="$1" -v n="$2" 'BEGIN { if (a == "") a = 0; printf "%.1fk", a / n / 1000 }'; }

# The bare proxy.
BARE=$(free_port)
valgrind --tool=callgrind --callgrind-out-file="$WORK/bare.cg" \
  "$TARGET/release/examples/bare_proxy" "127.0.0.1:$BARE" "http://127.0.0.1:$MOCK" 2>"$WORK/bare.log" &
VG=$!
PIDS+=("$VG")
wait_port "$BARE"
count "http://127.0.0.1:$BARE" "$VG"
N_BARE=$N

# spendgate, embedded store (start_spendgate's config, under callgrind).
PROXY=$(free_port)
ADMIN=$(free_port)
mkdir -p "$WORK/run"
cat >"$WORK/run/spendgate.yaml" <<YAML
listen: "127.0.0.1:$PROXY"
admin:
  listen: "127.0.0.1:$ADMIN"
providers:
  elevenlabs: {kind: elevenlabs, prefix: /elevenlabs, upstream: "http://127.0.0.1:$MOCK"}
limits:
  default_profile:
    - {metric: cost_usd, window: monthly, max: 1000000000}
    - {metric: requests, window: daily, max: 1000000000}
YAML
(cd "$WORK/run" && RUST_LOG=warn exec valgrind --tool=callgrind --callgrind-out-file="$WORK/sg.cg" "$BIN" --config spendgate.yaml 2>"$WORK/run/spendgate.log") &
VG=$!
PIDS+=("$VG")
wait_ready "$ADMIN" "$WORK/run/spendgate.log"
count "http://127.0.0.1:$PROXY" "$VG"
N_SG=$N

# The tokio workers run under the blocking pool's thread start; the writer is its own thread.
WORKERS='blocking/pool.rs:std::sys::backtrace::__rust_begin_short_backtrace'
WRITER='store/embedded/mod.rs:std::sys::backtrace::__rust_begin_short_backtrace'

echo "instructions per request (TTS, $TENANTS profiles, wrk -t1 -c8, $DURATION)"
printf '%-28s %10s %10s %10s %10s\n' target requests all workers writer
printf '%-28s %10s %10s %10s %10s\n' "bare hyper proxy" "$N_BARE" \
  "$(per "$(total "$WORK/bare.cg")" "$N_BARE")" "$(per "$(inclusive "$WORK/bare.cg" "$WORKERS")" "$N_BARE")" "-"
printf '%-28s %10s %10s %10s %10s\n' "spendgate embedded" "$N_SG" \
  "$(per "$(total "$WORK/sg.cg")" "$N_SG")" "$(per "$(inclusive "$WORK/sg.cg" "$WORKERS")" "$N_SG")" \
  "$(per "$(inclusive "$WORK/sg.cg" "$WRITER")" "$N_SG")"
echo
echo "spendgate: functions by their own instructions, per request"
callgrind_annotate --inclusive=no --threshold=100 "$WORK/sg.cg" 2>/dev/null |
  awk -v n="$N_SG" '/^ *[0-9,]+ \(/ && !/PROGRAM TOTALS|Inner::run|clone.S|pthread_create|thread_start|call_once|__rust_begin_short_backtrace|pool.rs:tokio|worker.rs:tokio::runtime::task::raw::poll/ {
    c = $1; gsub(",", "", c); sub(/^ *[0-9,]+ \( *[0-9.]+%\) +/, ""); printf "%8.0f  %s\n", c / n, substr($0, 1, 140) }' |
  head -n "$TOP"
