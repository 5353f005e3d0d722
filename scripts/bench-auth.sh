#!/usr/bin/env bash
# Authentication figures (see docs/benchmarks.md): a release control plane on a fresh
# nats-server, both on loopback, with the shipped Argon2 parameters; prints the figures.
# Bounded: a few hundred requests, stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

NATS_SERVER_BIN="$(scripts/ensure-nats.sh)"
cargo build --release --locked -p control-plane -p gateway-tests --bin control-plane --bin auth-bench >&2
work="$(mktemp -d)"
cleanup() { kill "${cp_pid:-}" "${nats_pid:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

"$NATS_SERVER_BIN" -a 127.0.0.1 -p -1 -js -sd "$work/js" --ports_file_dir "$work" >/dev/null 2>&1 &
nats_pid=$!
for _ in $(seq 1 100); do ls "$work"/nats-server_*.ports >/dev/null 2>&1 && break; sleep 0.05; done
nats_url=$(python3 -c "import json,glob;print(json.load(open(glob.glob('$work/nats-server_*.ports')[0]))['nats'][0])")

target/release/control-plane keygen --out-dir "$work/keys" >/dev/null
target/release/control-plane --listen 127.0.0.1:0 --nats-url "$nats_url" --store-prefix bench_ \
  --snapshot-signing-key-file "$work/keys/snapshot-signing.pem" \
  --key-encryption-key-file "$work/keys/key-encryption.key" \
  --mail-outbox "$work/outbox.txt" --log warn,control_plane=info \
  --limit-signup-per-ip 1000/m --limit-signin-per-ip 100000/m >"$work/cp.log" 2>&1 &
cp_pid=$!
addr=""
for _ in $(seq 1 200); do
  addr=$(grep -o '"addr":"[^"]*"' "$work/cp.log" | head -1 | cut -d'"' -f4 || true)
  [ -n "$addr" ] && break
  sleep 0.05
done
[ -n "$addr" ] || { cat "$work/cp.log" >&2; exit 1; }
target/release/auth-bench --base "http://$addr" "$@"
