#!/usr/bin/env bash
# The whole test suite: a current nats-server, the pinned Python gRPC clients, Debian's
# chromium (a real browser for the CORS test) and schemathesis (the API contract test) for
# the tests, every binary built once (the end-to-end tests run them as processes), then
# unit and integration tests.
set -euo pipefail
cd "$(dirname "$0")/.."

NATS_SERVER_BIN="$(scripts/ensure-nats.sh)"
export NATS_SERVER_BIN
echo "using nats-server: $NATS_SERVER_BIN ($("$NATS_SERVER_BIN" --version))"
scripts/ensure-python-clients.sh
CHROMIUM_BIN="$(scripts/ensure-browser.sh)"
export CHROMIUM_BIN
SCHEMATHESIS_BIN="$(scripts/ensure-schemathesis.sh)"
export SCHEMATHESIS_BIN

cargo build --workspace --bins --locked
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
