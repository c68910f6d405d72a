# Shared by the bench scripts (sourced, not run): builds the release binaries, makes a work
# directory cleaned up on exit with every started process, and starts the mock upstream.
# Sets WORK, PIDS, MOCK (the mock's port) and TICKS; defines cpu_ticks, wait_ready,
# start_nginx, start_spendgate, stop_spendgate, load, single and us.
# Needs TARGET.

cargo build --release --bin spendgate --example mock_upstream >&2

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

TICKS=$(getconf CLK_TCK)

# CPU time (user + system, in clock ticks) of the processes given, threads included.
cpu_ticks() {
  local total=0 pid
  for pid in "$@"; do
    [ -n "$pid" ] && [ -r "/proc/$pid/stat" ] || continue
    total=$((total + $(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$pid/stat")))
  done
  echo "$total"
}

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
wait_port "$MOCK"

# The reference: nginx proxy_pass to the mock with upstream keepalive, one worker per CPU, no
# access log, no buffering, for each path prefix given (`/elevenlabs/`, ...). Sets NGINX (its
# port) and NGINX_PROCS (its processes, for cpu_ticks). With NGINX_UPSTREAM_TLS=PORT:CA it
# proxies to an HTTPS mock on that port instead, verifying its certificate (name localhost)
# against the CA file and reusing TLS sessions.
start_nginx() {
  NGINX=$(free_port)
  mkdir -p "$WORK/nginx"
  local locations="" prefix scheme=http server="127.0.0.1:$MOCK" tls=""
  if [ -n "${NGINX_UPSTREAM_TLS:-}" ]; then
    scheme=https
    server="127.0.0.1:${NGINX_UPSTREAM_TLS%%:*}"
    tls="proxy_ssl_verify on; proxy_ssl_trusted_certificate ${NGINX_UPSTREAM_TLS#*:}; proxy_ssl_name localhost; proxy_ssl_server_name on; proxy_ssl_session_reuse on;"
  fi
  for prefix in "$@"; do
    locations+="    location $prefix { proxy_pass $scheme://mock/; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_buffering off; $tls }
"
  done
  cat >"$WORK/nginx/nginx.conf" <<NGINX
worker_processes auto;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx/body;
  proxy_temp_path $WORK/nginx/proxy;
  upstream mock { server $server; keepalive 128; }
  server {
    listen 127.0.0.1:$NGINX;
$locations  }
}
NGINX
  nginx -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" -g 'daemon off;' &
  local pid=$!
  PIDS+=("$pid")
  wait_port "$NGINX"
  NGINX_PROCS=("$pid" $(pgrep -P "$pid"))
}

# Waits until spendgate's admin port ($1) answers /readyz; prints its log ($2) and exits if
# it does not.
wait_ready() {
  wait_port "$1"
  for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$1/readyz" >/dev/null && return 0
    sleep 0.05
  done
  echo "spendgate did not become ready:" >&2
  cat "$2" >&2
  exit 1
}

# Runs wrk with a Lua script against a URL (a warm-up first) while measuring the CPU of the
# processes given (and of REDIS_PID when set); prints "req/s p50 p99 non-2xx
# cpu_us_per_request redis_cpu_us_per_request". Needs THREADS, CONNECTIONS, WARMUP, DURATION.
load() {
  local script=$1 url=$2
  shift 2
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$WARMUP" -s "$script" "$url" >/dev/null
  local before redis_before after redis_after
  before=$(cpu_ticks "$@")
  redis_before=$(cpu_ticks "${REDIS_PID:-}")
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s "$script" "$url" >"$WORK/wrk.out"
  after=$(cpu_ticks "$@")
  redis_after=$(cpu_ticks "${REDIS_PID:-}")
  awk -v cpu=$((after - before)) -v rcpu=$((redis_after - redis_before)) -v hz="$TICKS" '
    /^Requests\/sec:/ { rps = $2 }
    /requests in/ { n = $1 }
    /^ +50%/ { p50 = $2 }
    /^ +99%/ { p99 = $2 }
    /Non-2xx or 3xx responses:/ { bad = $5 }
    END { printf "%s %s %s %s %.1f %.1f\n", rps, p50, p99, (bad == "" ? 0 : bad), cpu * 1e6 / hz / n, rcpu * 1e6 / hz / n }
  ' "$WORK/wrk.out"
}

# p50 with one connection (the latency one request sees), for a script and a URL.
single() {
  wrk -t1 -c1 -d2s -s "$1" "$2" >/dev/null
  wrk -t1 -c1 -d"$DURATION" --latency -s "$1" "$2" | awk '/^ +50%/ { print $2 }'
}

# A wrk latency (`52.3us`, `1.2ms`) in microseconds.
us() {
  awk -v v="$1" 'BEGIN {
    n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
    if (u == "us") print n; else if (u == "ms") print n * 1000; else if (u == "s") print n * 1e6; else print n
  }'
}

# Starts the spendgate binary $1 in a fresh $WORK/run (its database lands there) with the
# provider lines $2 (YAML under `providers:`), limits no load reaches, and the extra top-level
# YAML $3; sets PROXY, ADMIN and PROXY_PID.
start_spendgate() {
  local bin=$1 providers=$2 extra=${3:-}
  PROXY=$(free_port)
  ADMIN=$(free_port)
  rm -rf "$WORK/run" && mkdir -p "$WORK/run"
  cat >"$WORK/run/spendgate.yaml" <<YAML
listen: "127.0.0.1:$PROXY"
admin:
  listen: "127.0.0.1:$ADMIN"
providers:
$providers
limits:
  default_profile:
    - {metric: cost_usd, window: monthly, max: 1000000000}
    - {metric: requests, window: daily, max: 1000000000}
$extra
YAML
  (cd "$WORK/run" && RUST_LOG=warn exec "$bin" --config spendgate.yaml 2>"$WORK/run/spendgate.log") &
  PROXY_PID=$!
  PIDS+=("$PROXY_PID")
  wait_ready "$ADMIN" "$WORK/run/spendgate.log"
}

stop_spendgate() {
  kill "$PROXY_PID"
  wait "$PROXY_PID" 2>/dev/null || true
}
