#!/usr/bin/env bash
# Issue 4's evidence on ONE GPU in under 560 s: ViT-S/8 trained dense on cluttered digits, SiT / MCTF / DeiT
# fine-tuned from it, every reduction method off the shelf plus the fine-tuned rows in one sweep table and plot,
# and T2T-ViT-7 vs ViT-Ti/16 at 224 px.
#
# Usage: bash scripts/device/cluttered_digits_evidence.sh OUTDIR   (writes OUTDIR/cluttered_digits_evidence.tar.gz)
#
#   t=0    dense ViT-S/8 (configs/cluttered_digits_vit.py:gpu)     | T2T-ViT-7 224 px | ViT-Ti/16 224 px   (card shared)
#   t=225  SiT | MCTF | DeiT fine-tunes from the dense checkpoint     (card shared)
#   t=365  T2T-7 vs ViT-Ti: test top-1, GFLOPs, images/s              (card alone)
#   then   the sweep: dense + trained rows + every method off the shelf (card alone), until t=548
#   end    summary.md, tarball, tables printed
# Every step runs under `timeout` (SIGTERM: a training run saves a checkpoint and stops; the later steps use the
# latest checkpoint of whatever finished). The phase ends can be moved with TOKAX_PHASE1_S, TOKAX_PHASE2_S,
# TOKAX_COMPARE_S and TOKAX_BUDGET_S (seconds from the start).
# CPU smoke run (tiny models, a few steps each; a few minutes on 2 cores):
#   TOKAX_CONFIG_EXTRA=,runlocal JAX_PLATFORMS=cpu bash scripts/device/cluttered_digits_evidence.sh /tmp/cd_smoke
set -uo pipefail
OUT_DIR="${1:?usage: cluttered_digits_evidence.sh OUTDIR}"
WORK="${TOKAX_WORK:-/tmp/cd_evidence}"
EXTRA="${TOKAX_CONFIG_EXTRA:-}"
PHASE1=${TOKAX_PHASE1_S:-225}
PHASE2=${TOKAX_PHASE2_S:-365}
COMPARE_END=${TOKAX_COMPARE_S:-400}
BUDGET=${TOKAX_BUDGET_S:-548}
rm -rf "$WORK"
mkdir -p "$WORK" "$OUT_DIR"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python}
T0=$SECONDS

left() {  # seconds until deadline $1 (from the start), at least 5
  local s=$(( $1 - (SECONDS - T0) ))
  (( s < 5 )) && s=5
  echo $s
}
step() {  # name deadline mem_fraction command... : runs under timeout, logs to $WORK/name.log
  local name=$1 deadline=$2 fraction=$3; shift 3
  local start=$SECONDS limit
  limit=$(left "$deadline")
  XLA_PYTHON_CLIENT_MEM_FRACTION=$fraction timeout -k 20 "$limit" "$@" > "$WORK/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc $((SECONDS - start)) s (limit $limit s, ended at t=$((SECONDS - T0)) s)" | tee -a "$WORK/times.txt"
}
train() {  # name deadline mem_fraction config [overrides...]
  local name=$1 deadline=$2 fraction=$3 config=$4; shift 4
  step "$name" "$deadline" "$fraction" $PY -m tokax.train --config "$config" --workdir "$WORK/$name" \
    --config.progress_bar=False "$@"
}

VIT=configs/cluttered_digits_vit.py
TI="$VIT:gpu,variant=Ti/16,width=192,depth=12,heads=3,image_size=224$EXTRA"
TI_ARGS=(--config.total_steps=1500 --config.warmup_steps=150 --config.data.num_train=19200 --config.augment.max_shift=8)
if [[ "$EXTRA" == *runlocal* ]]; then
  TI="$VIT:gpu,variant=Ti/8,runlocal"  # the smoke run keeps runlocal's tiny model and step count
  TI_ARGS=()
fi

# Phase 1: the dense ViT-S/8 and the T2T-7 / ViT-Ti pair, side by side.
train dense "$PHASE1" 0.40 "$VIT:gpu$EXTRA" &
train t2t7 "$PHASE1" 0.30 "configs/cluttered_digits_t2t.py:gpu$EXTRA" &
train vit_ti "$PHASE1" 0.25 "$TI" "${TI_ARGS[@]}" &
wait

# Phase 2: the fine-tunes from the dense checkpoint, side by side.
train sit "$PHASE2" 0.30 "configs/cluttered_digits_sit.py:gpu$EXTRA" --config.distill.teacher_workdir="$WORK/dense" &
train mctf "$PHASE2" 0.30 "configs/cluttered_digits_mctf.py:gpu$EXTRA" --config.init_from.workdir="$WORK/dense" &
train deit "$PHASE2" 0.30 "configs/cluttered_digits_deit_distill.py:gpu$EXTRA" \
  --config.distill.teacher_workdir="$WORK/dense" &
wait

# Phase 3: measurements, each alone on the card.
step t2t_vs_vit "$COMPARE_END" 0.9 $PY -m tokax.bench.compare_runs --out "$WORK/t2t_vs_vit" \
  --run "T2T-ViT-7=$WORK/t2t7" --run "ViT-Ti=$WORK/vit_ti"
step sweep "$BUDGET" 0.9 $PY -m tokax.bench.sweep --config "configs/sweep_cluttered_digits.py:gpu$EXTRA" \
  --workdir "$WORK/sweep" --config.checkpoint.workdir="$WORK/dense" --config.trained.sit.workdir="$WORK/sit" \
  --config.trained.mctf.workdir="$WORK/mctf" --config.trained.deit.workdir="$WORK/deit"

# Summary: per-run final metrics, the sweep (replotted from its JSON if the sweep was cut short), the comparison.
JAX_PLATFORMS=cpu timeout 30 $PY - "$WORK" > "$WORK/summary.md" 2> "$WORK/summary.log" <<'EOF'
import json, os, sys
from tokax.bench import sweep
work = sys.argv[1]
print("# Cluttered digits evidence (issue 4)\n")
print("## Step times\n\n```\n" + open(os.path.join(work, "times.txt")).read() + "```\n")
print("## Training runs (last logged metrics)\n\n| run | last step | compile s | train images/s | train loss | val top-1 | "
      "test top-1 |\n|---|---|---|---|---|---|---|")
for name in ("dense", "t2t7", "vit_ti", "sit", "mctf", "deit"):
  path, last = os.path.join(work, name, "metrics.jsonl"), {}
  if os.path.exists(path):
    for line in open(path):
      record = json.loads(line)
      last.update({k: v for k, v in record.items()})
  fmt = lambda key: f"{100 * last[key]:.1f}%" if key in last else "-"
  num = lambda key, spec: format(last[key], spec) if key in last else "-"
  print(f"| {name} | {last.get('step', '-')} | {num('train/compile_s', '.0f')} | {num('train/images_per_s', ',.0f')} | "
        f"{num('train/loss', '.3f')} | {fmt('val/accuracy')} | {fmt('test/accuracy')} |")
sweep_json = os.path.join(work, "sweep", "sweep.json")
if os.path.exists(sweep_json):
  result = json.load(open(sweep_json))
  if not os.path.exists(os.path.join(work, "sweep", "sweep.png")):
    sweep.plot(result["rows"], os.path.join(work, "sweep", "sweep.png"), title=result["caption"] + " (cut short)")
  print("\n## Sweep: accuracy vs GFLOPs vs images/s (trained rows marked '(trained)')\n")
  print(sweep.to_markdown(result))
else:
  print("\n## Sweep: did not produce rows (see sweep.log)")
compare = os.path.join(work, "t2t_vs_vit", "compare.md")
print("\n## T2T-ViT-7 vs ViT-Ti/16\n")
print(open(compare).read() if os.path.exists(compare) else "not measured (see t2t_vs_vit.log)")
EOF
echo "summary rc=$? (t=$((SECONDS - T0)) s)" >> "$WORK/times.txt"
cat "$WORK/summary.md"
tar -C "$WORK" -czf "$OUT_DIR/cluttered_digits_evidence.tar.gz" --exclude='checkpoints' \
  times.txt summary.md $(cd "$WORK" && ls -d *.log sweep t2t_vs_vit */metrics.jsonl */config.json 2>/dev/null)
echo "wrote $OUT_DIR/cluttered_digits_evidence.tar.gz (t=$((SECONDS - T0)) s)"
