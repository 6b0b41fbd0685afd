#!/usr/bin/env bash
# T2T-ViT-7 vs ViT-Ti/16 evidence on ONE GPU in under 450 s (issue 4): four runs side by side, then compared.
#   t2t_digits / vit_digits   plain digits (scikit-learn 8x8, upsampled to 224 px), 1,000 steps each
#   t2t_transformer_stem      cluttered digits, T2T-ViT-7 with the transformer stem instead of the Performer
#   t2t_long                  cluttered digits, T2T-ViT-7 (Performer) for up to 4,000 steps (stopped by the
#                             time limit: SIGTERM saves a checkpoint, the comparison reads the latest)
# The digits runs are scored by the trainer's own final test evaluation (metrics.jsonl); compare_runs scores
# the cluttered runs (it evaluates on the config's dataset).
# Usage: bash scripts/device/t2t_evidence.sh OUTDIR   (OUTDIR/t2t_evidence.tgz; tables printed)
set -uo pipefail
DEST="${1:?usage: t2t_evidence.sh OUTDIR}"
OUT_DIR=/tmp/t2t_evidence
WORK=/tmp/t2t_runs
TRAIN_S=${TOKAX_TRAIN_S:-330}
rm -rf "$OUT_DIR" "$WORK"; mkdir -p "$OUT_DIR" "$WORK" "$DEST"
export PYTHONUNBUFFERED=1 XLA_FLAGS=--xla_gpu_enable_triton_gemm=false
PY=${PYTHON:-python3}
T2T=configs/cluttered_digits_t2t.py:gpu
TI=configs/cluttered_digits_vit.py:gpu,variant=Ti/16,width=192,depth=12,heads=3,image_size=224
DIGITS=(--config.data.name=digits --config.data.num_train=1258 --config.data.num_val=180 --config.data.num_test=359
        --config.total_steps=1000 --config.warmup_steps=100 --config.augment.max_shift=8)
TI_CLUTTER=(--config.total_steps=1500 --config.warmup_steps=150 --config.data.num_train=19200 --config.augment.max_shift=8)
train() {  # name config [overrides...]
  local name=$1 config=$2; shift 2
  XLA_PYTHON_CLIENT_MEM_FRACTION=0.22 timeout -k 20 "$TRAIN_S" $PY -m tokax.train --config "$config" \
    --workdir "$WORK/$name" --config.progress_bar=False "$@" > "$OUT_DIR/$name.log" 2>&1
  echo "$name rc=$?" >> "$OUT_DIR/times.txt"
}
nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT_DIR/gpus.txt" 2>&1
train t2t_digits "$T2T" "${DIGITS[@]}" &
train vit_digits "$TI" "${DIGITS[@]}" &
train t2t_transformer_stem "$T2T,tokens_type=transformer" &
train t2t_long "$T2T" --config.total_steps=4000 --config.warmup_steps=150 &
wait
timeout 60 $PY -m tokax.bench.compare_runs --out "$OUT_DIR/cluttered" \
  --run "T2T-ViT-7 transformer stem=$WORK/t2t_transformer_stem" \
  --run "T2T-ViT-7 long=$WORK/t2t_long" > "$OUT_DIR/compare_cluttered.log" 2>&1
for name in t2t_digits vit_digits t2t_transformer_stem t2t_long; do
  cp "$WORK/$name/metrics.jsonl" "$OUT_DIR/$name.metrics.jsonl" 2>/dev/null
  echo "== $name"; grep -h '"eval\|"test\|train/loss' "$WORK/$name/metrics.jsonl" 2>/dev/null | tail -3 | cut -c1-300
done
cat "$OUT_DIR/times.txt" "$OUT_DIR/cluttered/compare.md" 2>/dev/null
tail -3 "$OUT_DIR/compare_cluttered.log"
tar czf "$DEST/t2t_evidence.tgz" -C /tmp t2t_evidence
