# Shared by the bench scripts (sourced, not run): builds the release binaries, makes a work
# directory cleaned up on exit with every started process, and starts the mock upstream.
# Sets WORK, PIDS, MOCK (the mock's port) and TICKS; defines cpu_ticks, wait_ready and
# start_nginx.
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
    [ -r "/proc/$pid/stat" ] || continue
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
# port) and NGINX_PROCS (its processes, for cpu_ticks).
start_nginx() {
  NGINX=$(free_port)
  mkdir -p "$WORK/nginx"
  local locations="" prefix
  for prefix in "$@"; do
    locations+="    location $prefix { proxy_pass http://mock/; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_buffering off; }
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
  upstream mock { server 127.0.0.1:$MOCK; keepalive 128; }
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
