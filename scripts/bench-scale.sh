#!/usr/bin/env bash
# The data plane's mirrors at scale (docs/benchmarks.md, "Mirrors at scale"): a fresh
# nats-server on loopback, 100,000 principals' signed documents and a routing document
# placing 100,000 tenants, then the release data plane: time to ready, memory, routing
# swaps, role-change propagation, and ready from its cache file with NATS unreachable.
# Prints a markdown table against the targets. Bounded (about 5 minutes after the build);
# stops by itself. Not run in CI.
#
# Knobs (environment): BENCH_PRINCIPALS (100000), BENCH_TENANTS (100000),
# BENCH_ROLE_CHANGES (200), BENCH_ROUTING_REVISIONS (5).
set -euo pipefail
cd "$(dirname "$0")/.."

NATS_SERVER_BIN="$(scripts/ensure-nats.sh)"
cargo build --release --locked -p data-plane -p gateway-tests --bin data-plane --bin scale-bench >&2
work="$(mktemp -d)"
cleanup() { kill "${nats_pid:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

"$NATS_SERVER_BIN" -a 127.0.0.1 -p -1 -js -sd "$work/js" --ports_file_dir "$work" >/dev/null 2>&1 &
nats_pid=$!
for _ in $(seq 1 100); do ls "$work"/nats-server_*.ports >/dev/null 2>&1 && break; sleep 0.05; done
nats_url=$(python3 -c "import json,glob;print(json.load(open(glob.glob('$work/nats-server_*.ports')[0]))['nats'][0])")

echo "scale-bench: $(nproc) cores, $("$NATS_SERVER_BIN" --version)" >&2
target/release/scale-bench --nats-url "$nats_url" --data-plane-bin target/release/data-plane \
  --work-dir "$work/run" --principals "${BENCH_PRINCIPALS:-100000}" \
  --tenants "${BENCH_TENANTS:-100000}" --role-changes "${BENCH_ROLE_CHANGES:-200}" \
  --routing-revisions "${BENCH_ROUTING_REVISIONS:-5}" || {
  status=$?
  for log in "$work"/run/data-plane-*.log; do [ -f "$log" ] && { echo "$log (last lines):" >&2; tail -n 20 "$log" >&2; }; done
  exit "$status"
}
