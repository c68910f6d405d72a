#!/usr/bin/env bash
# The test command: installs what the tests need on a Debian machine when it is missing
# (redis-server and redis-cli for the Redis store, promtool for the alert rules, Chromium for
# the dashboard, openssl for the TLS test, python3-venv for the official SDKs), then runs the
# whole suite. Extra arguments go to `cargo test` (e.g. a test name filter).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v redis-cli >/dev/null || need+=(redis-tools)
command -v promtool >/dev/null || need+=(prometheus)
command -v chromium >/dev/null || need+=(chromium)
command -v openssl >/dev/null || need+=(openssl)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
# The packaged services are not needed: the tests start their own on free ports.
if command -v systemctl >/dev/null 2>&1; then
  systemctl stop redis-server prometheus >/dev/null 2>&1 || true
fi

# A one-off build gains nothing from incremental state, which doubles the target's size.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
exec cargo test --locked "$@"
