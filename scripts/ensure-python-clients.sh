#!/usr/bin/env bash
# Makes sure the third-party clients the tests drive are installed (pinned, from PyPI):
# Python's grpcio with grpcio-reflection and grpcio-health-checking, as a stranger's gRPC
# tools would talk to the data plane, and openapi-spec-validator, as client generators read
# the control plane's OpenAPI document. Installs them when missing or at another version.
set -euo pipefail

GRPCIO_VERSION="1.85.1"
OPENAPI_SPEC_VALIDATOR_VERSION="0.9.0"

have() {
  python3 - "$GRPCIO_VERSION" "$OPENAPI_SPEC_VALIDATOR_VERSION" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version
grpcio, validator = sys.argv[1], sys.argv[2]
for package in ("grpcio", "grpcio-reflection", "grpcio-health-checking"):
    if version(package) != grpcio:
        sys.exit(1)
if version("openapi-spec-validator") != validator:
    sys.exit(1)
PY
}

if ! have; then
  echo "installing grpcio ${GRPCIO_VERSION} (with reflection and health checking) and openapi-spec-validator ${OPENAPI_SPEC_VALIDATOR_VERSION} from PyPI" >&2
  python3 -m pip install --quiet --disable-pip-version-check \
    "grpcio==${GRPCIO_VERSION}" "grpcio-reflection==${GRPCIO_VERSION}" \
    "grpcio-health-checking==${GRPCIO_VERSION}" \
    "openapi-spec-validator==${OPENAPI_SPEC_VALIDATOR_VERSION}" >&2
fi
have || { echo "the pinned Python clients could not be installed for $(command -v python3)" >&2; exit 1; }
