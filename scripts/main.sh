#!/usr/bin/env bash
# The main job: the ViT-Ti/16 that ships with tokax (trained on the embedded glyphs data) evaluated
# dense and with every token reduction at two strengths (accuracy / GFLOPs / speed table, plot, merge
# maps), then fine-tuned with one reduction. Outputs go to ${WORKDIR:-workdir/main}.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/env.sh"
cd "$ROOT"
exec "$PY" scripts/main_job.py --workdir "${WORKDIR:-workdir/main}" "$@"
