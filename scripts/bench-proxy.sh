#!/usr/bin/env bash
# Side-by-side figures of the data plane against HAProxy 2.6 + jwt_verify, following the
# protocol in docs/bench-protocol.md: an nginx upstream and
# wrk on core 1, the proxy under test alone on core 0 with one thread, the same policy and
# answers on both sides (checked before timing), 1,000 distinct users with rotating ES256
# tokens, 3 interleaved repetitions. Prints a markdown table. Loopback only; bounded (about
# 6 minutes after the build) and stops by itself. Not run in CI.
#
# Knobs (environment): BENCH_REPS (3), BENCH_DURATION (10, seconds), BENCH_WARMUP (2),
# BENCH_CONNECTIONS (50), BENCH_PRINCIPALS (1000), BENCH_SCENARIOS (all of: direct
# haproxy_plain haproxy_jwt haproxy_full ours ours_nocache), BENCH_LATENCY (1: latency at a
# fixed rate, half of the slowest proxy's maximum, with `proxy-bench latency`; 0: skip),
# BENCH_PROFILE (0; 1: a perf profile of ours under load after the repetitions, in
# target/bench-profile.txt, and of HAProxy plain under the same load, in
# target/bench-profile-haproxy_plain.txt; by library and by symbol, the kernel's
# included), BENCH_CALLGRIND (0; 1: instructions per request of ours by
# function, inclusive, under valgrind's callgrind, in target/bench-callgrind.txt; exact
# counts, not disturbed by a noisy machine), BENCH_SYSCALLS (0; 1: system calls per request
# of ours and of HAProxy plain under the same load, counted with strace -c; and the TCP
# segments per request of the whole chain through each, counted with nstat), BENCH_GRPC (1:
# gRPC SubmitCommand through ours against the reference upstream directly, 2 rounds),
# BENCH_BASELINE_BIN (unset; a path to another build's data-plane binary: run as scenario
# `baseline` with the same flags, interleaved with ours in the repetitions and the latency
# rounds, so a change is compared with its baseline in the same run on the same machine),
# BENCH_STREAM (1: the streamed-body figure: 100 MB answers and uploads, with a length and
# chunked, through ours and HAProxy plain against a large-body upstream, with each proxy's
# resident memory before and its peak during the transfers; 0: skip),
# BENCH_BASELINE_FLAGS (unset; extra data-plane flags of the baseline scenario; with no
# BENCH_BASELINE_BIN the baseline is this build: e.g. BENCH_BASELINE_FLAGS=assertion signs
# an identity assertion for every forwarded call, `assertion` standing for
# --assertion-signing-key-file with a fresh P-256 key), BENCH_UPSTREAM_NICE (0; the nice
# value nginx runs at, e.g. -10 to let the upstream preempt the load tool it shares core 1
# with: an experiment on the tail at half load, not the protocol), BENCH_SCHED (0; 1: in the
# first latency round, 3 s of scheduler events per target with `perf sched`, and each task's
# delay from its wake-up to its run in target/bench-sched-<target>.txt; perf disturbs that
# round), BENCH_QUIET_KTHREADS (1: kernel threads that work in bursts of milliseconds, DAMON's
# kdamond, run as SCHED_IDLE until the end; 0: left as they are).
set -euo pipefail
cd "$(dirname "$0")/.."

REPS="${BENCH_REPS:-3}"
DURATION="${BENCH_DURATION:-10}"
WARMUP="${BENCH_WARMUP:-2}"
CONNS="${BENCH_CONNECTIONS:-50}"
PRINCIPALS="${BENCH_PRINCIPALS:-1000}"
LATENCY="${BENCH_LATENCY:-1}"
SCENARIOS="${BENCH_SCENARIOS:-direct haproxy_plain haproxy_jwt haproxy_full ours ours_nocache}"
BASELINE_BIN="${BENCH_BASELINE_BIN:-}"
BASELINE_FLAGS="${BENCH_BASELINE_FLAGS:-}"
if [ -n "$BASELINE_FLAGS" ] && [ -z "$BASELINE_BIN" ]; then
  BASELINE_BIN="target/release/data-plane"
fi
if [ -n "$BASELINE_BIN" ]; then
  # this build is made below; another build must exist already
  if [ "$BASELINE_BIN" != "target/release/data-plane" ]; then
    [ -x "$BASELINE_BIN" ] || { echo "bench-proxy: BENCH_BASELINE_BIN=$BASELINE_BIN is not an executable" >&2; exit 1; }
  fi
  SCENARIOS="$SCENARIOS baseline"
fi
PREFIX="bench_"
TENANT="bench"
STREAM_TENANT="bench-stream"
PATH_Q="/v1/query/bench-view"

log() { echo "bench-proxy: $*" >&2; }
die() { echo "bench-proxy: FAILED: $*" >&2; exit 1; }

[ "$(nproc)" -ge 2 ] || die "needs 2 cores (proxy on core 0, upstream and wrk on core 1)"

# 1. tools (Debian packages, only when missing)
missing=()
for pkg in haproxy wrk nginx; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing ${missing[*]}"
  apt-get update -qq >&2
  # the packages' own services are not started in containers; ours are started by hand below
  apt-get install -y -qq "${missing[@]}" >&2
fi
HAPROXY_BIN="$(command -v haproxy || echo /usr/sbin/haproxy)"
NGINX_BIN="$(command -v nginx || echo /usr/sbin/nginx)"
# sed reads to the end: `head -1` could close the pipe early and fail the script (SIGPIPE)
haproxy_version="$("$HAPROXY_BIN" -v | sed -n 1p)"
case "$haproxy_version" in *" 2.6."*) ;; *) log "warning: the baseline is HAProxy 2.6, found: $haproxy_version" ;; esac

# 2. nats-server and the release binaries (one build)
NATS_SERVER_BIN="$(scripts/ensure-nats.sh)"
cargo build --release --locked -p data-plane -p gateway-tests --bin data-plane --bin proxy-bench \
  --bin reference-upstream >&2

work="$(mktemp -d)"
pids=()
quieted=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for pid in "${quieted[@]}"; do chrt -o -p 0 "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# Kernel threads that work in bursts of milliseconds run as SCHED_IDLE until the bench
# ends: they then take a core only when it has nothing else to run, and cannot stall the
# proxy under test or the load tool. On this kind of virtual machine that is DAMON's
# kdamond (memory monitoring for the hypervisor): 2-8 ms every half second, mostly on
# core 0, measured with perf sched (docs/benchmarks.md, fifteenth comparison).
if [ "${BENCH_QUIET_KTHREADS:-1}" = 1 ]; then
  for pid in $(pgrep -x 'kdamond\.[0-9]+' || true); do
    if chrt -p "$pid" 2>/dev/null | grep -q SCHED_OTHER && chrt -i -p 0 "$pid" 2>/dev/null; then
      quieted+=("$pid")
      log "kernel thread $(cat "/proc/$pid/comm") runs as SCHED_IDLE until the end"
    fi
  done
fi
QUIETED="$(for pid in "${quieted[@]}"; do cat "/proc/$pid/comm"; done | paste -sd, -)"

# free loopback ports: upstream, haproxy plain/jwt/full, and http/grpc/ops for each of our two
# data planes (as shipped, and with the token cache off)
read -r P_UP P_PLAIN P_JWT P_FULL P_OURS P_GRPC P_OPS P_NC P_NC_GRPC P_NC_OPS P_REF P_REF_GRPC P_BASE P_BASE_GRPC P_BASE_OPS P_STREAM P_HSTREAM < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(17)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])
for s in socks: s.close()')

wait_http() { # url, what
  for _ in $(seq 1 200); do
    curl -s -o /dev/null --max-time 1 "$1" && return 0
    sleep 0.05
  done
  die "$2 did not come up at $1"
}

# NATS on core 1: idle while timing (the data plane only watches), but kept off core 0
taskset -c 1 "$NATS_SERVER_BIN" -a 127.0.0.1 -p -1 -js -sd "$work/js" --ports_file_dir "$work" >/dev/null 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do ls "$work"/nats-server_*.ports >/dev/null 2>&1 && break; sleep 0.05; done
nats_url=$(python3 -c "import json,glob;print(json.load(open(glob.glob('$work/nats-server_*.ports')[0]))['nats'][0])")

# 4a. upstream: nginx, one worker, core 1
sed -e "s#@WORK@#$work#g" -e "s#@UPSTREAM_ADDR@#127.0.0.1:$P_UP#g" bench/nginx-upstream.conf >"$work/nginx.conf"
taskset -c 1 nice -n "${BENCH_UPSTREAM_NICE:-0}" "$NGINX_BIN" -p "$work" -e "$work/nginx-error.log" -c "$work/nginx.conf" &
pids+=($!)
wait_http "http://127.0.0.1:$P_UP/" nginx
# the reference upstream (the aggregate's gRPC contract) for SubmitCommand, core 1
taskset -c 1 target/release/reference-upstream --name bench-agg --http-listen "127.0.0.1:$P_REF" \
  --grpc-listen "127.0.0.1:$P_REF_GRPC" >"$work/reference-upstream.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$P_REF/health" "reference upstream"
# the large-body upstream of the streamed-body figure, core 1
taskset -c 1 target/release/proxy-bench stream-upstream --listen "127.0.0.1:$P_STREAM" \
  >"$work/stream-upstream.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$P_STREAM/" "stream upstream"

# 3. documents, keys and tokens
setup="$work/setup"
taskset -c 0 target/release/proxy-bench setup --nats-url "$nats_url" --store-prefix "$PREFIX" --out-dir "$setup" \
  --upstream "http://127.0.0.1:$P_UP" --aggregate-upstream "http://127.0.0.1:$P_REF_GRPC" \
  --stream-upstream "http://127.0.0.1:$P_STREAM" --stream-tenant "$STREAM_TENANT" \
  --tenant "$TENANT" --principals "$PRINCIPALS" >&2
# baselines on core 0 while it is idle: one ES256 check in our verifier (setup measured it)
# and one P-256 verify in OpenSSL, the library HAProxy's jwt_verify uses
OURS_VERIFY_US="$(cat "$setup/verify-us.txt")"
OPENSSL_VERIFY_US="$(cd "$work" && taskset -c 0 openssl speed -seconds 2 ecdsap256 2>/dev/null \
  | awk '/nistp256/{printf "%.1f", 1e6 / $NF}' || true)"
ISSUER="$(cat "$setup/issuer.txt")"
AUDIENCE="$(cat "$setup/audience.txt")"

# 4b. HAProxy, one thread, core 0
sed -e "s#@UPSTREAM_ADDR@#127.0.0.1:$P_UP#" -e "s#@PLAIN_ADDR@#127.0.0.1:$P_PLAIN#" \
  -e "s#@JWT_ADDR@#127.0.0.1:$P_JWT#" -e "s#@FULL_ADDR@#127.0.0.1:$P_FULL#" \
  -e "s#@STREAM_ADDR@#127.0.0.1:$P_HSTREAM#" -e "s#@STREAM_UPSTREAM_ADDR@#127.0.0.1:$P_STREAM#" \
  -e "s#@ES256_PUBLIC_PEM@#$setup/es256-public.pem#g" -e "s#@RBAC_MAP@#$setup/rbac.map#g" \
  -e "s#@ISSUER@#$ISSUER#" -e "s#@AUDIENCE@#$AUDIENCE#" bench/haproxy-peer.cfg >"$work/haproxy.cfg"
! grep -n '@[A-Z0-9_]*@' "$work/haproxy.cfg" || die "unfilled placeholder in the HAProxy config"
"$HAPROXY_BIN" -q -c -f "$work/haproxy.cfg" >&2 || die "HAProxy refuses the config"
taskset -c 0 "$HAPROXY_BIN" -db -f "$work/haproxy.cfg" >"$work/haproxy.log" 2>&1 &
haproxy_pid=$!
pids+=("$haproxy_pid")
wait_http "http://127.0.0.1:$P_PLAIN/" haproxy

# 4c. our data planes, one tokio worker each, core 0, no per-request logging (--log warn):
# as shipped (its cache of verified tokens on, default size), and with the cache off
# (--token-cache-size 0: every request verifies its ES256 signature, as HAProxy does). Only
# the one under test gets traffic.
DP_WRAPPER=() # a command ours runs under (valgrind)
start_data_plane() { # name, http port, grpc port, ops port, extra flags...
  local name="$1" http="$2" grpc="$3" ops="$4" loaded=0 polls=200
  [ "${#DP_WRAPPER[@]}" -gt 0 ] && polls=2000 # valgrind starts ~50x slower
  shift 4
  local binary="${DP_BINARY:-target/release/data-plane}"
  TOKIO_WORKER_THREADS=1 taskset -c 0 "${DP_WRAPPER[@]}" "$binary" \
    --listen "127.0.0.1:$http" --grpc-listen "127.0.0.1:$grpc" --ops-listen "127.0.0.1:$ops" \
    --nats-url "$nats_url" --store-prefix "$PREFIX" \
    --snapshot-verify-key-file "$setup/snapshot-verify.pem" \
    --token-issuer "$ISSUER" --token-audience "$AUDIENCE" \
    --log warn "$@" >"$work/$name.log" 2>&1 &
  pids+=($!)
  eval "${name}_pid=$!"
  for _ in $(seq 1 "$polls"); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://127.0.0.1:$ops/ready")" = 200 ] && break
    sleep 0.05
  done
  [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$ops/ready")" = 200 ] \
    || { cat "$work/$name.log" >&2; die "data plane $name is not ready"; }
  # every principal document mirrored (members + the outsider)
  for _ in $(seq 1 "$polls"); do
    loaded=$(curl -s "http://127.0.0.1:$ops/metrics" | awk '/^gateway_authz_principals /{print int($2)}')
    [ "${loaded:-0}" -ge $((PRINCIPALS + 1)) ] && break
    sleep 0.05
  done
  [ "${loaded:-0}" -ge $((PRINCIPALS + 1)) ] \
    || die "data plane $name mirrored ${loaded:-0} of $((PRINCIPALS + 1)) principals"
}
# (ours forwards bodies up to 200 MiB for the streamed-body figure; bodies of the timed runs
# are 2 bytes)
start_data_plane ours "$P_OURS" "$P_GRPC" "$P_OPS" --max-body-bytes 209715200
start_data_plane ours_nocache "$P_NC" "$P_NC_GRPC" "$P_NC_OPS" --token-cache-size 0
if [ -n "$BASELINE_BIN" ]; then
  baseline_flags=()
  for flag in $BASELINE_FLAGS; do
    if [ "$flag" = assertion ]; then
      openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$work/assertion.pem" 2>/dev/null
      baseline_flags+=(--assertion-signing-key-file "$work/assertion.pem")
    else
      baseline_flags+=("$flag")
    fi
  done
  DP_BINARY="$BASELINE_BIN" start_data_plane baseline "$P_BASE" "$P_BASE_GRPC" "$P_BASE_OPS" "${baseline_flags[@]}"
fi

# 5. the same answers on both sides before timing anything
status() { # url, token file or "" (no Authorization header)
  local auth=()
  [ -n "$2" ] && auth=(-H "authorization: Bearer $(cat "$2")")
  curl -s -o /dev/null -w '%{http_code}' --max-time 5 -X POST "$1$PATH_Q" \
    -H 'content-type: application/json' -H "x-tenant-id: $TENANT" "${auth[@]}" -d '{}'
}
head -1 "$setup/tokens.txt" >"$setup/valid.jwt"
tail -1 "$setup/tokens.txt" >"$setup/valid-last.jwt"
cases=(
  "valid|$setup/valid.jwt|200"
  "valid (last user)|$setup/valid-last.jwt|200"
  "bad signature|$setup/neg-bad-signature.jwt|401"
  "HS256 with the public key|$setup/neg-hs256.jwt|401"
  "expired|$setup/neg-expired.jwt|401"
  "missing|-|401"
  "wrong tenant|$setup/neg-wrong-tenant.jwt|403"
)
checks="| case | expected | HAProxy jwt+policy | ours | ours, cache off | HAProxy jwt only |\n| --- | --- | --- | --- | --- | --- |\n"
bad=0
for entry in "${cases[@]}"; do
  IFS='|' read -r name file want <<<"$entry"
  [ "$file" = - ] && file=""
  theirs=$(status "http://127.0.0.1:$P_FULL" "$file")
  ours=$(status "http://127.0.0.1:$P_OURS" "$file")
  # asked twice: the second answer of the cached plane comes from its cache
  ours_again=$(status "http://127.0.0.1:$P_OURS" "$file")
  nocache=$(status "http://127.0.0.1:$P_NC" "$file")
  jwt_only=$(status "http://127.0.0.1:$P_JWT" "$file")
  checks+="| $name | $want | $theirs | $ours/$ours_again | $nocache | $jwt_only |\n"
  [ "$theirs" = "$want" ] && [ "$ours" = "$want" ] && [ "$ours_again" = "$want" ] \
    && [ "$nocache" = "$want" ] || bad=1
done
for url in "http://127.0.0.1:$P_UP" "http://127.0.0.1:$P_PLAIN"; do
  [ "$(status "$url" "$setup/valid.jwt")" = 200 ] || bad=1
done
if [ "$bad" != 0 ]; then
  printf "%b" "$checks" >&2
  tail -20 "$work/ours.log" "$work/ours_nocache.log" >&2
  die "the proxies do not give the expected answers"
fi
log "answers agree (200 valid; 401 bad signature, HS256, expired, missing; 403 wrong tenant)"
printf "%b" "$checks" >"$work/checks.md"

# 6. saturation runs: wrk on core 1, 3 interleaved repetitions
# how busy the machine is with everything else (ours are idle now): % of both cores, 2 s
busy_percent() {
  local a b
  a=($(head -1 /proc/stat)); sleep 2; b=($(head -1 /proc/stat))
  local total=0 idle=0 i
  for i in 1 2 3 4 5 6 7 8; do total=$((total + b[i] - a[i])); done
  idle=$((b[4] - a[4] + b[5] - a[5]))
  echo $((100 * (total - idle) / (total > 0 ? total : 1)))
}
BUSY_BEFORE="$(busy_percent)"
# the hypervisor's steal (time a virtual CPU wanted to run and could not), from here to the
# end of the latency rounds: "steal total" ticks
steal_ticks() { head -1 /proc/stat | awk '{t = 0; for (i = 2; i <= 9; i++) t += $i; print $9, t}'; }
read -r STEAL_0 TOTAL_0 < <(steal_ticks)
log "machine busy before timing: ${BUSY_BEFORE}% (the figures assume an otherwise idle machine)"
# user and system CPU ticks of a process, as "user sys"
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12, $13}'; }
# interrupts core 1 received from the other core to wake a task or preempt one (function
# call and rescheduling interrupts; on a virtual machine each is a VM exit for the sender)
wakeup_irqs() { awk '$1 == "CAL:" || $1 == "RES:" {n += $3} END {print n + 0}' /proc/interrupts; }
results="$work/results.tsv"
: >"$results"
run() { # repetition, scenario, url, pid or ""
  local rep="$1" name="$2" url="$3" pid="$4" before after irqs out requests rps errors non2xx
  case " $SCENARIOS " in *" $name "*) ;; *) return 0 ;; esac
  taskset -c 1 wrk -t1 -c"$CONNS" -d"${WARMUP}s" -s bench/rotating-tokens.lua "$url" -- "$setup/tokens.txt" >/dev/null
  before=$([ -n "$pid" ] && cpu_ticks "$pid" || echo 0 0)
  irqs=$(wakeup_irqs)
  out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"${DURATION}s" -s bench/rotating-tokens.lua "$url" -- "$setup/tokens.txt")
  irqs=$(($(wakeup_irqs) - irqs))
  after=$([ -n "$pid" ] && cpu_ticks "$pid" || echo 0 0)
  requests=$(awk '/requests in/{print $1}' <<<"$out")
  rps=$(awk '/^Requests\/sec:/{print $2}' <<<"$out")
  non2xx=$(awk '/Non-2xx or 3xx responses:/{print $NF}' <<<"$out")
  errors=$(awk '/Socket errors:/{print}' <<<"$out")
  [ -n "$requests" ] && [ -n "$rps" ] || { echo "$out" >&2; die "cannot read wrk's output for $name"; }
  [ -z "$non2xx" ] && [ -z "$errors" ] || { echo "$out" >&2; die "$name: errors or non-2xx answers under load"; }
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$rep" "$name" "$rps" "$requests" "${before// /,}" "${after// /,}" "$irqs" >>"$results"
  log "$(printf '%-22s %10.0f req/s' "$name" "$rps")"
}
for rep in $(seq 1 "$REPS"); do
  log "repetition $rep/$REPS"
  run "$rep" direct "http://127.0.0.1:$P_UP" ""
  run "$rep" haproxy_plain "http://127.0.0.1:$P_PLAIN" "$haproxy_pid"
  run "$rep" haproxy_jwt "http://127.0.0.1:$P_JWT" "$haproxy_pid"
  run "$rep" haproxy_full "http://127.0.0.1:$P_FULL" "$haproxy_pid"
  run "$rep" ours "http://127.0.0.1:$P_OURS" "$ours_pid"
  run "$rep" ours_nocache "http://127.0.0.1:$P_NC" "$ours_nocache_pid"
  if [ -n "$BASELINE_BIN" ]; then run "$rep" baseline "http://127.0.0.1:$P_BASE" "$baseline_pid"; fi
done
BUSY_AFTER="$(busy_percent)"
# the streamed-body figure: 100 MB each way, a length and chunked, through HAProxy plain and
# ours (curl on core 1 beside the upstream), 2 rounds; each proxy's resident memory before,
# and its peak during the transfers (VmHWM, reset first through /proc/<pid>/clear_refs)
stream_table=""
stream_memory=""
if [ "${BENCH_STREAM:-1}" = 1 ]; then
  head -c 104857600 /dev/zero >"$work/upload.bin"
  stream_token="$(head -1 "$setup/tokens.txt")"
  mem_kib() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }
  for entry in "haproxy:$P_HSTREAM:$haproxy_pid" "ours:$P_OURS:$ours_pid"; do
    IFS=: read -r name port pid <<<"$entry"
    rss_before=$(mem_kib "$pid" VmRSS)
    echo 5 >"/proc/$pid/clear_refs" 2>/dev/null || true
    for round in 1 2; do
      for what in download download-chunked upload upload-chunked; do
        extra=()
        case "$what" in
          download*) path="/v1/query/$what"; extra=(-d '{}' -H 'content-type: application/json') ;;
          # no `expect: 100-continue`: HAProxy passes it to the upstream, which does not
          # answer it, and curl then waits a second before sending (ours answers it itself)
          upload) path=/v1/query/upload; extra=(--data-binary "@$work/upload.bin" -H 'content-type: application/octet-stream' -H 'expect:') ;;
          upload-chunked) path=/v1/query/upload; extra=(--data-binary "@$work/upload.bin" -H 'content-type: application/octet-stream' -H 'transfer-encoding: chunked' -H 'expect:') ;;
        esac
        result=$(taskset -c 1 curl -s -o /dev/null --max-time 60 -X POST "http://127.0.0.1:$port$path" \
          -H "authorization: Bearer $stream_token" -H "x-tenant-id: $STREAM_TENANT" "${extra[@]}" \
          -w '%{http_code} %{size_download} %{size_upload} %{time_total}')
        read -r code down up seconds <<<"$result"
        [ "$code" = 200 ] || die "$what through $name answered $code"
        stream_table+="| $name | $round | $what | $(python3 -c "import sys;b=max(int(sys.argv[1]),int(sys.argv[2]));print(f'{b/1048576:.0f} MiB | {b/1048576/float(sys.argv[3]):.0f} MiB/s')" "$down" "$up" "$seconds") |\n"
      done
    done
    rss_after=$(mem_kib "$pid" VmRSS)
    peak=$(mem_kib "$pid" VmHWM)
    stream_memory+="| $name | $((rss_before / 1024)) MiB | $((peak / 1024)) MiB | $((rss_after / 1024)) MiB |\n"
  done
fi
# optional: where ours spends its CPU under the same load (flat profile by symbol)
grpc_table=""
if [ "${BENCH_GRPC:-1}" = 1 ]; then
  # closed loop, 50 callers over 4 HTTP/2 connections, generator on core 1 beside the
  # reference upstream; direct and through ours interleaved, 2 rounds
  for round in 1 2; do
    for entry in "direct:$P_REF_GRPC:" "ours:$P_GRPC:$ours_pid"; do
      IFS=: read -r name port pid <<<"$entry"
      before=$([ -n "$pid" ] && cpu_ticks "$pid" || echo 0 0)
      line=$(taskset -c 1 target/release/proxy-bench grpc --target "http://127.0.0.1:$port" \
        --tokens "$setup/tokens.txt" --tenant "$TENANT" --streams "$CONNS" \
        --duration "$DURATION" --warmup "$WARMUP")
      after=$([ -n "$pid" ] && cpu_ticks "$pid" || echo 0 0)
      grpc_table+="$(python3 -c '
import json, sys
r = json.loads(sys.argv[1]); name, rnd = sys.argv[2], sys.argv[3]
b, a, tck = [int(x) for x in sys.argv[4].split()], [int(x) for x in sys.argv[5].split()], int(sys.argv[6])
cpu = "—"
if name != "direct" and r["ok"]:
    cpu = "%.1f" % ((a[0] + a[1] - b[0] - b[1]) / tck * 1e6 / r["ok"])
errors = ", ".join("%s: %d" % kv for kv in r["errors"].items()) or "none"
print("| %s | %s | %.1fk | %.2f | %.2f | %s | %s |" % (name, rnd, r["rps"] / 1000, r["p50_ms"], r["p99_ms"], cpu, errors))
' "$line" "$name" "$round" "$before" "$after" "$(getconf CLK_TCK)")\n"
      log "grpc $name round $round: $line"
    done
  done
fi

syscalls_table=""
segments_table=""
if [ "${BENCH_SYSCALLS:-0}" = 1 ] && command -v strace >/dev/null; then
  # strace slows the traced process down several times; the counts per request stay exact
  for entry in "ours:$ours_pid:$P_OURS" "haproxy_plain:$haproxy_pid:$P_PLAIN"; do
    IFS=: read -r name pid port <<<"$entry"
    log "counting system calls of $name for 5s (strace)"
    strace -c -f -p "$pid" -o "$work/strace-$name.txt" 2>/dev/null &
    strace_pid=$!
    sleep 1
    requests=$(taskset -c 1 wrk -t1 -c"$CONNS" -d5s -s bench/rotating-tokens.lua \
      "http://127.0.0.1:$port" -- "$setup/tokens.txt" | awk '/requests in/{print $1}')
    kill -INT "$strace_pid" 2>/dev/null || true
    wait "$strace_pid" 2>/dev/null || true
    # strace -c: "% time seconds usecs/call calls [errors] syscall"; calls is column 4
    per_request=$(awk -v n="$requests" '$1 ~ /^[0-9.]+$/ && NF >= 5 && $NF != "total" {
        printf "%s %.2f, ", $NF, $4 / n }' "$work/strace-$name.txt")
    total=$(awk -v n="$requests" '$NF == "total" { printf "%.2f", $4 / n }' "$work/strace-$name.txt")
    syscalls_table+="| $name | $requests | $total | ${per_request%, } |\n"
  done
  # TCP segments per request of the whole chain (wrk, the proxy, nginx; loopback counts
  # each segment once, at its sender), untraced: kernel time follows packets
  if command -v nstat >/dev/null; then
    for entry in "ours:$P_OURS" "haproxy_plain:$P_PLAIN"; do
      IFS=: read -r name port <<<"$entry"
      nstat -n >/dev/null
      requests=$(taskset -c 1 wrk -t1 -c"$CONNS" -d3s -s bench/rotating-tokens.lua \
        "http://127.0.0.1:$port" -- "$setup/tokens.txt" | awk '/requests in/{print $1}')
      segments_table+="| $name | $requests | $(nstat -z 2>/dev/null | awk -v n="$requests" '
        $1 == "TcpOutSegs" { o = $2 } $1 == "TcpExtDelayedACKs" { d = $2 }
        $1 == "TcpExtTCPPureAcks" { p = $2 } $1 == "TcpRetransSegs" { r = $2 }
        END { printf "%.2f | %.3f | %.3f | %.3f", o / n, d / n, p / n, r / n }') |\n"
    done
  fi
  log "system calls per request: see the report"
fi

if [ "${BENCH_PROFILE:-0}" = 1 ] && command -v perf >/dev/null; then
  # ours, and HAProxy plain under the same load for comparison (kernel symbols included)
  for entry in "ours:$ours_pid:$P_OURS:" "haproxy_plain:${haproxy_pid:-}:$P_PLAIN:-haproxy_plain"; do
    IFS=: read -r name pid port suffix <<<"$entry"
    [ -n "$pid" ] || continue
    log "profiling $name for ${DURATION}s (perf, flat by symbol)"
    taskset -c 1 wrk -t1 -c"$CONNS" -d"$((DURATION + 2))s" -s bench/rotating-tokens.lua \
      "http://127.0.0.1:$port" -- "$setup/tokens.txt" >"$work/profile-wrk.txt" &
    wrk_pid=$!
    sleep 1
    perf record -q -F 1999 -p "$pid" -o "$work/perf.data" -- sleep "$DURATION" >/dev/null 2>&1 || true
    wait "$wrk_pid" || true
    mkdir -p target
    {
      echo "requests (wrk, $((DURATION + 2)) s): $(awk '/requests in/{print $1}' "$work/profile-wrk.txt")"
      perf report -i "$work/perf.data" --no-children --sort dso --stdio 2>/dev/null | grep -v '^#' | grep -v '^$' | sed -n 1,8p
      perf report -i "$work/perf.data" --no-children --sort dso,symbol --stdio 2>/dev/null \
        | grep -v '^#' | grep -v '^$' | sed -n 1,80p
    } >"target/bench-profile$suffix.txt" || true
    log "profile of $name (top symbols by self time) in target/bench-profile$suffix.txt"
  done
fi
cache_line() { curl -s "http://127.0.0.1:$1/metrics" | awk '/^gateway_token_cache_total/{gsub(/.*result="/, "", $1); gsub(/".*/, "", $1); printf "%s %s ", $1, $2}'; }
CACHE_OURS="$(cache_line "$P_OPS")"
CACHE_NC="$(cache_line "$P_NC_OPS")"

# latency at a fixed rate: half of ours' maximum for the upstream direct, HAProxy plain and
# ours (the target: ours adds under 1 ms at p99 over direct), and HAProxy jwt+policy at half
# of its own maximum; rotating tokens, open loop, two interleaved rounds
latency="$work/latency.tsv"
: >"$latency"
: >"$work/inside.tsv"
if [ "$LATENCY" = 1 ] && grep -q "	ours	" "$results"; then
  read -r rate_ours rate_full < <(python3 - "$results" <<'EOF'
import statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().splitlines()]
m = lambda n: statistics.median([float(r[2]) for r in rows if r[1] == n] or [0])
print(int(m("ours") * 0.5 // 100 * 100), int(m("haproxy_full") * 0.5 // 100 * 100))
EOF
)
  # ours' own duration histogram of the query route (buckets), to tell time spent inside
  # the gateway from time spent queueing before it or in the kernel
  query_buckets() {
    curl -s "http://127.0.0.1:$P_OPS/metrics" | grep '^gateway_http_request_duration_seconds_bucket' \
      | grep 'route="/v1/query/{view_type}"' | grep 'status="2xx"' || true
  }
  for round in 1 2; do
    for pair in "direct|$P_UP|$rate_ours|" "haproxy_plain|$P_PLAIN|$rate_ours|${haproxy_pid:-}" "ours|$P_OURS|$rate_ours|${ours_pid:-}" "baseline|${P_BASE:-0}|$rate_ours|${baseline_pid:-}" "haproxy_full|$P_FULL|$rate_full|${haproxy_pid:-}"; do
      IFS='|' read -r name port rate pid <<<"$pair"
      case " $SCENARIOS " in *" $name "*) ;; *) continue ;; esac
      [ "$rate" -gt 0 ] || continue
      [ "$name" = ours ] && query_buckets >"$work/buckets-before.txt"
      sched_pid=""
      if [ "${BENCH_SCHED:-0}" = 1 ] && [ "$round" = 1 ]; then
        # 3 s of scheduler events in the middle of the measured part (perf on core 1)
        (sleep "$((WARMUP + DURATION / 2))" && taskset -c 1 perf sched record -q -o "$work/sched-$name.data" -- sleep 3 >/dev/null 2>&1) &
        sched_pid=$!
      fi
      before=$([ -n "$pid" ] && cpu_ticks "$pid" || echo 0 0)
      taskset -c 1 target/release/proxy-bench latency --addr "127.0.0.1:$port" --path "$PATH_Q" \
        --tenant "$TENANT" --tokens "$setup/tokens.txt" --rate "$rate" --connections "$CONNS" \
        --duration "$DURATION" --warmup "$WARMUP" >"$work/latency.json" \
        || die "the latency run of $name failed"
      after=$([ -n "$pid" ] && cpu_ticks "$pid" || echo 0 0)
      if [ -n "$sched_pid" ]; then
        wait "$sched_pid" || true
        mkdir -p target
        # per task: how long it waited, once woken, before it ran (scheduling delay)
        perf sched timehist -i "$work/sched-$name.data" 2>/dev/null | python3 -c '
import sys, collections
delays = collections.defaultdict(list)
for line in sys.stdin:
    f = line.split()
    if len(f) < 6 or not f[0][0].isdigit() or not f[1].startswith("["):
        continue
    try:
        delays[(f[1], f[2])].append(float(f[4]))
    except ValueError:
        pass
print("cpu | task | runs | scheduling delay p50 / p99 / p99.9 / max (ms) | runs delayed over 0.5 ms")
for (cpu, task), d in sorted(delays.items(), key=lambda kv: -len(kv[1]))[:12]:
    d.sort()
    q = lambda x: d[min(len(d) - 1, int(len(d) * x))]
    over = sum(1 for x in d if x > 0.5)
    print(f"{cpu} | {task} | {len(d)} | {q(0.5):.3f} / {q(0.99):.3f} / {q(0.999):.3f} / {d[-1]:.3f} | {over}")
' >"target/bench-sched-$name.txt" || true
        log "scheduling delays during $name in target/bench-sched-$name.txt"
      fi
      # the proxy's CPU per request at this rate (warm-up included: the load is the same
      # throughout): at a fixed rate, what a request costs sets how busy the core is
      python3 - "$work/latency.json" "$name" "$round" "${before// /,}" "${after// /,}" "$(getconf CLK_TCK)" \
        "$((WARMUP + DURATION))" "$pid" >>"$latency" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
codes = ", ".join([f"{k}: {v}" for k, v in d["statuses"].items()] + [f"error {k}: {v}" for k, v in d["errors"].items()])
before, after = ([int(x) for x in a.split(",")] for a in sys.argv[4:6])
ticks = sum(after) - sum(before)
cpu = f"{ticks / int(sys.argv[6]) * 1e6 / (float(d['rate']) * int(sys.argv[7])):.1f}" if sys.argv[8] else "-"
print("\t".join(str(x) for x in [sys.argv[2], sys.argv[3], d["rate"], d["achieved_rps"], d["p50_ms"],
                                 d["p99_ms"], d["p999_ms"], d["max_ms"], codes, cpu]))
EOF
      if [ "$name" = ours ]; then
        query_buckets >"$work/buckets-after.txt"
        python3 - "$work/buckets-before.txt" "$work/buckets-after.txt" "$round" >>"$work/inside.tsv" <<'EOF'
import re, sys
def read(path):
    out = {}
    for line in open(path):
        m = re.search(r'le="([^"]+)"\}\s+(\S+)', line)
        if m:
            out[float(m.group(1))] = float(m.group(2))
    return out
before, after = read(sys.argv[1]), read(sys.argv[2])
diff = {le: after[le] - before.get(le, 0) for le in after}
total = diff.get(float("inf"), 0) or 1
over = lambda le: 100 * (total - diff.get(le, 0)) / total
p99 = min((le for le, n in diff.items() if n >= 0.99 * total), default=float("inf"))
print("\t".join([sys.argv[3], f"{over(0.001):.2f}", f"{over(0.002):.2f}", f"{over(0.005):.2f}", f"{p99 * 1000:g}"]))
EOF
      fi
      log "latency $name at $rate req/s (round $round): p50/p99 $(tail -1 "$latency" | cut -f5,6 | tr '\t' '/') ms"
    done
  done
fi

read -r STEAL_1 TOTAL_1 < <(steal_ticks)
STEAL="$(awk -v s="$((STEAL_1 - STEAL_0))" -v t="$((TOTAL_1 - TOTAL_0))" 'BEGIN { printf "%.2f", 100 * s / (t > 0 ? t : 1) }')"
log "host steal while timing: ${STEAL}%"

# optional: instructions per request of ours by function (callgrind counts instructions:
# the same binary and load give the same figures on a busy machine)
if [ "${BENCH_CALLGRIND:-0}" = 1 ] && command -v valgrind >/dev/null; then
  log "callgrind: ours under valgrind, 20 s at 1,000 req/s counted"
  kill "$ours_pid" 2>/dev/null || true
  wait "$ours_pid" 2>/dev/null || true
  mkdir -p target
  cg_out="target/bench-callgrind.out"
  rm -f "$cg_out"
  DP_WRAPPER=(valgrind --tool=callgrind --instr-atstart=no "--callgrind-out-file=$cg_out")
  start_data_plane ours_cg "$P_OURS" "$P_GRPC" "$P_OPS"
  DP_WRAPPER=()
  cg_load() { # rate, seconds
    taskset -c 1 target/release/proxy-bench latency --addr "127.0.0.1:$P_OURS" --path "$PATH_Q" \
      --tenant "$TENANT" --tokens "$setup/tokens.txt" --rate "$1" --connections 10 --duration "$2" --warmup 0
  }
  cg_load 500 4 >/dev/null # every token verified once (2,000 requests, 1,000 tokens), pools filled
  callgrind_control -i on "$ours_cg_pid" >/dev/null
  cg_load 1000 20 >"$work/cg-load.json"
  callgrind_control -i off "$ours_cg_pid" >/dev/null
  kill "$ours_cg_pid"
  wait "$ours_cg_pid" 2>/dev/null || true
  cg_requests=$(python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(d['statuses'].get('200', 0), sum(d['statuses'].values()) + sum(d['errors'].values()))" "$work/cg-load.json")
  {
    echo "requests counted (200, all): $cg_requests"
    echo "## inclusive"
    # sed, not head: head closing the pipe early fails it under pipefail
    callgrind_annotate --inclusive=yes "$cg_out" 2>/dev/null | grep -E '^ *[0-9,]+ ' | sed -n 1,150p
    echo "## self"
    callgrind_annotate "$cg_out" 2>/dev/null | grep -E '^ *[0-9,]+ ' | sed -n 1,100p
  } >target/bench-callgrind.txt
  log "instructions by function (inclusive) in target/bench-callgrind.txt; requests (200, all): $cg_requests"
fi

# 7. the table
python3 - "$results" "$latency" "$work/inside.tsv" "$(getconf CLK_TCK)" "$haproxy_version" "$REPS" "$DURATION" "$WARMUP" "$CONNS" "$PRINCIPALS" \
  "$OURS_VERIFY_US" "$OPENSSL_VERIFY_US" "$BUSY_BEFORE" "$BUSY_AFTER" "$CACHE_OURS" "$CACHE_NC" \
  "$STEAL" "$QUIETED" <<'EOF'
import os, statistics, sys
results, latency, inside, tck, version, reps, duration, warmup, conns, principals = sys.argv[1:11]
ours_verify, openssl_verify, busy_before, busy_after, cache_ours, cache_nc = sys.argv[11:17]
steal, quieted = sys.argv[17:19]
tck = int(tck)
rows = [l.split("\t") for l in open(results).read().splitlines() if l]

def ticks(row):  # (user, system) ticks during the run
    before, after = ([int(x) for x in v.split(",")] for v in row[4:6])
    return after[0] - before[0], after[1] - before[1]

def cpu_of(row):
    return None if row[1] == "direct" else sum(ticks(row)) / tck * 1e6 / int(row[3])

def user_share(row):
    user, system = ticks(row)
    return user / max(user + system, 1)

def irqs_of(row):  # wake-up interrupts core 1 received per request
    return int(row[6]) / int(row[3])

runs = {}
for row in rows:
    runs.setdefault(row[1], []).append((float(row[2]), cpu_of(row), user_share(row), irqs_of(row)))

def k(x):
    return f"{x / 1000:.1f}k" if x >= 1000 else f"{x:.0f}"

def fig(values, fmt):
    return f"{fmt(statistics.median(values))} [{fmt(min(values))}–{fmt(max(values))}]"

labels = [
    ("direct", "upstream direct (nginx)"),
    ("haproxy_plain", "HAProxy plain proxy"),
    ("haproxy_jwt", "HAProxy + ES256 `jwt_verify` only"),
    ("haproxy_full", "HAProxy + `jwt_verify` + iss/aud/exp + tenant map (our policy)"),
    ("ours", "ours as shipped (ES256, verified-token cache on, principal mirror, authz, routing)"),
    ("ours_nocache", "ours with `--token-cache-size 0` (verifies ES256 on every request, like HAProxy)"),
    ("baseline", "baseline (`BENCH_BASELINE_BIN`, `BENCH_BASELINE_FLAGS`: " + (os.environ.get("BENCH_BASELINE_FLAGS") or "as shipped") + ")"),
]
print(f"\n### Data plane vs {version.split(' - ')[0]}: {reps} interleaved reps, wrk -t1 -c{conns} -d{duration}s after a {warmup}s warm-up, {principals} rotating tokens\n")
print("| scenario | req/s median [range] | proxy CPU µs/request median [range] | of which user space "
      "| wake-up interrupts to core 1 per request |")
print("| --- | --- | --- | --- | --- |")
for key, label in labels:
    if key not in runs:
        continue
    rps = [r for r, _, _, _ in runs[key]]
    cpu = [c for _, c, _, _ in runs[key] if c is not None]
    cpu_text = fig(cpu, lambda x: f"{x:.1f}") if cpu else "—"
    user = f"{statistics.median(u for _, _, u, _ in runs[key]) * 100:.0f} %" if cpu else "—"
    irqs = statistics.median(i for _, _, _, i in runs[key])
    print(f"| {label} | {fig(rps, k)} | {cpu_text} | {user} | {irqs:.3f} |")

# a pair is theirs and ours of the same repetition
by_rep = {(row[0], row[1]): row for row in rows}
print("\n| ratio ours / theirs (per pair, by repetition) | req/s | CPU µs/request |")
print("| --- | --- | --- |")
for theirs, ours, label in [
        ("haproxy_full", "ours", "**headline**: ours as shipped / HAProxy jwt+policy"),
        ("haproxy_full", "ours_nocache", "like for like: ours, token cache off / HAProxy jwt+policy"),
        ("haproxy_plain", "ours", "ours as shipped / HAProxy plain proxy (no auth on their side)"),
        ("baseline", "ours", "ours / the baseline build")]:
    ps = [(by_rep[(rep, theirs)], by_rep[(rep, ours)]) for rep, name in by_rep
          if name == theirs and (rep, ours) in by_rep]
    if not ps:
        continue
    r = [float(o[2]) / float(t[2]) for t, o in ps]
    c = [cpu_of(o) / cpu_of(t) for t, o in ps]
    print(f"| {label} | median {statistics.median(r):.2f} ({', '.join(f'{x:.2f}' for x in r)}) "
          f"| median {statistics.median(c):.2f} ({', '.join(f'{x:.2f}' for x in c)}) |")

print(f"\nBaselines on core 0: one ES256 token check in our verifier (ring, "
      f"in process) {ours_verify} µs; one P-256 verify in OpenSSL (`openssl speed ecdsap256`, "
      f"HAProxy's library) {openssl_verify or '?'} µs. Token cache counters after the runs: as shipped "
      f"{cache_ours.strip() or '—'}; cache off {cache_nc.strip() or '—'}. "
      f"Machine busy with other work before / after timing: {busy_before}% / {busy_after}%; "
      f"the hypervisor's steal while timing: {steal}%; kernel threads run as SCHED_IDLE: "
      f"{quieted or 'none'}.")

lat = [l.split("\t") for l in open(latency).read().splitlines() if l]
if lat:
    print(f"\nLatency at a fixed rate (`proxy-bench latency`: open loop, -c{conns}, rotating tokens, "
          f"{duration}s after {warmup}s, two interleaved rounds; ms):\n")
    print("| target | round | rate req/s | achieved | p50 | p99 | p99.9 | max | answers | proxy CPU µs/request |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, rnd, rate, achieved, p50, p99, p999, mx, codes, cpu in lat:
        print(f"| {name} | {rnd} | {rate} | {float(achieved):.0f} | {float(p50):.2f} | {float(p99):.2f} "
              f"| {float(p999):.2f} | {float(mx):.2f} | {codes} | {cpu.replace('-', '—')} |")
    p99 = {}
    for name, rnd, *_rest in lat:
        p99.setdefault(name, []).append(float(_rest[3]))
    if "direct" in p99 and "ours" in p99:
        added = [o - d for o, d in zip(p99["ours"], p99["direct"])]
        print(f"\np99 added by ours over the upstream direct at the same rate: "
              f"{', '.join(f'{x:.2f}' for x in added)} ms (target: under 1 ms)")
    if "direct" in p99 and "haproxy_plain" in p99:
        added = [o - d for o, d in zip(p99["haproxy_plain"], p99["direct"])]
        print(f"p99 added by HAProxy plain at the same rate: {', '.join(f'{x:.2f}' for x in added)} ms")
    if "direct" in p99 and "baseline" in p99:
        added = [o - d for o, d in zip(p99["baseline"], p99["direct"])]
        print(f"p99 added by the baseline build at the same rate: {', '.join(f'{x:.2f}' for x in added)} ms")
    ins = [l.split("\t") for l in open(inside).read().splitlines() if l]
    if ins:
        print("\nInside ours (its own duration histogram of the query route during its runs: "
              "from the request parsed to the answer ready):\n")
        print("| round | over 1 ms | over 2 ms | over 5 ms | p99 at most (bucket bound, ms) |")
        print("| --- | --- | --- | --- | --- |")
        for rnd, o1, o2, o5, p99b in ins:
            print(f"| {rnd} | {o1} % | {o2} % | {o5} % | {p99b} |")
else:
    print("\n(no fixed-rate latency run)")
EOF
if [ -n "$grpc_table" ]; then
  echo
  echo "gRPC SubmitCommand (\`proxy-bench grpc\`: closed loop, $CONNS callers over 4 HTTP/2 connections, rotating tokens, a new command_id each, ${DURATION}s after ${WARMUP}s), against the reference upstream directly and through ours:"
  echo
  echo "| target | round | req/s | p50 ms | p99 ms | ours CPU µs/request | errors |"
  echo "| --- | --- | --- | --- | --- | --- | --- |"
  printf "%b" "$grpc_table"
fi
if [ -n "$stream_table" ]; then
  echo
  echo "Streamed bodies (100 MiB each way, curl on core 1, the proxy on core 0; the upstream reads uploads to their end before answering):"
  echo
  echo "| proxy | round | transfer | bytes | rate |"
  echo "| --- | --- | --- | --- | --- |"
  printf "%b" "$stream_table"
  echo
  echo "| proxy | RSS before | peak RSS during the 8 transfers | RSS after |"
  echo "| --- | --- | --- | --- |"
  printf "%b" "$stream_memory"
fi
if [ -n "$syscalls_table" ]; then
  echo
  echo "System calls per request under load (strace -c, 5 s of wrk -c$CONNS, the process traced; errors are mostly EAGAIN):"
  echo
  echo "| process | requests | calls per request | by call |"
  echo "| --- | --- | --- | --- |"
  printf "%b" "$syscalls_table"
fi
if [ -n "$segments_table" ]; then
  echo
  echo "TCP segments per request of the whole chain (nstat, 3 s of wrk -c$CONNS, not traced; wrk, the proxy and nginx together):"
  echo
  echo "| through | requests | segments sent | delayed ACKs | pure ACKs received | retransmitted |"
  echo "| --- | --- | --- | --- | --- | --- |"
  printf "%b" "$segments_table"
fi
echo
echo "Answers checked before timing (status codes; ours asked twice, the second from its cache):"
echo
cat "$work/checks.md"
