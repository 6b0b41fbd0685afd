#!/usr/bin/env bash
# T2T-ViT-7 vs ViT-Ti/16 at equal training budget on ONE GPU in one call (issue 15): both trained from scratch
# on glyphs at 112 px with configs/glyphs_vit.py's recipe (configs/glyphs_t2t.py swaps only the model), STEPS
# steps of 256 each, three seeds; the pair of each seed shares the card. Then tokax.bench.compare_runs on the
# seed-0 pair (test top-1, GFLOPs, images/s) and the verdict over seeds on the trainers' 10,000-image test pass:
# per seed d_s = top-1(T2T-ViT-7) - top-1(ViT-Ti/16), mean and SE = sd(d_s) / sqrt(3), 2 SE rule.
#
# 2026-12-07 on an H100 (BENCHMARKS.md): at TOKAX_STEPS=1500 both were still on the glyphs plateau (9-21%), two
# seeds in ~220 s; the pair of one seed takes ~105 s per 1,500 steps, so 3,000+ steps need TOKAX_SEEDS split over calls.
#
# Usage: bash scripts/device/glyphs_t2t.sh OUTDIR
#   OUTDIR/t2t.md, OUTDIR/times.txt, OUTDIR/*.log, OUTDIR/*_metrics.jsonl, OUTDIR/compare/compare.md
# CPU smoke run: TOKAX_SMOKE=1 TOKAX_SEEDS=0 JAX_PLATFORMS=cpu bash scripts/device/glyphs_t2t.sh /tmp/t2t
set -uo pipefail
OUT_DIR="${1:?usage: glyphs_t2t.sh OUTDIR}"
WORK="${TOKAX_WORK:-workdir_dev/t2t}"
SEEDS=${TOKAX_SEEDS:-0 1 2}
STEPS=${TOKAX_STEPS:-3000}
TRAIN_END=${TOKAX_TRAIN_END:-470}
BUDGET=${TOKAX_BUDGET_S:-560}
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python}
T0=$SECONDS
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
rm -rf "$WORK"
mkdir -p "$OUT_DIR" "$WORK"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$OUT_DIR/card.txt" 2>&1
COMMON=(--config.total_steps="$STEPS" --config.warmup_steps=$((STEPS / 10)) --config.eval_every_steps="$STEPS"
        --config.checkpoint_every_steps="$STEPS" --config.data.num_workers=7 --config.data.num_val=1000
        --config.log_every_steps=500)
SIZE="image_size=112"
if [[ -n "${TOKAX_SMOKE:-}" ]]; then SIZE="runlocal"; COMMON=(); fi
for seed in $SEEDS; do
  (( SECONDS - T0 > TRAIN_END - 60 )) && break
  XLA_PYTHON_CLIENT_MEM_FRACTION=0.4 run "t2t7_s$seed" "$TRAIN_END" "$PY" -m tokax.train \
    --config "configs/glyphs_t2t.py:$SIZE,seed=$seed" --workdir "$WORK/t2t7_s$seed" "${COMMON[@]}" &
  XLA_PYTHON_CLIENT_MEM_FRACTION=0.4 run "vit_ti16_s$seed" "$TRAIN_END" "$PY" -m tokax.train \
    --config "configs/glyphs_vit.py:$SIZE" --config.seed="$seed" --workdir "$WORK/vit_ti16_s$seed" "${COMMON[@]}" &
  wait
done
for d in "$WORK"/*/; do cp "$d/metrics.jsonl" "$OUT_DIR/$(basename "$d")_metrics.jsonl" 2>/dev/null; done
run compare "$BUDGET" "$PY" -m tokax.bench.compare_runs --out "$OUT_DIR/compare" --dtype bfloat16 \
  --run "T2T-ViT-7=$WORK/t2t7_s0" --run "ViT-Ti/16=$WORK/vit_ti16_s0"
"$PY" - "$WORK" "$SEEDS" > "$OUT_DIR/t2t.md" <<'PYEOF'
import json, os, sys
import numpy as np
work, seeds = sys.argv[1], [int(s) for s in sys.argv[2].split()]
def final(name):
  path, last = os.path.join(work, name, "metrics.jsonl"), {}
  if os.path.exists(path):
    for line in open(path):
      last.update(json.loads(line))
  return last
rows, d = [], []
for s in seeds:
  t, v = final(f"t2t7_s{s}"), final(f"vit_ti16_s{s}")
  if "test/accuracy" in t and "test/accuracy" in v:
    d.append(t["test/accuracy"] - v["test/accuracy"])
    rows.append(f"| {s} | {100 * t['test/accuracy']:.2f}% | {100 * v['test/accuracy']:.2f}% | {100 * d[-1]:+.2f} | "
                f"{t.get('train/images_per_s', float('nan')):,.0f} / {v.get('train/images_per_s', float('nan')):,.0f} |")
print("| seed | T2T-ViT-7 test top-1 | ViT-Ti/16 test top-1 | d | train images/s T2T / ViT (last log) |")
print("|---|---|---|---|---|")
print("\n".join(rows))
if len(d) > 1:
  mean, se = float(np.mean(d)), float(np.std(d, ddof=1) / np.sqrt(len(d)))
  word = "T2T-ViT-7 ahead" if mean > 2 * se else "ViT-Ti/16 ahead" if mean < -2 * se else "undecided"
  print(f"\nmean d {100 * mean:+.2f} points, SE {100 * se:.2f} over {len(d)} seeds: {word}")
PYEOF
cat "$OUT_DIR/times.txt" "$OUT_DIR/t2t.md" "$OUT_DIR/compare/compare.md" 2>/dev/null
