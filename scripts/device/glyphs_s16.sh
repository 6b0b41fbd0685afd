#!/usr/bin/env bash
# The glyphs ViT-S/16 on ONE GPU (issue 15), then its off-the-shelf orderings if time is left:
#   t=0      ViT-S/16 at 224 px (configs/glyphs_vit.py:variant=S/16, TOKAX_S16_STEPS steps of 256, default 10,000,
#            AdamW lr 5e-4); with TOKAX_GAP=1 a mean-pooled ViT-Ti/16 at 112 px (pool=gap, 4,000 steps, DivPrune's
#            model) shares the card
#   then     scripts/device/glyphs_orderings.py on the S/16 (in-encoder methods, 10,000 test images), until ORD_END
#   then     with TOKAX_GAP=1, scripts/device/glyphs_orderings.py --rows post on the mean-pooled model
# 2026-12-07 on an H100 (BENCHMARKS.md): 3,000 steps at lr 8e-4 beside the Ti/16 gave 56.7% (still on the glyphs
# plateau); 10,000 steps alone are ~8.5 min, so the orderings usually need a second call on the same warm machine:
#   python scripts/device/glyphs_orderings.py --model workdir_dev/s16 --num_examples 10000 --out OUT
# Runs land in WORK (default workdir_dev/, ignored by git: on a machine kept warm the next call, e.g.
# scripts/device/glyphs_claims.sh, fine-tunes WORK/s16). Every step runs under `timeout` until its deadline
# (seconds from the start; SIGTERM makes a training run save and stop).
#
# Usage: bash scripts/device/glyphs_s16.sh OUTDIR
#   OUTDIR/times.txt, *.log; OUTDIR/s16_*.json|jsonl, gap_*; OUTDIR/ord_s16/orderings.md|json, ord_gap/...
# CPU smoke run (tiny models, a few steps): TOKAX_SMOKE=1 TOKAX_GAP=1 JAX_PLATFORMS=cpu bash scripts/device/glyphs_s16.sh /tmp/s16
set -uo pipefail
OUT_DIR="${1:?usage: glyphs_s16.sh OUTDIR}"
WORK="${TOKAX_WORK:-workdir_dev}"
TRAIN_END=${TOKAX_TRAIN_END:-545}
ORD_END=${TOKAX_ORD_END:-575}
BUDGET=${TOKAX_BUDGET_S:-580}
STEPS=${TOKAX_S16_STEPS:-10000}
mkdir -p "$OUT_DIR" "$WORK"
rm -rf "$WORK/s16" "$WORK/gap"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python}
T0=$SECONDS
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$OUT_DIR/card.txt" 2>&1

S16=(--config "configs/glyphs_vit.py:variant=S/16" --config.total_steps="$STEPS" --config.warmup_steps=$((STEPS / 10))
     --config.lr=5e-4 --config.eval_every_steps="$STEPS" --config.checkpoint_every_steps=2000
     --config.data.num_workers=14 --config.data.num_val=2000 --config.log_every_steps=250)
GAP=(--config "configs/glyphs_vit.py:pool=gap,image_size=112" --config.total_steps=4000 --config.warmup_steps=400
     --config.eval_every_steps=4000 --config.checkpoint_every_steps=2000 --config.data.num_workers=4
     --config.data.num_val=2000 --config.log_every_steps=500)
ORD=(--num_examples 10000)
if [[ -n "${TOKAX_SMOKE:-}" ]]; then
  S16=(--config "configs/glyphs_vit.py:runlocal"); GAP=(--config "configs/glyphs_vit.py:runlocal,pool=gap")
  ORD=(--num_examples 64 --dtype float32 --batch_size 32)
fi
XLA_PYTHON_CLIENT_MEM_FRACTION=0.6 run s16_train "$TRAIN_END" "$PY" -m tokax.train --workdir "$WORK/s16" "${S16[@]}" &
if [[ -n "${TOKAX_GAP:-}" ]]; then
  XLA_PYTHON_CLIENT_MEM_FRACTION=0.25 run gap_train "$TRAIN_END" "$PY" -m tokax.train --workdir "$WORK/gap" "${GAP[@]}" &
fi
wait
for name in s16 gap; do
  cp "$WORK/$name/config.json" "$OUT_DIR/${name}_config.json" 2>/dev/null
  cp "$WORK/$name/metrics.jsonl" "$OUT_DIR/${name}_metrics.jsonl" 2>/dev/null
  grep -h '"test/accuracy"' "$WORK/$name/metrics.jsonl" | tail -1
done
run ord_s16 "$ORD_END" "$PY" scripts/device/glyphs_orderings.py --model "$WORK/s16" "${ORD[@]}" --out "$OUT_DIR/ord_s16"
if [[ -n "${TOKAX_GAP:-}" ]]; then
  run ord_gap "$BUDGET" "$PY" scripts/device/glyphs_orderings.py --model "$WORK/gap" "${ORD[@]}" --rows post \
    --out "$OUT_DIR/ord_gap"
fi
cat "$OUT_DIR/times.txt"
for f in "$OUT_DIR"/ord_*/orderings.md; do echo "== $f"; head -40 "$f"; done
