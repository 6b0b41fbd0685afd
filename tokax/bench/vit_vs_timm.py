"""tokax ViT-B/16 dense and ToMe vs timm (eager, torch.compile) vs the official ToMe timm patch.

One process, one card, same inputs (bf16, batch 256, median of 30 timed runs after warm-up,
three rotating random batches). The numbers in BENCHMARKS.md come from:
  XLA_FLAGS=--xla_gpu_enable_triton_gemm=false PYTHONPATH=. \
    python -m tokax.bench.vit_vs_timm --set final --tome /path/to/ToMe --out OUT
"Bound" rows are bench-only: ToMe's token schedule with no plan at all (the last r tokens dropped),
the fastest any merging method with that schedule could be.
"""
import argparse
import json
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from tokax.models import ViT
from tokax.bench import sweep
from tokax.reduction import ToMe


def tome_bound(model: ViT, params, r: int) -> ViT:
  """Bench-only bound: ToMe r's per-block token counts with no plan at all (sweep.ScheduleBound)."""
  counts = sweep.layer_token_counts(model.clone(reduction=ToMe(r=r)), params, (224, 224, 3))
  return model.clone(reduction=sweep.ScheduleBound(197, counts))


def time_jax(fn, inputs, repeats=30, warmup=3):
  for i in range(warmup):
    jax.block_until_ready(fn(inputs[i % len(inputs)]))
  times = []
  for i in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(inputs[i % len(inputs)]))
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def time_torch(fn, inputs, repeats=30, warmup=3):
  import torch
  for i in range(warmup):
    fn(inputs[i % len(inputs)])
  torch.cuda.synchronize()
  times = []
  for i in range(repeats):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn(inputs[i % len(inputs)])
    end.record()
    torch.cuda.synchronize()
    times.append(start.elapsed_time(end) / 1e3)
  return statistics.median(times)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--batch", type=int, default=256)
  ap.add_argument("--tome", default=None)
  ap.add_argument("--out", default=".")
  ap.add_argument("--skip-compile", action="store_true")
  ap.add_argument("--jax-only", action="store_true")
  ap.add_argument("--set", default="full")
  args = ap.parse_args()
  b = args.batch
  rows = []
  print(jax.devices(), jax.__version__, flush=True)

  rng = np.random.default_rng(0)
  host_inputs = [rng.standard_normal((b, 224, 224, 3)).astype(np.float32) for _ in range(3)]
  inputs = [jnp.asarray(x, jnp.bfloat16) for x in host_inputs]
  base = ViT(variant="B/16", num_classes=1000, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
  params = jax.jit(base.init)(jax.random.key(0), inputs[0][:1])
  params = jax.tree.map(lambda p: (jax.random.normal(jax.random.key(1), p.shape, jnp.float32) * 0.02).astype(p.dtype),
                        params)
  variants = {
      "tokax dense, xla attention": base.clone(attention="xla"),
      "tokax dense, cudnn, tanh gelu": base.clone(attention="cudnn", gelu_approximate=True),
      "bound: truncate r=16 (no plan), cudnn": tome_bound(base.clone(attention="cudnn"), params, 16),
      "tokax dense, cudnn attention": base.clone(attention="cudnn"),
      "tokax ToMe r=16, cudnn, matmul merge": base.clone(attention="cudnn", reduction=ToMe(r=16, merge="matmul")),
      "tokax ToMe r=16, cudnn, scatter merge": base.clone(attention="cudnn", reduction=ToMe(r=16, merge="scatter")),
      "tokax ToMe r=16, xla attention": base.clone(attention="xla", reduction=ToMe(r=16)),
      "tokax ToMe r=16 no prop-attn, cudnn": base.clone(attention="cudnn", reduction=ToMe(r=16, prop_attn=False)),
      "tokax ToMe r=(16,-1), cudnn": base.clone(attention="cudnn", reduction=ToMe(r=(16, -1))),
  }
  if args.set == "tanh":
    tanh = base.clone(gelu_approximate=True)
    variants = {
        "tokax dense, cudnn, exact gelu": base.clone(attention="cudnn"),
        "tokax dense, cudnn, tanh gelu": tanh.clone(attention="cudnn"),
        "bound: truncate r=16 (no plan), tanh": tome_bound(tanh.clone(attention="cudnn"), params, 16),
        "tokax ToMe r=16, exact gelu": base.clone(attention="cudnn", reduction=ToMe(r=16)),
        "tokax ToMe r=16, tanh gelu": tanh.clone(attention="cudnn", reduction=ToMe(r=16)),
        "tokax ToMe r=16, tanh, scatter merge": tanh.clone(attention="cudnn", reduction=ToMe(r=16, merge="scatter")),
        "tokax ToMe r=16 no prop-attn, tanh": tanh.clone(attention="cudnn", reduction=ToMe(r=16, prop_attn=False)),
        "tokax ToMe r=(16,-1), tanh": tanh.clone(attention="cudnn", reduction=ToMe(r=(16, -1))),
        "tokax ToMe r=16, xla attention, tanh": tanh.clone(attention="xla", reduction=ToMe(r=16)),
    }
  if args.set == "final":
    tanh = base.clone(gelu_approximate=True)
    variants = {
        "tokax dense, exact GELU (timm-equal)": base.clone(attention="cudnn"),
        "tokax dense, tanh GELU": tanh.clone(attention="cudnn"),
        "tokax ToMe r=16, exact GELU": base.clone(attention="cudnn", reduction=ToMe(r=16)),
        "tokax ToMe r=16, tanh GELU": tanh.clone(attention="cudnn", reduction=ToMe(r=16)),
        "tokax ToMe r=(16,-1), tanh GELU": tanh.clone(attention="cudnn", reduction=ToMe(r=(16, -1))),
        "tokax ToMe r=16 no prop-attn, tanh GELU": tanh.clone(attention="cudnn", reduction=ToMe(r=16, prop_attn=False)),
        "bound: r=16 schedule, no plan, tanh GELU": tome_bound(tanh.clone(attention="cudnn"), params, 16),
        "tokax dense, xla attention, exact GELU": base.clone(attention="xla"),
    }
  if args.set == "issue5":  # issue 5's end-to-end rows: dense vs timm compiled, ToMe with the fused matching kernel
    tanh = base.clone(gelu_approximate=True)
    variants = {
        "tokax dense, exact GELU (timm-equal)": base.clone(attention="cudnn"),
        "tokax dense, tanh GELU": tanh.clone(attention="cudnn"),
        "tokax ToMe r=16, exact GELU, xla matching": base.clone(attention="cudnn", reduction=ToMe(r=16)),
        "tokax ToMe r=16, exact GELU, fused matching": base.clone(
            attention="cudnn", reduction=ToMe(r=16, matching="pallas")),
        "tokax ToMe r=16, tanh GELU, xla matching": tanh.clone(attention="cudnn", reduction=ToMe(r=16)),
        "tokax ToMe r=16, tanh GELU, fused matching": tanh.clone(
            attention="cudnn", reduction=ToMe(r=16, matching="pallas")),
    }
  if args.set == "small":
    variants = {k: v for k, v in variants.items() if k in (
        "tokax dense, cudnn attention", "tokax dense, cudnn, tanh gelu", "tokax ToMe r=16, cudnn, matmul merge")}
  logits_ref = {}
  for name, model in variants.items():
    try:
      fn = jax.jit(model.apply)
      compiled = fn.lower(params, inputs[0]).compile()
      flops = compiled.cost_analysis()["flops"] / b
      t = time_jax(lambda x: fn(params, x), inputs)
      out = np.asarray(fn(params, inputs[0]).astype(jnp.float32))
      logits_ref[name] = out
      rows.append(dict(impl=name, images_per_s=b / t, ms=t * 1e3, gflops=flops / 1e9))
      print(f"{name:45s} {b / t:9.0f} img/s  {t * 1e3:7.2f} ms  {flops / 1e9:6.2f} GFLOP/img", flush=True)
    except Exception as e:  # report and go on: one failing variant must not hide the others
      print(f"{name:45s} FAILED: {type(e).__name__}: {str(e)[:300]}", flush=True)
      rows.append(dict(impl=name, error=f"{type(e).__name__}: {str(e)[:300]}"))
  a, c = logits_ref.get("tokax dense, xla attention"), logits_ref.get("tokax dense, cudnn attention")
  if a is not None and c is not None:
    print("dense cudnn vs xla logits rel diff:", float(np.linalg.norm(a - c) / np.linalg.norm(a)))
  a, c = logits_ref.get("tokax ToMe r=16, xla attention, tanh"), logits_ref.get("tokax ToMe r=16, tanh gelu")
  if a is not None and c is not None:
    print("ToMe cudnn+matmul vs xla+scatter? logits rel diff:", float(np.linalg.norm(a - c) / np.linalg.norm(a)))

  if args.jax_only:
    return
  import torch
  import timm
  torch.backends.cuda.matmul.allow_tf32 = True
  torch_inputs = [torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).cuda().to(torch.bfloat16) for x in host_inputs]
  def timm_model():
    return timm.create_model("vit_base_patch16_224", pretrained=False).cuda().eval().to(torch.bfloat16)
  with torch.inference_mode():
    m = timm_model()
    t = time_torch(m, torch_inputs)
    rows.append(dict(impl="timm eager (SDPA)", images_per_s=b / t, ms=t * 1e3))
    print(f"{'timm eager (SDPA)':45s} {b / t:9.0f} img/s  {t * 1e3:7.2f} ms", flush=True)
    if not args.skip_compile:
      t0 = time.time()
      mc = torch.compile(m)
      t = time_torch(mc, torch_inputs)
      rows.append(dict(impl="timm torch.compile (default mode)", images_per_s=b / t, ms=t * 1e3,
                       compile_s=time.time() - t0))
      print(f"{'timm torch.compile (default mode)':45s} {b / t:9.0f} img/s  {t * 1e3:7.2f} ms", flush=True)
    if args.tome:
      sys.path.insert(0, args.tome)
      import importlib
      patch = importlib.import_module("tome.patch.timm")
      for r in (16, (16, -1)):
        m = timm_model()
        patch.apply_patch(m)
        m.r = r
        t = time_torch(m, torch_inputs)
        name = f"official ToMe timm patch r={r}"
        rows.append(dict(impl=name, images_per_s=b / t, ms=t * 1e3))
        print(f"{name:45s} {b / t:9.0f} img/s  {t * 1e3:7.2f} ms", flush=True)
  import os
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "issue2_bench.json"), "w") as f:
    json.dump(dict(device=str(jax.devices()[0].device_kind), jax=jax.__version__, torch=torch.__version__,
                   timm=timm.__version__, batch=b, rows=rows), f, indent=1)
  print("\n| implementation | images/s | ms/batch | GFLOP/img |\n|---|---|---|---|")
  for r in rows:
    if "error" in r:
      print(f"| {r['impl']} | failed: {r['error'][:80]} | | |")
    else:
      print(f"| {r['impl']} | {r['images_per_s']:.0f} | {r['ms']:.2f} | {r.get('gflops', float('nan')):.2f} |")


if __name__ == "__main__":
  main()
