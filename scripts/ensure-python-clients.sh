#!/usr/bin/env bash
# Makes sure the third-party clients the tests drive are installed: Python's grpcio with
# grpcio-reflection and grpcio-health-checking (pinned, from PyPI), as a stranger's gRPC
# tools would talk to the data plane. Installs them when missing or at another version.
set -euo pipefail

GRPCIO_VERSION="1.85.1"

have() {
  python3 - "$GRPCIO_VERSION" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version
wanted = sys.argv[1]
for package in ("grpcio", "grpcio-reflection", "grpcio-health-checking"):
    if version(package) != wanted:
        sys.exit(1)
PY
}

if ! have; then
  echo "installing grpcio, grpcio-reflection and grpcio-health-checking ${GRPCIO_VERSION} from PyPI" >&2
  python3 -m pip install --quiet --disable-pip-version-check \
    "grpcio==${GRPCIO_VERSION}" "grpcio-reflection==${GRPCIO_VERSION}" \
    "grpcio-health-checking==${GRPCIO_VERSION}" >&2
fi
have || { echo "grpcio ${GRPCIO_VERSION} could not be installed for $(command -v python3)" >&2; exit 1; }
