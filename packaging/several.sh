#!/usr/bin/env bash
# Runs N voice servers on one host, for tests: each on its own ports
# (LVSP 5470+100i, gateway 5480+100i, UDP 5490+100i, metrics 5491+100i) on
# loopback, one core each, sharing one generated secret, logs in
# $DIR/server-i.log. Prints where each listens; Ctrl-C (or SIGTERM) stops
# them all. CONTROL_BIN runs that build instead of building a release one;
# VOICE_BASE_PORT moves the first port (5470).
#
#   usage: packaging/several.sh [N=3] [DIR=/tmp/voice-servers]
set -euo pipefail
n=${1:-3}
dir=${2:-/tmp/voice-servers}
cd "$(dirname "$0")/.."
first=${VOICE_BASE_PORT:-5470}
bin=${CONTROL_BIN:-}
if [ -z "$bin" ]; then
  cargo build --release --bin control
  bin=target/release/control
fi
mkdir -p "$dir"
chmod 700 "$dir"
secret=${VOICE_SECRET:-$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')}
export VOICE_SECRET=$secret
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait' EXIT INT TERM
for ((i = 0; i < n; i++)); do
  base=$((first + 100 * i))
  "$bin" \
    --lvsp-listen "127.0.0.1:$base" \
    --gateway-listen "127.0.0.1:$((base + 10))" \
    --udp-bind "127.0.0.1:$((base + 20))" \
    --metrics-listen "127.0.0.1:$((base + 21))" \
    --self-signed-cert "$dir/cert-$i.pem" \
    --cores 1 >"$dir/server-$i.out" 2>"$dir/server-$i.log" &
  pids+=($!)
done
for ((i = 0; i < n; i++)); do
  # Each prints its addresses once ready; `shm:` is its last line.
  for _ in $(seq 100); do
    grep -q '^shm:' "$dir/server-$i.out" 2>/dev/null && break
    sleep 0.1
  done
  echo "server $i:"
  grep -E '^(lvsp|gateway|udp|metrics|cert):' "$dir/server-$i.out" | sed 's/^/  /'
done
echo "secret in VOICE_SECRET (not printed); Ctrl-C stops them"
wait -n || true
