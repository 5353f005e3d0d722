#!/usr/bin/env bash
# Makes sure a headless browser is installed for the browser tests (CORS from a page on
# another origin): Debian's chromium, installed with apt when missing. Prints its path.
set -euo pipefail
if [ -n "${CHROMIUM_BIN:-}" ] && [ -x "$CHROMIUM_BIN" ]; then
  echo "$CHROMIUM_BIN"; exit 0
fi
if ! command -v chromium >/dev/null 2>&1; then
  echo "installing Debian's chromium (browser tests)" >&2
  sudo_cmd=""
  [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get install -y -qq chromium >/dev/null 2>&1 \
    || { $sudo_cmd apt-get update -qq >/dev/null && $sudo_cmd apt-get install -y -qq chromium >/dev/null; }
fi
command -v chromium
