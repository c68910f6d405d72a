#!/usr/bin/env bash
# Peak memory under hostile bodies: 100 concurrent 10 MiB metered request bodies (ElevenLabs
# TTS JSON), once within the default buffering budget (server.max_buffered_bytes, 256 MiB) and
# once with the budget raised past what they need. Prints the proxy's peak RSS (VmHWM) and how
# the requests were answered.
#
# Environment: CONCURRENCY (100), BODY_MIB (10), CARGO_TARGET_DIR (target).
set -euo pipefail
cd "$(dirname "$0")/.."

CONCURRENCY=${CONCURRENCY:-100}
BODY_MIB=${BODY_MIB:-10}
TARGET=${CARGO_TARGET_DIR:-target}

# shellcheck source=bench/common.sh
source bench/common.sh

# One run: starts the proxy with a buffering budget, fires the bodies, prints the figures.
run() {
  local budget=$1
  local proxy admin pid
  proxy=$(free_port)
  admin=$(free_port)
  cat >"$WORK/spendgate.yaml" <<YAML
listen: "127.0.0.1:$proxy"
admin:
  listen: "127.0.0.1:$admin"
server:
  max_buffered_bytes: $budget
providers:
  elevenlabs: {kind: elevenlabs, prefix: /elevenlabs, upstream: "http://127.0.0.1:$MOCK"}
limits:
  default_profile:
    - {metric: cost_usd, window: monthly, max: 1000000000}
YAML
  RUST_LOG=warn "$TARGET/release/spendgate" --config "$WORK/spendgate.yaml" 2>"$WORK/spendgate.log" &
  pid=$!
  PIDS+=("$pid")
  wait_port "$admin"
  local idle
  idle=$(awk '/^VmRSS/ { print $2 }' "/proc/$pid/status")
  python3 - "$proxy" "$CONCURRENCY" "$BODY_MIB" <<'PY'
import collections, http.client, sys, threading
port, n, mib = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
body = b'{"text":"' + b"a" * (mib * 1024 * 1024) + b'","model_id":"eleven_flash_v2_5"}'
codes = collections.Counter()
lock = threading.Lock()
start = threading.Barrier(n)
def one(i):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    start.wait()
    try:
        c.request("POST", "/elevenlabs/v1/text-to-speech/voice", body=body,
                  headers={"content-type": "application/json", "x-profile-id": f"p-{i}"})
        r = c.getresponse()
        r.read()
        code = r.status
    except Exception as e:
        code = type(e).__name__
    with lock:
        codes[code] += 1
threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
for t in threads: t.start()
for t in threads: t.join()
print(" ".join(f"{k}:{v}" for k, v in sorted(codes.items(), key=str)))
PY
  local peak
  peak=$(awk '/^VmHWM/ { print $2 }' "/proc/$pid/status")
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  printf "budget %4d MiB: idle RSS %6.1f MiB, peak RSS %7.1f MiB\n" $((budget / 1048576)) "$(echo "$idle / 1024" | bc -l)" "$(echo "$peak / 1024" | bc -l)"
}

echo "$CONCURRENCY concurrent ${BODY_MIB} MiB TTS bodies; answers as status:count"
run $((256 * 1024 * 1024))
run $((4096 * 1024 * 1024))
