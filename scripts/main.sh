#!/usr/bin/env bash
# The main job: train a small ViT on the embedded cluttered_digits data, then evaluate it dense and
# with ToMe and print the accuracy / GFLOPs / speed table. Outputs go to ${WORKDIR:-workdir/main}.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/env.sh"
cd "$ROOT"
exec "$PY" scripts/main_job.py --workdir "${WORKDIR:-workdir/main}" "$@"
