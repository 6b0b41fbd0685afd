#!/usr/bin/env bash
# Issues 4 and 5 on ONE 4-GPU machine in under 580 s: weak scaling on all four GPUs first, then four
# single-GPU streams side by side (one process per GPU, so no timing shares a card):
#
#   t=0     all GPUs: ViT-B/16 data-parallel weak scaling, 1/2/4 GPUs (tokax.bench.train_step --mode scaling)
#   then    GPU 0: Mosaic GPU kernels: --check (forward, scores, backward="pallas" gradients) and timings
#           GPU 1: cuDNN padding multiple, then the ViT-B/16 train step vs timm torch.compile (+ kernel profile)
#           GPU 2: ViT-B/16 inference: tokax dense / ToMe r=16 (xla and fused matching) vs timm and the official
#                  ToMe patch; then the matching kernel vs XLA
#           GPU 3: T2T-ViT-7 (bf16 and float32) and ViT-Ti/16 trained on cluttered digits side by side, then compared
#
# Usage (repo root; .ext/tome = a facebookresearch/ToMe checkout):
#   bash scripts/device/issues45_x4.sh OUTDIR
set -uo pipefail
OUT_DIR="${1:?usage: issues45_x4.sh OUTDIR}"
WORK=/tmp/issues45
BUDGET=${TOKAX_BUDGET_S:-580}
SCALING_S=${TOKAX_SCALING_S:-170}
mkdir -p "$OUT_DIR" "$WORK"
export PYTHONUNBUFFERED=1 XLA_FLAGS=--xla_gpu_enable_triton_gemm=false
PY=${PYTHON:-python3}
T0=$SECONDS
left() { local s=$(( $1 - (SECONDS - T0) )); (( s < 5 )) && s=5; echo $s; }
run() {  # name gpu(s) deadline command... : under timeout, log in OUT_DIR/name.log
  local name=$1 gpus=$2 deadline=$3; shift 3
  local start=$SECONDS limit
  limit=$(left "$deadline")
  CUDA_VISIBLE_DEVICES=$gpus timeout -k 15 "$limit" "$@" > "$OUT_DIR/$name.log" 2>&1
  echo "$name rc=$? $((SECONDS - start)) s (limit $limit s, ended at t=$((SECONDS - T0)) s)" | tee -a "$OUT_DIR/times.txt"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT_DIR/gpus.txt" 2>&1
$PY -c "import jax, torch; print(jax.__version__, jax.devices(), torch.__version__)" >> "$OUT_DIR/gpus.txt" 2>&1

run scaling 0,1,2,3 "$SCALING_S" $PY -m tokax.bench.train_step --mode scaling --variant B/16 --batch 128 \
  --steps 20 --warmup 3 --out "$OUT_DIR/scaling.json"

run attention_kernels 0 "$BUDGET" $PY -m tokax.bench.attention_kernels --check --repeats 10 \
  --shapes 256,197,12,64 64,577,16,64 16,1024,12,64 8,4096,12,64 32,1024,8,128 \
  --bwd-blocks 64,64 64,128 128,64 --out "$OUT_DIR/attention_kernels.json" &
run cudnn_padding 1 "$BUDGET" $PY scripts/device/cudnn_padding.py --out "$OUT_DIR/cudnn_padding.json" &
( run vit_vs_timm 2 $((BUDGET - 150)) $PY -m tokax.bench.vit_vs_timm --set issue5 --tome .ext/tome --out "$OUT_DIR/vit"
  run matching_kernel 2 "$BUDGET" $PY -m tokax.bench.matching_kernel --n 197 577 4096 --gb 1.0 --repeats 20 ) &
(
  train() {  # name deadline config [overrides...]
    local name=$1 deadline=$2 config=$3; shift 3
    XLA_PYTHON_CLIENT_MEM_FRACTION=0.3 run "$name" 3 "$deadline" $PY -m tokax.train --config "$config" \
      --workdir "$WORK/$name" --config.progress_bar=False "$@"
  }
  TI="configs/cluttered_digits_vit.py:gpu,variant=Ti/16,width=192,depth=12,heads=3,image_size=224"
  TRAIN_END=$((BUDGET - 60))
  train t2t7 $TRAIN_END configs/cluttered_digits_t2t.py:gpu &
  train t2t7_f32 $TRAIN_END configs/cluttered_digits_t2t.py:gpu --config.model.dtype=float32 &
  train vit_ti $TRAIN_END "$TI" --config.total_steps=1500 --config.warmup_steps=150 --config.data.num_train=19200 \
    --config.augment.max_shift=8 &
  wait
  run t2t_vs_vit 3 "$BUDGET" $PY -m tokax.bench.compare_runs --out "$OUT_DIR/t2t_vs_vit" \
    --run "T2T-ViT-7=$WORK/t2t7" \
    --run "T2T-ViT-7 float32=$WORK/t2t7_f32" \
    --run "ViT-Ti/16=$WORK/vit_ti"
) &
wait
for name in t2t7 t2t7_f32 vit_ti; do  # the runs' own eval lines
  grep -h -i "eval\|test" "$OUT_DIR/$name.log" | tail -4 | sed "s/^/$name: /" >> "$OUT_DIR/train_tail.txt"
done
cat "$OUT_DIR/times.txt"
