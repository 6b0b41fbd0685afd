"""Device check: to which multiple must the "cudnn" path pad N so that cuDNN runs its own backward?

kernels.attention.cudnn_padded pads queries and keys to CUDNN_LENGTH_MULTIPLE (64) because cuDNN's
backward refused N = 197; at N = 197 that is 256 (1.69x the attention FLOPs). For each multiple this
script (1) checks the gradients against the float32 reference at N = 197 (plain; key_bias and
key_mask), (2) times forward + backward at (128, 197, 12, 64), (256, 197, 12, 64) and (64, 577, 16,
64), then (3) times the ViT-B/16 train step (batch 128, exact GELU) with the fastest multiple that
passed, with 64, and timm torch.compile in the same process, and prints the step's kernel profile.

  XLA_FLAGS=--xla_gpu_enable_triton_gemm=false python scripts/device/cudnn_padding.py --out OUT/cudnn_padding.json
"""
import argparse
import importlib
import json

import jax
import jax.numpy as jnp

from tokax.bench import throughput, train_step
from tokax.kernels import reference

# the module (tokax.kernels.attention the name is the function, re-exported by tokax.kernels)
attention_module = importlib.import_module("tokax.kernels.attention")

MULTIPLES = (1, 2, 8, 16, 32, 64)
SHAPES = ((128, 197, 12, 64), (256, 197, 12, 64), (64, 577, 16, 64))


def _inputs(shape, seed):
  b, n, h, d = shape
  keys = jax.random.split(jax.random.key(seed), 5)
  q, k, v = (jax.random.normal(key, (b, n, h, d), jnp.float32).astype(jnp.bfloat16) for key in keys[:3])
  bias = jnp.log(jax.random.randint(keys[3], (b, n), 1, 9).astype(jnp.float32))
  mask = (jax.random.uniform(keys[4], (b, n)) > 0.2).at[:, 0].set(True)
  return q, k, v, bias, mask


def grad_errors(with_bias_mask: bool) -> float:
  """Largest gradient error of the cudnn path relative to the largest float32-reference gradient."""
  q, k, v, bias, mask = _inputs((4, 197, 12, 64), seed=1)
  kwargs = dict(key_bias=bias, key_mask=mask) if with_bias_mask else {}
  d_out = jax.random.normal(jax.random.key(2), q.shape, jnp.float32)
  f32 = lambda x: x.astype(jnp.float32)

  def grads(fn):
    return jax.jit(jax.grad(lambda *a: jnp.sum(f32(fn(*a)) * d_out), argnums=(0, 1, 2)))(q, k, v)

  got = grads(lambda q, k, v: attention_module.attention(q, k, v, implementation="cudnn", **kwargs)[0])
  want = grads(lambda q, k, v: reference.attention_reference(f32(q), f32(k), f32(v), **kwargs)[0])
  return max(float(jnp.max(jnp.abs(f32(g) - w)) / jnp.max(jnp.abs(w))) for g, w in zip(got, want))


def fwd_bwd_ms(shape) -> float:
  q, k, v, _, _ = _inputs(shape, seed=0)
  loss = lambda q, k, v: jnp.sum(attention_module.attention(q, k, v, implementation="cudnn")[0].astype(jnp.float32) ** 2)
  return throughput.median_seconds(jax.jit(jax.grad(loss, argnums=(0, 1, 2))), q, k, v, warmup=2, repeats=20) * 1e3


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--out", default=None)
  parser.add_argument("--train-steps", type=int, default=30)
  args = parser.parse_args()
  print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}", flush=True)
  rows = []
  for multiple in MULTIPLES:
    attention_module.CUDNN_LENGTH_MULTIPLE = multiple
    row = {"multiple": multiple}
    try:
      row["grad_rel_err"] = grad_errors(False)
      row["grad_rel_err_bias_mask"] = grad_errors(True)
      for shape in SHAPES:
        row[f"fwd_bwd_ms_{'x'.join(map(str, shape))}"] = fwd_bwd_ms(shape)
    except Exception as e:  # cuDNN refuses some lengths: record and go on
      row["error"] = f"{type(e).__name__}: {str(e)[:400]}"
    print(row, flush=True)
    rows.append(row)
  passed = [r for r in rows if "error" not in r and max(r["grad_rel_err"], r["grad_rel_err_bias_mask"]) < 3e-2]
  key = "fwd_bwd_ms_128x197x12x64"
  best = min(passed, key=lambda r: r[key])["multiple"] if passed else None
  print(f"fastest correct multiple at (128, 197, 12, 64): {best}", flush=True)
  steps = []
  common = dict(variant="B/16", batch=128, image_size=224, steps=args.train_steps, warmup=5)
  for multiple in sorted({m for m in (best, 64) if m is not None}):
    attention_module.CUDNN_LENGTH_MULTIPLE = multiple
    result = train_step.tokax_step_images_per_s(devices=jax.devices()[:1], profile_steps=5 if multiple == best else 0,
                                                **common)
    steps.append(train_step._row(f"tokax step, cudnn padded to {multiple}, exact GELU", result))
  steps.append(train_step._row("timm torch.compile, AMP bf16, fused AdamW",
                               train_step.timm_step_images_per_s(compile=True, **common)))
  for r in steps[:-1]:
    print(f"{r['impl']}: {r['images_per_s'] / steps[-1]['images_per_s']:.3f}x timm compiled", flush=True)
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"device": jax.devices()[0].device_kind, "multiples": rows, "train_step": steps}, f, indent=1)


if __name__ == "__main__":
  main()
