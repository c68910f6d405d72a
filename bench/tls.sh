#!/usr/bin/env bash
# What HTTPS to the upstream costs, and whether HTTP/2 to it changes the proxy's CPU per
# request, side by side with nginx in one run on one machine.
#
# The mock upstream (examples/mock_upstream.rs) serves HTTPS with a certificate from a CA made
# here, twice: one instance offering h2 and http/1.1 in ALPN (as the providers do), one
# offering http/1.1 only. Targets, with the same wrk load (bench/tts.lua, then bench/chat.lua
# as SSE streams):
#   1. nginx `proxy_pass https://` with upstream keepalive and TLS session reuse (nginx
#      speaks HTTP/1.1 to upstreams),
#   2. spendgate (embedded store) to the HTTP/1.1-only mock,
#   3. spendgate to the h2 mock (ALPN chooses HTTP/2: one multiplexed connection).
# For each: requests/s, p50/p99, the proxy's CPU µs per request and the ratios to nginx.
#
# Environment: DURATION (10s), CONNECTIONS (64), THREADS (2), WARMUP (3s),
# CARGO_TARGET_DIR (target). Needs wrk, nginx, openssl, curl, python3.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
WARMUP=${WARMUP:-3s}
TARGET=${CARGO_TARGET_DIR:-target}
BIN=$(realpath -m "$TARGET/release/spendgate")

for tool in wrk nginx openssl curl python3; do
  command -v "$tool" >/dev/null || { echo "missing: $tool" >&2; exit 1; }
done

# shellcheck source=bench/common.sh
source bench/common.sh

# A CA and a certificate it signs for localhost and 127.0.0.1.
PKI="$WORK/pki"
mkdir -p "$PKI"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -keyout "$PKI/ca.key" -out "$PKI/ca.pem" -subj "/CN=bench CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout "$PKI/key.pem" -out "$PKI/server.csr" -subj "/CN=localhost" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n' >"$PKI/ext"
openssl x509 -req -in "$PKI/server.csr" -CA "$PKI/ca.pem" -CAkey "$PKI/ca.key" -CAcreateserial \
  -days 2 -out "$PKI/cert.pem" -extfile "$PKI/ext" 2>/dev/null

MOCK_H2=$(free_port)
"$TARGET/release/examples/mock_upstream" "127.0.0.1:$MOCK_H2" --tls "$PKI/cert.pem" "$PKI/key.pem" 2>"$WORK/mock_h2.log" &
PIDS+=($!)
MOCK_H1=$(free_port)
"$TARGET/release/examples/mock_upstream" "127.0.0.1:$MOCK_H1" --tls "$PKI/cert.pem" "$PKI/key.pem" --h1 2>"$WORK/mock_h1.log" &
PIDS+=($!)
wait_port "$MOCK_H2"
wait_port "$MOCK_H1"

NGINX_UPSTREAM_TLS="$MOCK_H1:$PKI/ca.pem" start_nginx /elevenlabs/ /openai/

# Starts spendgate against the HTTPS mock on port $1; sets PROXY, ADMIN and PROXY_PID.
start_proxy() {
  start_spendgate "$BIN" "  elevenlabs: {kind: elevenlabs, prefix: /elevenlabs, upstream: \"https://localhost:$1\", tls_ca_file: \"$PKI/ca.pem\"}
  openai: {kind: openai, prefix: /openai, upstream: \"https://localhost:$1\", tls_ca_file: \"$PKI/ca.pem\"}"
}

declare -A RESULT SINGLE
TTS=bench/tts.lua
CHAT=bench/chat.lua
tts_path=/v1/text-to-speech/voice
chat_path=/v1/chat/completions
RESULT[nginx]=$(load $TTS "http://127.0.0.1:$NGINX/elevenlabs$tts_path" "${NGINX_PROCS[@]}")
SINGLE[nginx]=$(single $TTS "http://127.0.0.1:$NGINX/elevenlabs$tts_path")
RESULT[nginx_sse]=$(STREAM=1 load $CHAT "http://127.0.0.1:$NGINX/openai$chat_path" "${NGINX_PROCS[@]}")
for v in h1 h2; do
  port=MOCK_${v^^}
  start_proxy "${!port}"
  RESULT[$v]=$(load $TTS "http://127.0.0.1:$PROXY/elevenlabs$tts_path" "$PROXY_PID")
  SINGLE[$v]=$(single $TTS "http://127.0.0.1:$PROXY/elevenlabs$tts_path")
  RESULT[${v}_sse]=$(STREAM=1 load $CHAT "http://127.0.0.1:$PROXY/openai$chat_path" "$PROXY_PID")
  stop_spendgate
done

echo
echo "wrk: $THREADS threads, $CONNECTIONS connections, $DURATION after a $WARMUP warm-up; 1-connection p50 over $DURATION."
echo "Upstream: the mock over HTTPS (ECDSA P-256 certificate from a private CA). $(nproc) CPUs shared by everything."
echo
printf "%-40s %10s %8s %9s %9s %7s %11s %8s %10s\n" "target" "req/s" "x nginx" "p50" "p99" "non-2xx" "CPU us/req" "x nginx" "p50 1conn"
for row in \
  "nginx|nginx proxy_pass https, TTS (HTTP/1.1)|nginx" \
  "h1|spendgate, TTS, upstream HTTP/1.1|nginx" \
  "h2|spendgate, TTS, upstream HTTP/2|nginx" \
  "nginx_sse|nginx proxy_pass https, chat SSE|nginx_sse" \
  "h1_sse|spendgate, chat SSE, upstream HTTP/1.1|nginx_sse" \
  "h2_sse|spendgate, chat SSE, upstream HTTP/2|nginx_sse"; do
  IFS='|' read -r name label ref <<<"$row"
  read -r rps p50 p99 bad cpu _ <<<"${RESULT[$name]}"
  read -r ref_rps _ _ _ ref_cpu _ <<<"${RESULT[$ref]}"
  ratio=$(awk -v a="$rps" -v b="$ref_rps" 'BEGIN { printf "%.2f", a / b }')
  cratio=$(awk -v a="$cpu" -v b="$ref_cpu" 'BEGIN { printf "%.2f", a / b }')
  printf "%-40s %10s %8s %9s %9s %7s %11s %8s %10s\n" "$label" "$rps" "$ratio" "$p50" "$p99" "$bad" "$cpu" "$cratio" "${SINGLE[$name]:--}"
done
