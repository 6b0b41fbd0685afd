#!/usr/bin/env bash
# ViT-Ti/16 trained from scratch on the embedded glyphs dataset (configs/glyphs_vit.py) on ONE GPU, then scored
# on 10,000 test images (the trainer's final test pass) and with several reductions on 2,000 test images
# (python -m tokax.evaluate), and its parameters exported as a bf16 timm-layout safetensors file (the shipped
# model, tokax/pretrained/).
#
# Usage: bash scripts/device/glyphs_train.sh OUTDIR [extra --config.x=y overrides]
#   OUTDIR/glyphs_vit_ti16.safetensors  bf16 parameters (timm layout: tokax.interop.load_checkpoint reads it)
#   OUTDIR/config.json, metrics.jsonl   the run's resolved config and metrics
#   OUTDIR/evaluate.md                  the reductions table on the GPU (TOKAX_EVAL_S seconds; 0: none)
#   OUTDIR/times.txt, *.log             wall times and logs
# CPU smoke run: JAX_PLATFORMS=cpu bash scripts/device/glyphs_train.sh /tmp/gt_smoke --config.total_steps=2 ...
set -uo pipefail
OUT_DIR="${1:?usage: glyphs_train.sh OUTDIR [overrides]}"
shift
WORK="${TOKAX_WORK:-/tmp/glyphs_ti16}"
CONFIG="${TOKAX_CONFIG:-configs/glyphs_vit.py}"
TRAIN_S=${TOKAX_TRAIN_S:-420}
rm -rf "$WORK"
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python}
T0=$SECONDS
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$OUT_DIR/card.txt" 2>&1
run train "$TRAIN_S" "$PY" -m tokax.train --config "$CONFIG" --workdir "$WORK" "$@"
cp "$WORK/config.json" "$WORK/metrics.jsonl" "$OUT_DIR/" 2>/dev/null
run export $((TRAIN_S + 60)) "$PY" - "$WORK" "$OUT_DIR/glyphs_vit_ti16.safetensors" <<'EOF'
import sys

import torch
from safetensors.torch import save_file

from tokax.interop.timm import export_state_dict
from tokax.train.restore import load_run

run = load_run(sys.argv[1])
state = {k: torch.from_numpy(v.astype("float32")).to(torch.bfloat16).contiguous()
         for k, v in export_state_dict(run.variables).items()}
save_file(state, sys.argv[2], metadata={"step": str(run.step)})
print("exported", len(state), "arrays at step", run.step)
EOF
if (( ${TOKAX_EVAL_S:-200} > 0 )); then  # TOKAX_EVAL_S=0: no reductions table here
  REDUCTIONS=${TOKAX_REDUCTIONS:-tome:8 tome:12 pitome:0.9 evit:0.7 mctf:8 divprune:0.5}
  run evaluate $((TRAIN_S + ${TOKAX_EVAL_S:-200})) "$PY" -m tokax.evaluate --model "$WORK" --num_examples 2000 \
    --batch_size 250 --bench_batch_size 250 --dtype bfloat16 --no_progress --out "$WORK/evaluate" \
    $(for r in $REDUCTIONS; do printf -- '--reduction %s ' "$r"; done)
  cp "$WORK/evaluate/results.md" "$OUT_DIR/evaluate.md" 2>/dev/null
  cp "$WORK/evaluate/results.json" "$OUT_DIR/evaluate.json" 2>/dev/null
fi
grep -h '"test/accuracy"' "$WORK/metrics.jsonl" | tail -1
cat "$OUT_DIR/times.txt"
cat "$OUT_DIR/evaluate.md" 2>/dev/null
