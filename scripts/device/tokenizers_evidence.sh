#!/usr/bin/env bash
# Issue 6 evidence on one GPU: every quantizer on digits (the config's 1000 steps) and on photo crops
# (PHOTO_STEPS, default the config's 4000, in bf16, the GAN from half way), trained side by side on the
# card (about 7 minutes on an H200: the photo runs are GPU-bound, ~63 steps/s each alone), then the
# VTBench-style evaluation of each family.
# Usage: bash scripts/device/tokenizers_evidence.sh OUTDIR   (writes OUTDIR/tokenizers_evidence.tar.gz)
set -uo pipefail
OUT_DIR="${1:?usage: tokenizers_evidence.sh OUTDIR}"
WORK="${TOKAX_WORK:-/tmp/tok_evidence}"
mkdir -p "$WORK" "$OUT_DIR"
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.14
export PYTHONUNBUFFERED=1
PHOTO_STEPS=${PHOTO_STEPS:-4000}
train() {  # family quantizer [extra overrides...]
  local family=$1 q=$2; shift 2
  local start=$SECONDS
  python -m tokax.train --config "configs/${family}_tokenizer.py:quantizer=$q${TOKAX_CONFIG_EXTRA:-}" --workdir "$WORK/${family}_$q" \
    --config.progress_bar=False "$@" > "$WORK/${family}_$q.log" 2>&1
  echo "$family $q rc=$? $((SECONDS - start)) s" | tee -a "$WORK/times.txt"
}
( for q in vq vq_ema fsq lfq kl; do train digits $q; done ) &
for q in vq vq_ema fsq lfq kl; do
  train photos $q --config.model.dtype=bfloat16 --config.total_steps=$PHOTO_STEPS \
    --config.loss.disc_start=$((PHOTO_STEPS / 2)) --config.checkpoint_every_steps=$PHOTO_STEPS &
done
wait
args_digits=(); args_photos=()
for q in vq vq_ema fsq lfq kl; do
  args_digits+=(--workdir "$WORK/digits_$q"); args_photos+=(--workdir "$WORK/photos_$q")
done
python -m tokax.train.evaluate_tokenizer "${args_digits[@]}" --suites digits --out "$WORK/eval_digits" \
  > "$WORK/eval_digits.log" 2>&1 &
python -m tokax.train.evaluate_tokenizer "${args_photos[@]}" --suites photos --suites textures --suites text \
  --out "$WORK/eval_photos" > "$WORK/eval_photos.log" 2>&1 &
wait
cat "$WORK/times.txt" "$WORK/eval_digits.log" "$WORK/eval_photos.log"
tar -C "$WORK" -czf "$OUT_DIR/tokenizers_evidence.tar.gz" --exclude='checkpoints' --exclude='*/ckpt*' \
  times.txt eval_digits eval_photos $(cd "$WORK" && ls *.log)
