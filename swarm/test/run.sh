#!/usr/bin/env bash
# The deployment test: builds the two gateway images and a NATS image locally, deploys
# swarm/stacks/platform.yml with its upstream mutual-TLS variant platform.mtls.yml on a
# one-node Docker Swarm (with single-node.yml, which relaxes only what one node forces)
# and checks it under traffic:
#   T9.2  both replicas of each plane ready; sign-up → sign-in → command → query on each,
#         to a reference node that takes only the data planes' client certificate
#   T9.3  `docker service update --image` of each plane under continuous traffic
#   kill  a data-plane task killed under traffic; Swarm replaces it
#   NATS  stopped for 60 s: the data planes serve from their mirrors, are not replaced,
#         writes answer 503; everything recovers when NATS is back
#   T9.4  sessions and a role change across the two real replicas of each plane
#   ops   the data planes' /admin views on the overlay answer only with the ops token
# Each check prints one JSON line with its figures. Everything it creates is removed at
# the end (the swarm is left if it was active before). Bounded: each wait has a deadline.
#
#   swarm/test/run.sh            the whole test
#   KEEP=1 swarm/test/run.sh     leave the stack running for a look
set -euo pipefail
cd "$(dirname "$0")/../.."
root="$PWD"

STACK=gwtest
# IMAGE_TAG=<tag>: use gateway images already built under that tag (no build)
TAG="${IMAGE_TAG:-local-$(git rev-parse --short HEAD)}"
CHECK_IMAGE="cloudlysis-local/swarm-check:$TAG"
export DOCKER_BUILDKIT=0
started=$(date +%s)
say() { printf '%s [%4ss] %s\n' "== swarm" "$(( $(date +%s) - started ))" "$*"; }

work="$(mktemp -d /tmp/gwtest.XXXXXX)"
chmod 755 "$work"
we_made_swarm=0
cleanup() {
  status=$?
  if [ "${KEEP:-0}" = 1 ]; then
    say "KEEP=1: the stack $STACK stays (docker stack rm $STACK to remove it)"
    exit $status
  fi
  docker ps -q --filter "label=gwtest.check" | xargs -r docker rm -f >/dev/null 2>&1 || true
  docker stack rm "$STACK" >/dev/null 2>&1 || true
  # the stack's network goes once its tasks have stopped
  for _ in $(seq 60); do
    docker network inspect "${STACK}_gateway" >/dev/null 2>&1 || break
    sleep 1
  done
  docker secret ls -q --filter "label=gwtest" | xargs -r docker secret rm >/dev/null 2>&1 || true
  docker config ls -q --filter "label=gwtest" | xargs -r docker config rm >/dev/null 2>&1 || true
  docker volume ls -q --filter "label=com.docker.stack.namespace=$STACK" | xargs -r docker volume rm >/dev/null 2>&1 || true
  if [ "$we_made_swarm" = 1 ]; then docker swarm leave --force >/dev/null 2>&1 || true; fi
  rm -rf "$work"
  exit $status
}
trap cleanup EXIT
# a stopped run cleans up too
trap "exit 143" INT TERM

# the stack merge below reads YAML with Python (pinned PyYAML from PyPI when missing)
python3 -c 'import yaml' 2>/dev/null \
  || python3 -m pip install --quiet --disable-pip-version-check "PyYAML==6.0.3"

# --- images -------------------------------------------------------------------------
say "base images"
swarm/local/bases.sh
NATS_BIN="$(scripts/ensure-nats.sh)"
NATS_IMAGE="cloudlysis-local/nats:$("$NATS_BIN" --version | sed -E 's/.*v([0-9.]+).*/\1/')"

if [ ! -d vendor ] || [ Cargo.lock -nt vendor ]; then
  say "vendoring crates for the offline build stage"
  cargo vendor --locked --versioned-dirs vendor >/dev/null
  touch vendor
fi
build_start=$(date +%s)
if [ -z "${IMAGE_TAG:-}" ]; then
  say "building the gateway images ($TAG)"
  # one snapshot of the tree for both targets: the second build then reuses the first
  # one's compiled workspace even if files change meanwhile
  tar -C "$root" -cf "$work/context.tar" --exclude=./target --exclude=./.git \
    --exclude=./.gateway-dev --exclude=./fuzz/target --exclude=./fuzz/corpus \
    --exclude=./fuzz/artifacts --exclude='__pycache__' .
  for target in control data; do
    docker build -q --target "$target" -t "cloudlysis/gateway-$target:$TAG" \
      --build-arg RUST_IMAGE=cloudlysis-local/rust:bookworm \
      --build-arg RUNTIME_IMAGE=cloudlysis-local/cc:bookworm \
      --build-arg GIT_SHA="$(git rev-parse HEAD)" - <"$work/context.tar" >/dev/null
  done
  rm -f "$work/context.tar"
fi
build_seconds=$(( $(date +%s) - build_start ))
# the image a rolling update moves to: the same build under another tag
for plane in control data; do
  docker tag "cloudlysis/gateway-$plane:$TAG" "cloudlysis/gateway-$plane:$TAG-next"
done

say "the check image (swarm-check, reference-upstream)"
cargo build -q -p gateway-tests --bin swarm-check --bin reference-upstream
mkdir -p "$work/check"
cp target/debug/swarm-check target/debug/reference-upstream "$work/check/"
printf 'FROM cloudlysis-local/cc:bookworm\nCOPY swarm-check reference-upstream /usr/local/bin/\n' >"$work/check/Dockerfile"
docker build -q -t "$CHECK_IMAGE" "$work/check" >/dev/null

# image facts: size, user, no shell, build metadata
for plane in control data; do
  image="cloudlysis/gateway-$plane:$TAG"
  size=$(docker image inspect -f '{{.Size}}' "$image")
  user=$(docker image inspect -f '{{.Config.User}}' "$image")
  if docker run --rm --entrypoint /bin/sh "$image" -c true >/dev/null 2>&1; then
    echo "the $plane image has a shell" >&2; exit 1
  fi
  [ "$user" = "65532:65532" ] || { echo "the $plane image runs as '$user'" >&2; exit 1; }
  echo "{\"check\":\"image\",\"ok\":true,\"figures\":{\"image\":\"$image\",\"size_mb\":$(( size / 1000000 )),\"user\":\"$user\",\"shell\":false,\"build_seconds\":$build_seconds}}"
done

# --- swarm, secrets, configs ----------------------------------------------------------
if [ "$(docker info -f '{{.Swarm.LocalNodeState}}')" != active ]; then
  say "docker swarm init"
  docker swarm init --advertise-addr 127.0.0.1 >/dev/null
  we_made_swarm=1
fi
node=$(docker info -f '{{.Swarm.NodeID}}')
docker node update --label-add nats=1 "$node" >/dev/null

say "secrets and configs"
docker run --rm -u "$(id -u):$(id -g)" -v "$work:/out" "cloudlysis/gateway-control:$TAG" \
  keygen --out-dir /out/keys >/dev/null
head -c 24 /dev/urandom | base64 | tr -d '\n/+=' >"$work/admin-password"
head -c 32 /dev/urandom | base64 | tr -d '\n' >"$work/ops-token"
printf 'unused: Google sign-in is off in this test\n' >"$work/unused"
secret() { docker secret create --label gwtest "$1" "$2" >/dev/null; }
secret gateway_snapshot_signing_key "$work/keys/snapshot-signing.pem"
secret gateway_key_encryption_key "$work/keys/key-encryption.key"
secret gateway_bootstrap_admin_password "$work/admin-password"
secret gateway_google_client_secret "$work/unused"
secret gateway_nats_creds "$work/unused"
secret gateway_smtp_password "$work/unused"
secret gateway_ops_token "$work/ops-token"
# upstream mutual TLS (platform.mtls.yml): one CA issues the reference node's server
# certificate and the data planes' client certificate
tls="$work/tls"
mkdir -p "$tls"
(
  cd "$tls"
  ec() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
  ec ca.key
  openssl req -x509 -new -key ca.key -days 2 -subj "/CN=gwtest upstream CA" -out ca.pem \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" 2>/dev/null
  leaf() { # name, subject CN, extensions
    ec "$1.key"
    openssl req -new -key "$1.key" -subj "/CN=$2" -out "$1.csr" 2>/dev/null
    printf '%s\n' "$3" >"$1.ext"
    openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
      -extfile "$1.ext" -out "$1.pem" 2>/dev/null
  }
  leaf upstream upstream "subjectAltName=DNS:upstream,DNS:tasks.upstream
extendedKeyUsage=serverAuth"
  leaf client gateway-data "extendedKeyUsage=clientAuth"
  # keys in PKCS#8 PEM, readable by the containers' user
  chmod 644 ./*.key ./*.pem
)
secret gateway_upstream_client_cert "$tls/client.pem"
secret gateway_upstream_client_key "$tls/client.key"
secret gwtest_upstream_cert "$tls/upstream.pem"
secret gwtest_upstream_key "$tls/upstream.key"
docker config create --label gwtest gateway_upstream_ca "$tls/ca.pem" >/dev/null
docker config create --label gwtest gateway_snapshot_verify_key "$work/keys/snapshot-verify.pem" >/dev/null
docker config create --label gwtest gateway_nats_server swarm/nats/nats-server.conf >/dev/null

export GATEWAY_VERSION="$TAG" NATS_IMAGE CHECK_IMAGE
export GATEWAY_BOOTSTRAP_ADMIN_EMAIL=admin@swarm.test
# interpolated by platform.yml; single-node.yml sends mail to an outbox instead
export GATEWAY_SMTP_URL=unused GATEWAY_SMTP_USERNAME=unused

# the stack as deployed: platform.yml merged with single-node.yml, where a variable set to
# __unset__ is removed (a merge cannot delete keys, and the planes read an empty variable
# as a value)
deploy() {
  docker stack config -c swarm/stacks/platform.yml -c swarm/stacks/platform.mtls.yml \
    -c swarm/test/single-node.yml \
    >"$work/stack.yml"
  python3 - "$work/stack.yml" <<'PY'
import sys, yaml
path = sys.argv[1]
stack = yaml.safe_load(open(path))
for service in stack["services"].values():
    env = service.get("environment") or {}
    for key in [k for k, v in env.items() if v == "__unset__"]:
        del env[key]
    # a disabled healthcheck keeps nothing of the base file's
    if (service.get("healthcheck") or {}).get("disable"):
        service["healthcheck"] = {"disable": True}
yaml.safe_dump(stack, open(path, "w"), sort_keys=False)
PY
  docker stack deploy --resolve-image never -c "$work/stack.yml" "$STACK" >/dev/null
}

# converged: every replicated service has its replicas running, and healthy where it
# has a healthcheck
converged() {
  local service want running
  for service in gateway-control gateway-data; do
    want=2
    running=$(docker ps --filter "label=com.docker.swarm.service.name=${STACK}_$service" \
      --filter health=healthy -q | wc -l)
    [ "$running" -ge "$want" ] || return 1
  done
}
wait_converged() {
  local deadline=$(( $(date +%s) + ${1:-180} ))
  until converged; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      docker service ps --no-trunc "${STACK}_gateway-control" "${STACK}_gateway-data" >&2 || true
      for s in gateway-control gateway-data nats-1; do
        docker service logs --tail 20 "${STACK}_$s" >&2 2>&1 || true
      done
      echo "the stack did not converge" >&2; return 1
    fi
    sleep 2
  done
}

say "docker stack deploy"
deploy_start=$(date +%s)
deploy
wait_converged 240
echo "{\"check\":\"deploy\",\"ok\":true,\"figures\":{\"seconds_to_two_healthy_replicas_per_plane\":$(( $(date +%s) - deploy_start ))}}"

# the non-root data planes write their mirror cache on the volume (written within a second
# of a change; one whole file, no temporary left behind)
cache_ok=0
for _ in $(seq 30); do
  if docker run --rm -v "${STACK}_gateway-data-cache:/cache:ro" cloudlysis-local/rust:bookworm \
    sh -c 'test -s /cache/mirrors.json && ! ls /cache | grep -q "\.tmp$"' 2>/dev/null; then
    cache_ok=1; break
  fi
  sleep 1
done
cache_bytes=$(docker run --rm -v "${STACK}_gateway-data-cache:/cache:ro" cloudlysis-local/rust:bookworm \
  sh -c 'stat -c %s /cache/mirrors.json 2>/dev/null || echo 0')
if [ "$cache_ok" != 1 ]; then
  echo "{\"check\":\"mirror-cache\",\"ok\":false,\"reason\":\"no mirror cache file on the data planes' volume\"}"
  exit 1
fi
echo "{\"check\":\"mirror-cache\",\"ok\":true,\"figures\":{\"bytes\":$cache_bytes}}"

mkdir -p "$work/state"
chmod 777 "$work/state"
on_overlay() {
  docker run --label gwtest.check=1 --network "${STACK}_gateway" \
    -v "$work/admin-password:/run/admin-password:ro" -v "$work/state:/state" \
    -e CHECK_ADMIN_EMAIL="$GATEWAY_BOOTSTRAP_ADMIN_EMAIL" \
    -e CHECK_ADMIN_PASSWORD_FILE=/run/admin-password \
    "$@"
}
check() { on_overlay --rm "$@"; }
# traffic in the background until stopped; its JSON line lands in $work/traffic.json
traffic_start() {
  on_overlay -d --name gwtest-traffic "$CHECK_IMAGE" swarm-check traffic "$@" >/dev/null
  # the traffic has its token and is running before the disruption begins
  sleep 3
  if [ "$(docker inspect -f '{{.State.Running}}' gwtest-traffic)" != true ]; then
    echo "the traffic stopped before the disruption:" >&2
    docker logs gwtest-traffic >&2 2>&1 || true
    docker rm -f gwtest-traffic >/dev/null 2>&1 || true
    return 1
  fi
}
traffic_stop() {
  docker stop -t 30 gwtest-traffic >/dev/null
  docker logs gwtest-traffic 2>&1 | tail -1 | tee "$work/traffic.json"
  local code
  code=$(docker inspect -f '{{.State.ExitCode}}' gwtest-traffic)
  docker rm gwtest-traffic >/dev/null
  return "$code"
}

say "T9.2: the walk (upstream over mutual TLS)"
walk() {
  check -v "$tls/ca.pem:/run/upstream-ca.pem:ro" "$CHECK_IMAGE" swarm-check walk \
    --upstream-ca-file /run/upstream-ca.pem
}
walk

say "the ops views need the ops token; build metadata in /version"
built_sha=$(docker image inspect -f '{{index .Config.Labels "org.opencontainers.image.revision"}}' \
  "cloudlysis/gateway-data:$TAG")
check -v "$work/ops-token:/run/ops-token:ro" "$CHECK_IMAGE" swarm-check ops \
  --token-file /run/ops-token --expect-git-sha "$built_sha"

for plane in data control; do
  say "T9.3: rolling update of gateway-$plane under traffic"
  traffic_start
  t=$(date +%s)
  docker service update --detach=false --quiet --image "cloudlysis/gateway-$plane:$TAG-next" \
    "${STACK}_gateway-$plane" >/dev/null
  update_seconds=$(( $(date +%s) - t ))
  traffic_stop
  echo "{\"check\":\"rolling-update-$plane\",\"ok\":true,\"figures\":{\"update_seconds\":$update_seconds}}"
done

say "a data-plane task killed under traffic"
traffic_start
victim=$(docker ps -q --filter "label=com.docker.swarm.service.name=${STACK}_gateway-data" | head -1)
t=$(date +%s)
docker kill "$victim" >/dev/null
wait_converged 120
replaced_seconds=$(( $(date +%s) - t ))
traffic_stop
echo "{\"check\":\"task-killed\",\"ok\":true,\"figures\":{\"seconds_until_two_healthy_again\":$replaced_seconds}}"

say "NATS stopped for 60 s, then a data-plane task killed while it is still down"
ids_before=$(docker ps -q --filter "label=com.docker.swarm.service.name=${STACK}_gateway-data" | sort | tr '\n' ' ')
# queries only (a session read needs the store); the data planes stay ready throughout:
# the outage stays inside GATEWAY_MAX_STALENESS (120 s)
traffic_start --auth-calls false
docker service scale --detach=false "${STACK}_nats-1=0" >/dev/null
t=$(date +%s)
check "$CHECK_IMAGE" swarm-check outage
while [ $(( $(date +%s) - t )) -lt 60 ]; do sleep 2; done
check "$CHECK_IMAGE" swarm-check outage
ids_after=$(docker ps -q --filter "label=com.docker.swarm.service.name=${STACK}_gateway-data" | sort | tr '\n' ' ')
if [ "$ids_before" != "$ids_after" ]; then
  traffic_stop || true
  echo "{\"check\":\"nats-outage\",\"ok\":false,\"reason\":\"Swarm replaced data-plane tasks during the outage\"}"
  exit 1
fi
# the task that replaces a killed one starts from the cache file on the volume: it turns
# healthy and serves without NATS
victim=$(docker ps -q --filter "label=com.docker.swarm.service.name=${STACK}_gateway-data" | head -1)
k=$(date +%s)
docker kill "$victim" >/dev/null
wait_converged 90
replaced_in_outage=$(( $(date +%s) - k ))
check "$CHECK_IMAGE" swarm-check outage
docker service scale --detach=false "${STACK}_nats-1=1" >/dev/null
outage_seconds=$(( $(date +%s) - t ))
traffic_stop
t=$(date +%s)
walk
echo "{\"check\":\"nats-outage\",\"ok\":true,\"figures\":{\"outage_seconds\":$outage_seconds,\"data_plane_tasks_replaced_by_swarm\":0,\"seconds_until_a_task_killed_in_the_outage_was_replaced_from_its_cache\":$replaced_in_outage,\"seconds_to_write_again\":$(( $(date +%s) - t ))}}"

say "T9.4: sessions and a role change across the real replicas"
check "$CHECK_IMAGE" swarm-check replicas

say "done in $(( $(date +%s) - started )) s"
