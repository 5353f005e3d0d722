#!/usr/bin/env bash
# IAM propagation figures (see docs/benchmarks.md): a release control plane and data plane
# on a fresh nats-server on loopback; times admin changes until the signed documents are
# seen and until the data plane's decision changes (role change, global and one-session sign-out), and a
# role change fanning out to many holders. Bounded; stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

NATS_SERVER_BIN="$(scripts/ensure-nats.sh)"
cargo build --release --locked -p control-plane -p data-plane -p gateway-tests --bin control-plane \
  --bin data-plane --bin iam-bench >&2
work="$(mktemp -d)"
cleanup() { status=$?; kill "${cp_pid:-}" "${dp_pid:-}" "${nats_pid:-}" 2>/dev/null || true; wait 2>/dev/null || true; if [ "$status" != 0 ]; then for log in cp dp; do [ -f "$work/$log.log" ] && { echo "$log log (last lines):" >&2; tail -n 20 "$work/$log.log" >&2; }; done; fi; rm -rf "$work"; }
trap cleanup EXIT

"$NATS_SERVER_BIN" -a 127.0.0.1 -p -1 -js -sd "$work/js" --ports_file_dir "$work" >/dev/null 2>&1 &
nats_pid=$!
for _ in $(seq 1 100); do ls "$work"/nats-server_*.ports >/dev/null 2>&1 && break; sleep 0.05; done
nats_url=$(python3 -c "import json,glob;print(json.load(open(glob.glob('$work/nats-server_*.ports')[0]))['nats'][0])")

# the address a plane logged in its JSON start line (field name), within 10 s
logged_addr() { # log file, field
  local found=""
  for _ in $(seq 1 200); do
    found=$(grep -o "\"$2\":\"[^\"]*\"" "$1" | head -1 | cut -d'"' -f4 || true)
    [ -n "$found" ] && { echo "$found"; return 0; }
    sleep 0.05
  done
  cat "$1" >&2
  exit 1
}

target/release/control-plane keygen --out-dir "$work/keys" >/dev/null
printf 'quartz meadow bicycle harbour' > "$work/admin-password"
target/release/control-plane --listen 127.0.0.1:0 --nats-url "$nats_url" --store-prefix bench_ \
  --snapshot-signing-key-file "$work/keys/snapshot-signing.pem" \
  --key-encryption-key-file "$work/keys/key-encryption.key" \
  --mail-outbox "$work/outbox.txt" --log warn,control_plane=info \
  --bootstrap-admin-email admin@bench.test --bootstrap-admin-password-file "$work/admin-password" \
  --limit-signin-per-ip 100000/m >"$work/cp.log" 2>&1 &
cp_pid=$!
addr="$(logged_addr "$work/cp.log" addr)"
# a data plane on the same store: the decision figures ask it
target/release/data-plane --listen 127.0.0.1:0 --grpc-listen 127.0.0.1:0 --ops-listen 127.0.0.1:0 \
  --nats-url "$nats_url" --store-prefix bench_ --snapshot-verify-key-file "$work/keys/snapshot-verify.pem" \
  --log warn,data_plane=info >"$work/dp.log" 2>&1 &
dp_pid=$!
dp_addr="$(logged_addr "$work/dp.log" http_addr)"
target/release/iam-bench --base "http://$addr" --nats-url "$nats_url" --store-prefix bench_ \
  --admin-email admin@bench.test --admin-password-file "$work/admin-password" \
  --data-plane "http://$dp_addr" "$@"
