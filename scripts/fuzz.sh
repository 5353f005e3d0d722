#!/usr/bin/env bash
# Bounded coverage-guided fuzzing (cargo fuzz / libFuzzer, AddressSanitizer) of the
# parsers an attacker reaches: access tokens, signed documents, routing snapshots, request
# paths and headers, and our HTTP/1.1 (request heads, chunked bodies, upstream answers, and
# the same bytes served by ours and by hyper's server, compared). Each target runs for
# FUZZ_SECONDS (default 60) from the committed seeds plus the corpus of earlier runs; a
# crash leaves its input in fuzz/artifacts/<target>/ and makes this script exit non-zero.
# Turn every crash into a regression test next to the code it broke (see docs/security.md).
#
#   ./scripts/fuzz.sh                 # every target, 60 s each
#   FUZZ_SECONDS=600 ./scripts/fuzz.sh request_guard
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-60}"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(jwt_verify signed_document routing_snapshot request_guard
    h1_request_head h1_chunked h1_answer h1_differential)
fi

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "fuzz: needs the nightly toolchain (rustup toolchain install nightly)" >&2
  exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz from crates.io"
  cargo install cargo-fuzz --locked
fi

cargo +nightly fuzz build -O
mkdir -p target/fuzz-logs
failed=()
for target in "${targets[@]}"; do
  corpus="fuzz/corpus/$target"
  log="target/fuzz-logs/$target.log"
  mkdir -p "$corpus"
  echo "== $target: ${seconds}s (log: $log)"
  # -max_len bounds inputs to what the gateway accepts at most (16 KiB of headers)
  status=0
  cargo +nightly fuzz run -O "$target" "$corpus" "fuzz/seeds/$target" -- \
    -max_total_time="$seconds" -max_len=16384 -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 >"$log" 2>&1 || status=$?
  grep -E "^stat::(number_of_executed_units|average_exec_per_sec|new_units_added|peak_rss_mb)|^SUMMARY|panicked at|Test unit written" "$log" || true
  if [ "$status" -ne 0 ]; then
    failed+=("$target")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: crashes in ${failed[*]}; inputs under fuzz/artifacts/" >&2
  exit 1
fi
echo "fuzz: no crash in ${targets[*]} (${seconds}s each)"
