r"""Train-step throughput: tokax's sharded jit step vs timm (torch.compile, fused AdamW), and data-parallel scaling.

Both sides run the same recipe in one process on the same inputs: ViT-B/16 at 224 px, 1000 classes,
softmax cross-entropy, AdamW (lr 1e-4, weight decay 0.05 on the matmul kernels only for tokax, on
every parameter for torch.optim.AdamW; no clipping, no augmentation), random images and labels
made on the device. Mixed precision as timm's AMP does it: parameters and optimizer state in
float32, the forward and backward in bfloat16 (tokax: ViT(dtype=bfloat16, param_dtype=float32);
timm: torch.autocast("cuda", torch.bfloat16)). --param-dtype bfloat16 stores tokax's parameters in
bfloat16 too (not what timm's AMP does; reported as its own row). Two timings of each: the median
over --steps steps after --warmup steps, each step synchronised (block_until_ready /
cuda.synchronize: the host's dispatch of the next step does not overlap the device), and
"pipelined": --steps steps back to back, synchronised once at the end, as a training loop runs
(images/s = steps * batch / elapsed).

Modes:
  compare   tokax (exact GELU, timm-equal; and tanh GELU) vs timm eager and timm torch.compile.
  scaling   tokax data-parallel weak scaling: --batch images per GPU on 1, 2, 4, ... visible GPUs
            (a mesh {"data": n}, parameters replicated or --sharding fsdp), efficiency
            = images/s(n) / (n * images/s(1)).

On an H100 (the numbers for BENCHMARKS.md):
  XLA_FLAGS=--xla_gpu_enable_triton_gemm=false PYTHONPATH=. python -m tokax.bench.train_step \
      --mode compare --variant B/16 --batch 128 --out /tmp/train_step_compare.json
  XLA_FLAGS=--xla_gpu_enable_triton_gemm=false PYTHONPATH=. python -m tokax.bench.train_step \
      --mode scaling --variant B/16 --batch 128 --out /tmp/train_step_scaling.json
On a CPU, to check that it runs:
  PYTHONPATH=. python -m tokax.bench.train_step --mode compare --variant Ti/16 --batch 4 --image-size 32 \
      --steps 2 --warmup 1 --timm eager
"""
from __future__ import annotations

import argparse
import functools
import json
import statistics
import time

import jax
import jax.numpy as jnp
import optax

from tokax.bench import profile
from tokax.models import ViT
from tokax.train import run as training
from tokax.train import sharding
from tokax.train.step import init_state, make_train_step

_TIMM_NAMES = {"Ti": "tiny", "S": "small", "B": "base", "L": "large", "H": "huge"}


def tokax_step_images_per_s(*, variant: str, batch: int, image_size: int, devices: list, steps: int, warmup: int,
                            gelu_approximate: bool = False, param_dtype: str = "float32", preset: str = "replicated",
                            attention: str | None = None, lr: float = 1e-4, profile_steps: int = 0) -> dict:
  """Median images/s of the trainer's jitted, donated step of `variant` over a {"data": len(devices)} mesh.

  `batch` is the global batch. Returns {"images_per_s", "step_ms", "images_per_s_pipelined",
  "compile_s", "loss"}, and with
  profile_steps > 0 also "kernels": the step's top device kernels (tokax.bench.profile.kernel_table).
  """
  model = ViT(variant=variant, image_size=image_size, num_classes=1000, dtype=jnp.bfloat16,
              param_dtype=jnp.dtype(param_dtype), gelu_approximate=gelu_approximate, attention=attention)
  schedule = optax.constant_schedule(lr)
  tx = optax.adamw(schedule, weight_decay=0.05, mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p))
  mesh = sharding.make_mesh({"data": len(devices)}, devices=devices)
  init_fn = functools.partial(init_state, model, tx, image_shape=(image_size, image_size, 3))
  shapes = jax.eval_shape(init_fn, jax.random.key(0))
  shardings = sharding.tree_shardings(shapes, sharding.resolve_rules(preset), mesh)
  with jax.set_mesh(mesh):
    state = jax.jit(init_fn, out_shardings=shardings)(jax.random.key(0))
    make_batch = jax.jit(lambda key: {
        "image": jax.random.uniform(key, (batch, image_size, image_size, 3), jnp.float32),
        "label": jax.random.randint(jax.random.fold_in(key, 1), (batch,), 0, 1000)},
        out_shardings=sharding.batch_sharding(mesh))
    batches = [make_batch(jax.random.key(i)) for i in range(3)]
    step = training.jit_train_step(make_train_step(model=model, tx=tx, schedule=schedule), mesh, shardings)
    start = time.perf_counter()
    state, metrics = step(state, batches[0])
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    times = []
    for i in range(warmup + steps):
      start = time.perf_counter()
      state, metrics = step(state, batches[i % len(batches)])
      jax.block_until_ready(metrics["loss"])
      if i >= warmup:
        times.append(time.perf_counter() - start)
    start = time.perf_counter()
    for i in range(steps):
      state, metrics = step(state, batches[i % len(batches)])
    jax.block_until_ready(metrics["loss"])
    pipelined = steps * batch / (time.perf_counter() - start)
    loss = float(metrics["loss"])
    kernels = None
    if profile_steps:
      def advance():
        nonlocal state
        state, step_metrics = step(state, batches[0])
        return step_metrics["loss"]
      kernels = profile.kernel_table(advance, (), steps=profile_steps)
      print(profile.markdown(kernels), flush=True)
  median = statistics.median(times)
  result = {"images_per_s": batch / median, "step_ms": median * 1e3, "images_per_s_pipelined": pipelined,
            "compile_s": compile_s, "loss": loss}
  if kernels is not None:
    result["kernels"] = kernels
  return result


def timm_step_images_per_s(*, variant: str, batch: int, image_size: int, steps: int, warmup: int, compile: bool,
                           lr: float = 1e-4) -> dict:
  """Median images/s of a timm ViT train step: AMP bf16 autocast, fused AdamW, optionally torch.compile'd."""
  import timm
  import torch

  size, patch = variant.split("/")
  cuda = torch.cuda.is_available()
  device = "cuda" if cuda else "cpu"
  if cuda:
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
  model = timm.create_model(f"vit_{_TIMM_NAMES[size]}_patch{patch}_224", pretrained=False, num_classes=1000,
                            img_size=image_size).to(device).train()
  opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05, fused=True)
  forward = torch.compile(model) if compile else model
  loss_fn = torch.nn.CrossEntropyLoss()
  gen = torch.Generator(device=device).manual_seed(0)
  batches = [(torch.rand(batch, 3, image_size, image_size, device=device, generator=gen),
              torch.randint(0, 1000, (batch,), device=device, generator=gen)) for _ in range(3)]
  sync = torch.cuda.synchronize if cuda else (lambda: None)

  def step(images, labels):
    opt.zero_grad(set_to_none=True)
    with torch.autocast(device, dtype=torch.bfloat16):
      loss = loss_fn(forward(images), labels)
    loss.backward()
    opt.step()
    return loss

  start = time.perf_counter()
  step(*batches[0])
  sync()
  compile_s = time.perf_counter() - start
  times = []
  for i in range(warmup + steps):
    start = time.perf_counter()
    loss = step(*batches[i % len(batches)])
    sync()
    if i >= warmup:
      times.append(time.perf_counter() - start)
  start = time.perf_counter()
  for i in range(steps):
    loss = step(*batches[i % len(batches)])
  sync()
  pipelined = steps * batch / (time.perf_counter() - start)
  median = statistics.median(times)
  return {"images_per_s": batch / median, "step_ms": median * 1e3, "images_per_s_pipelined": pipelined,
          "compile_s": compile_s, "loss": loss.item()}


def _row(name: str, result: dict) -> dict:
  print(f"{name:48s} {result['images_per_s']:9.1f} img/s {result['step_ms']:9.2f} ms/step, pipelined "
        f"{result['images_per_s_pipelined']:9.1f} img/s (first step {result['compile_s']:.1f} s)", flush=True)
  return {"impl": name, **result}


def compare(args: argparse.Namespace) -> list[dict]:
  devices = jax.devices()[:1]
  common = dict(variant=args.variant, batch=args.batch, image_size=args.image_size, steps=args.steps,
                warmup=args.warmup)
  rows = [_row("tokax jit step, exact GELU (timm-equal)",
               tokax_step_images_per_s(devices=devices, attention=args.attention, profile_steps=args.profile,
                                       **common)),
          _row("tokax jit step, tanh GELU",
               tokax_step_images_per_s(devices=devices, attention=args.attention, gelu_approximate=True, **common))]
  if args.param_dtype != "float32":
    rows.append(_row(f"tokax jit step, {args.param_dtype} params", tokax_step_images_per_s(
        devices=devices, attention=args.attention, param_dtype=args.param_dtype, **common)))
  if args.timm in ("eager", "both"):
    rows.append(_row("timm eager, AMP bf16, fused AdamW", timm_step_images_per_s(compile=False, **common)))
  if args.timm in ("compile", "both"):
    rows.append(_row("timm torch.compile, AMP bf16, fused AdamW", timm_step_images_per_s(compile=True, **common)))
  timm_rows = [r for r in rows if r["impl"].startswith("timm torch.compile")]
  if timm_rows:
    timm = timm_rows[0]
    for r in rows:
      if r["impl"].startswith("tokax"):
        r["vs_timm_compiled"] = r["images_per_s"] / timm["images_per_s"]
        r["vs_timm_compiled_pipelined"] = r["images_per_s_pipelined"] / timm["images_per_s_pipelined"]
        print(f"{r['impl']}: {r['vs_timm_compiled']:.3f}x timm compiled (per-step sync), "
              f"{r['vs_timm_compiled_pipelined']:.3f}x pipelined", flush=True)
  return rows


def scaling(args: argparse.Namespace) -> list[dict]:
  devices = jax.devices()
  counts = [n for n in (1, 2, 4, 8, 16) if n <= len(devices)]
  rows = []
  for n in counts:
    result = tokax_step_images_per_s(
        variant=args.variant, batch=args.batch * n, image_size=args.image_size, devices=devices[:n], steps=args.steps,
        warmup=args.warmup, preset=args.sharding, attention=args.attention)
    row = _row(f"tokax data-parallel, {n} device(s), batch {args.batch}/device", result)
    row["devices"] = n
    row["efficiency"] = result["images_per_s"] / (n * rows[0]["images_per_s"]) if rows else 1.0
    row["efficiency_pipelined"] = (result["images_per_s_pipelined"] / (n * rows[0]["images_per_s_pipelined"])
                                   if rows else 1.0)
    print(f"  weak-scaling efficiency {row['efficiency']:.3f} (pipelined {row['efficiency_pipelined']:.3f})",
          flush=True)
    rows.append(row)
  return rows


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--mode", choices=("compare", "scaling"), default="compare")
  parser.add_argument("--variant", default="B/16")
  parser.add_argument("--batch", type=int, default=128, help="per device (scaling) / in all (compare)")
  parser.add_argument("--image-size", type=int, default=224)
  parser.add_argument("--steps", type=int, default=30, help="timed steps (the median is reported)")
  parser.add_argument("--warmup", type=int, default=5)
  parser.add_argument("--timm", choices=("none", "eager", "compile", "both"), default="both")
  parser.add_argument("--param-dtype", default="float32", help="also time tokax with params in this dtype")
  parser.add_argument("--attention", default=None, help="tokax kernels.attention implementation (None: auto)")
  parser.add_argument("--sharding", default="replicated", help="parameter preset for --mode scaling")
  parser.add_argument("--profile", type=int, default=0,
                      help="compare: also print the top device kernels of the first tokax step over this many steps")
  parser.add_argument("--out", default=None, help="write the rows as JSON here")
  args = parser.parse_args(argv)
  print(f"devices: {jax.devices()} (jax {jax.__version__})", flush=True)
  rows = compare(args) if args.mode == "compare" else scaling(args)
  report = {"mode": args.mode, "device": jax.devices()[0].device_kind, "num_devices": jax.device_count(),
            "jax": jax.__version__, "args": vars(args), "rows": rows}
  if args.mode == "compare" and args.timm != "none":
    import timm
    import torch
    report.update(torch=torch.__version__, timm=timm.__version__)
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      json.dump(report, f, indent=1)
  return report


if __name__ == "__main__":
  main()
