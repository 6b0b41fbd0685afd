#!/usr/bin/env bash
# Issues 4 and 5 on ONE GPU in under 580 s, every step alone on the card:
#   1. gradients of ViT-B/16 (dense, EViT) through the fused kernel's Pallas backward and "auto" vs XLA
#   2. the Mosaic GPU kernels: --check (forward, scores, backward) and timings at issue 5's shapes
#   3. the ViT-B/16 train step vs timm torch.compile (per-step synchronised and pipelined), and with
#      other XLA flags (command buffers)
#   4. ViT-B/16 inference: tokax dense / ToMe r=16 (xla and fused matching) vs timm and the official patch
# Usage (repo root; .ext/tome = a facebookresearch/ToMe checkout): bash scripts/device/issues45_single.sh OUTDIR
# (OUTDIR/issues45_single.tgz holds every log and JSON; the key lines are printed at the end)
set -uo pipefail
DEST="${1:?usage: issues45_single.sh OUTDIR}"
OUT_DIR=/tmp/issues45_single
rm -rf "$OUT_DIR"; mkdir -p "$OUT_DIR" "$DEST"
BASE_FLAGS=--xla_gpu_enable_triton_gemm=false
export PYTHONUNBUFFERED=1 XLA_FLAGS=$BASE_FLAGS
PY=${PYTHON:-python3}
T0=$SECONDS
source "$(dirname "$0")/lib.sh"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT_DIR/gpus.txt" 2>&1
run grads 70 $PY scripts/device/kernels_check.py --grads-only
run attention_kernels 280 $PY -m tokax.bench.attention_kernels --check --repeats 10 \
  --shapes 256,197,12,64 64,577,16,64 16,1024,12,64 8,4096,12,64 32,1024,8,128 --out "$OUT_DIR/attention_kernels.json"
run train_step 390 $PY -m tokax.bench.train_step --mode compare --variant B/16 --batch 128 --timm compile \
  --out "$OUT_DIR/train_step.json"
XLA_FLAGS="$BASE_FLAGS --xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUDNN,CUSTOM_CALL --xla_gpu_graph_min_graph_size=1" \
  run train_step_cmdbuf 440 $PY -m tokax.bench.train_step --mode compare --variant B/16 --batch 128 --timm none
XLA_FLAGS="$BASE_FLAGS --xla_gpu_enable_command_buffer=" \
  run train_step_nocmdbuf 480 $PY -m tokax.bench.train_step --mode compare --variant B/16 --batch 128 --timm none
run vit_vs_timm 580 $PY -m tokax.bench.vit_vs_timm --set issue5 --tome .ext/tome --out "$OUT_DIR/vit"
cat "$OUT_DIR/times.txt"
grep -h "rel max err\|FAILED" "$OUT_DIR/grads.log"
grep -h "check\|FAILED" "$OUT_DIR/attention_kernels.log" | cut -c1-400
grep -h "^|" "$OUT_DIR/attention_kernels.log"
grep -h "img/s\|timm compiled" "$OUT_DIR"/train_step*.log
grep -h "img/s" "$OUT_DIR/vit_vs_timm.log"
tar czf "$DEST/issues45_single.tgz" -C /tmp issues45_single
