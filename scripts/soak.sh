#!/usr/bin/env bash
# Bounded soak (issue 8, seed 10.4): both planes as processes on a fresh NATS, two
# reference nodes, client traffic through the data plane while routing, keys and roles
# keep changing. Prints per-window requests, errors, latency percentiles and both planes'
# RSS; exits 1 on any unexpected answer or RSS growth past the bound. Loopback only; stops
# by itself after SOAK_SECONDS (default 180) plus start-up. Not run in CI.
#
#   ./scripts/soak.sh                       # 180 s
#   SOAK_SECONDS=600 ./scripts/soak.sh --clients 16
set -euo pipefail
cd "$(dirname "$0")/.."

NATS_SERVER_BIN="$(scripts/ensure-nats.sh)"
export NATS_SERVER_BIN
# the same debug binaries the tests use: one build, no second profile
cargo build --workspace --bins --locked
exec target/debug/soak --seconds "${SOAK_SECONDS:-180}" "$@"
