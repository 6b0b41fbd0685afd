#!/usr/bin/env bash
# The test suite on the CPU: installs tokax with its [test] extra, then runs every test, slow ones too.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/env.sh" test
cd "$ROOT"
export JAX_PLATFORMS=cpu
# Two workers (pytest-xdist), whole files per worker so module fixtures are built once: most tests
# are bound by single-threaded XLA compiles, so the 2-core CI machine runs them nearly twice as fast.
exec "$PY" -m pytest -q -p no:cacheprovider -n "${TOKAX_TEST_WORKERS:-2}" --dist loadfile "$@"
