#!/usr/bin/env bash
# The local run: control plane, data plane and the reference upstream node in one process
# on the embedded store (.gateway-dev/), no NATS needed. Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo run --locked --bin gateway-dev -- "$@"
