#!/usr/bin/env bash
# The trained claims on ONE GPU in one call (issue 15): configs/glyphs_finetune.py's methods fine-tuned from
# the dense ViT-S/16 run START (scripts/device/glyphs_s16.sh leaves it in workdir_dev/s16), three seeds each,
# then scripts/device/glyphs_claims.py scores every run on the same 10,000 test images and decides each claim
# over the seeds. The runs of one seed share the card (TOKAX_PARALLEL at once, each with its own memory
# share), seed after seed, so a call cut short still holds whole seeds. Every step runs under `timeout`
# until its deadline (seconds from the start).
#
# Usage: bash scripts/device/glyphs_claims.sh OUTDIR [START]
#   OUTDIR/claims/claims.md|json, OUTDIR/times.txt, OUTDIR/*.log (one per run), OUTDIR/runs.tgz (metrics)
# CPU smoke run (runlocal fine-tunes of a runlocal start, one seed):
#   TOKAX_SMOKE=1 TOKAX_SEEDS=0 JAX_PLATFORMS=cpu bash scripts/device/glyphs_claims.sh /tmp/claims /tmp/g_local
set -uo pipefail
OUT_DIR="${1:?usage: glyphs_claims.sh OUTDIR [START]}"
START="${2:-workdir_dev/s16}"
WORK="${TOKAX_WORK:-workdir_dev/claims}"
SEEDS=${TOKAX_SEEDS:-0 1 2}
METHODS=${TOKAX_METHODS:-dense tome evit mctf sit sit_ce deit}
STEPS=${TOKAX_STEPS:-200}
PARALLEL=${TOKAX_PARALLEL:-7}
FRACTION=${TOKAX_MEM_FRACTION:-0.12}
TRAIN_END=${TOKAX_TRAIN_END:-450}
BUDGET=${TOKAX_BUDGET_S:-580}
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python}
T0=$SECONDS
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
if [[ ! -f "$START/config.json" ]]; then
  echo "no start run in $START (run scripts/device/glyphs_s16.sh first, on the same machine)"; exit 3
fi
rm -rf "$WORK"
mkdir -p "$OUT_DIR" "$WORK"
EXTRA=""
[[ -n "${TOKAX_SMOKE:-}" ]] && EXTRA=",runlocal"
for seed in $SEEDS; do
  for method in $METHODS; do
    while (( $(jobs -rp | wc -l) >= PARALLEL )); do wait -n; done
    (( SECONDS - T0 > TRAIN_END - 60 )) && break 2  # too late to start a run that would finish
    XLA_PYTHON_CLIENT_MEM_FRACTION=$FRACTION run "${method}_s$seed" "$TRAIN_END" "$PY" -m tokax.train \
      --config "configs/glyphs_finetune.py:method=$method,start=$START,seed=$seed,steps=$STEPS$EXTRA" \
      --workdir "$WORK/${method}_s$seed" &
  done
done
wait
NUM=10000
[[ -n "${TOKAX_SMOKE:-}" ]] && NUM=64
run claims "$BUDGET" "$PY" scripts/device/glyphs_claims.py --runs "$WORK" --start "$START" --num_examples "$NUM" \
  --out "$OUT_DIR/claims"
tar -C "$WORK" -czf "$OUT_DIR/runs.tgz" $(cd "$WORK" && ls -d */metrics.jsonl */config.json 2>/dev/null)
cat "$OUT_DIR/times.txt"
cat "$OUT_DIR/claims/claims.md" 2>/dev/null
