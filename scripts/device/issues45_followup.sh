#!/usr/bin/env bash
# Issues 4 and 5, second single-GPU pass (under 580 s, every step alone on the card):
#   1. ViT-B/16 inference: tokax dense / ToMe r=16 (xla and fused matching) vs timm and the official ToMe patch
#   2. parameter gradients through the fused kernel's Pallas backward and "auto" vs XLA (dense, EViT)
#   3. host input throughput (ViT-S/16 at 224 train pipeline, 1-16 threads) vs the ViT-S/16 train step
#   4. EViT and MCTF on ViT-B/16 with attention auto (fused scores) and xla
# Usage (repo root; .ext/tome = a facebookresearch/ToMe checkout; grain wheels in .whl):
#   bash scripts/device/issues45_followup.sh OUTDIR      (OUTDIR/issues45_followup.tgz; key lines printed)
set -uo pipefail
DEST="${1:?usage: issues45_followup.sh OUTDIR}"
OUT_DIR=/tmp/issues45_followup
rm -rf "$OUT_DIR"; mkdir -p "$OUT_DIR" "$DEST"
export PYTHONUNBUFFERED=1 XLA_FLAGS=--xla_gpu_enable_triton_gemm=false
PY=${PYTHON:-python3}
T0=$SECONDS
source "$(dirname "$0")/lib.sh"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT_DIR/gpus.txt" 2>&1
nproc >> "$OUT_DIR/gpus.txt"
run vit_vs_timm 110 $PY -m tokax.bench.vit_vs_timm --set issue5 --tome .ext/tome --out "$OUT_DIR/vit"
run grads 260 $PY scripts/device/kernels_check.py --grads-only
run input_pipeline 330 $PY -m tokax.bench.input_pipeline --threads 1 2 4 8 16 --batch 256 --batches 8 \
  --out "$OUT_DIR/input_pipeline.json"
run train_step_s16 390 $PY -m tokax.bench.train_step --mode compare --variant S/16 --batch 256 --timm none \
  --out "$OUT_DIR/train_step_s16.json"
run sweep_auto 485 $PY -m tokax.bench.sweep --config configs/sweep_vit_b16.py:only=evit+mctf --config.overhead=none \
  --config.attention=auto --workdir "$OUT_DIR/sweep_auto"
run sweep_xla 575 $PY -m tokax.bench.sweep --config configs/sweep_vit_b16.py:only=evit+mctf --config.overhead=none \
  --config.attention=xla --workdir "$OUT_DIR/sweep_xla"
cat "$OUT_DIR/times.txt"
grep -h "img/s" "$OUT_DIR/vit_vs_timm.log"
grep -h "rel max err\|FAILED" "$OUT_DIR/grads.log"
grep -h "|\|threads" "$OUT_DIR/input_pipeline.log" | tail -8
grep -h "img/s" "$OUT_DIR/train_step_s16.log"
for s in sweep_auto sweep_xla; do echo "== $s"; cat "$OUT_DIR/$s/sweep.md" 2>/dev/null | head -30 || tail -5 "$OUT_DIR/$s.log"; done
tar czf "$DEST/issues45_followup.tgz" -C /tmp issues45_followup
