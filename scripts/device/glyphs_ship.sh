#!/usr/bin/env bash
# The glyphs ViT-Ti/16 models on ONE GPU in one call (issue 15): the input pipeline's rate at 112 and
# 224 px, then ViT-Ti/16 at 112 px (the model that ships: small enough for the CPU main job) and at
# 224 px, each through scripts/device/glyphs_train.sh (train, final 10,000-image test pass, bf16
# safetensors export). Schedules are sized from the measured input rate so that both fit the call.
#
# Usage: bash scripts/device/glyphs_ship.sh OUTDIR [TOTAL_S (default 560)]
#   OUTDIR/probe.log           rendering ms/image on one core and pipeline images/s at each size
#   OUTDIR/g112/, OUTDIR/g224/ each run's config.json, metrics.jsonl, times.txt, logs, safetensors
set -uo pipefail
OUT_DIR="${1:?usage: glyphs_ship.sh OUTDIR [TOTAL_S]}"
TOTAL_S=${2:-560}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python}
T0=$SECONDS
HERE="$(dirname "${BASH_SOURCE[0]}")"
WORKERS=${TOKAX_WORKERS:-15}

timeout 90 "$PY" scripts/glyphs_generation_speed.py --sizes 112,224 --images 100 --pipeline_workers "$WORKERS" \
  --pipeline_batches 100 2>&1 | grep -v Warning | tee "$OUT_DIR/probe.log"
rate() { grep -o "[0-9]* images/s at $1 px" "$OUT_DIR/probe.log" | cut -d' ' -f1; }
# steps that `seconds` of training take at the measured rate (2,000 images/s if the probe failed), in 500s
steps() { "$PY" -c "r=${1:-2000}; print(max(2000, min(10000, int(r * $2 / 256) // 500 * 500)))"; }
R112=$(rate 112); R224=$(rate 224)
DATA_FLAGS=(--config.data.num_workers="$WORKERS")
[[ -z "$R224" ]] && DATA_FLAGS=(--config.data.num_workers=0 --config.data.num_threads=16)  # the workers failed
COMMON=(--config.data.num_val=2000 --config.log_every_steps=500 --config.checkpoint_every_steps=2000 "${DATA_FLAGS[@]}")

S112=$(steps "$R112" 150)
echo "112 px: pipeline ${R112:-?} images/s -> $S112 steps"
TOKAX_WORK=/tmp/g112 TOKAX_CONFIG="configs/glyphs_vit.py:image_size=112" TOKAX_TRAIN_S=240 TOKAX_EVAL_S=0 \
  bash "$HERE/glyphs_train.sh" "$OUT_DIR/g112" --config.total_steps="$S112" --config.warmup_steps=$((S112 / 10)) \
  --config.eval_every_steps="$S112" "${COMMON[@]}"

LEFT=$((TOTAL_S - (SECONDS - T0)))
S224=$(steps "$R224" $((LEFT - 110)))
echo "224 px: pipeline ${R224:-?} images/s, ${LEFT} s left -> $S224 steps"
if (( LEFT > 150 )); then
  TOKAX_WORK=/tmp/g224 TOKAX_TRAIN_S=$((LEFT - 45)) TOKAX_EVAL_S=0 \
    bash "$HERE/glyphs_train.sh" "$OUT_DIR/g224" --config.total_steps="$S224" --config.warmup_steps=$((S224 / 10)) \
    --config.eval_every_steps="$S224" "${COMMON[@]}"
fi
echo "total $((SECONDS - T0)) s"
