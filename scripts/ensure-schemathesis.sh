#!/usr/bin/env bash
# Makes sure schemathesis (pinned, from PyPI) is installed for the contract test of the
# control plane's API (tests/it/contract.rs), in its own virtual environment under
# target/ (its dependencies stay out of the system Python's). Prints the path of its
# `schemathesis` command.
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION="4.32.5"
venv="${CARGO_TARGET_DIR:-target}/schemathesis-venv"
bin="$venv/bin/schemathesis"

installed() {
  [ -x "$bin" ] && [ "$("$venv/bin/python" -c 'from importlib.metadata import version; print(version("schemathesis"))' 2>/dev/null)" = "$SCHEMATHESIS_VERSION" ]
}

if ! installed; then
  echo "installing schemathesis ${SCHEMATHESIS_VERSION} from PyPI into $venv" >&2
  rm -rf "$venv"
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    # Debian keeps ensurepip in python3-venv
    sudo_cmd=""
    [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get install -y -qq python3-venv >/dev/null 2>&1 \
      || { $sudo_cmd apt-get update -qq >/dev/null && $sudo_cmd apt-get install -y -qq python3-venv >/dev/null; }
    rm -rf "$venv"
    python3 -m venv "$venv" >&2
  fi
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "schemathesis==${SCHEMATHESIS_VERSION}" >&2
fi
installed || { echo "schemathesis ${SCHEMATHESIS_VERSION} could not be installed in $venv" >&2; exit 1; }
realpath "$bin"
