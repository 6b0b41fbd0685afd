#!/usr/bin/env bash
# Create (once) the project's virtual environment and install tokax into it with the given extras.
# Usage: source scripts/env.sh [EXTRAS]   (e.g. "test"); sets PY to the environment's python.
# Only the package registries are used; torch is pinned to the CPU build in the [test] extra.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${TOKAX_VENV:-$ROOT/.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi
SPEC="$ROOT"
if [ -n "${1:-}" ]; then SPEC="$ROOT[$1]"; fi
"$VENV/bin/python" -m pip install -q -e "$SPEC" 2>&1 | grep -v "^WARNING: Location" || true
PY="$VENV/bin/python"
export PY
