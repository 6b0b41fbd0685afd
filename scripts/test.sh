#!/usr/bin/env bash
# The test suite on the CPU: installs tokax with its [test] extra, then runs every test, slow ones too.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/env.sh" test
cd "$ROOT"
export JAX_PLATFORMS=cpu
exec "$PY" -m pytest -q -p no:cacheprovider "$@"
