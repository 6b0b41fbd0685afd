r"""Fused attention-and-select kernels: correctness against the reference, and time against cuDNN and XLA.

On an H100 (full size, bf16):

  python -m tokax.bench.attention_kernels --check --out /tmp/attention_kernels.json

On CPU (tiny shapes; the TPU kernel in interpret mode, no cuDNN):

  JAX_PLATFORMS=cpu python -m tokax.bench.attention_kernels --shapes 2,37,2,64 --dtype float32 --repeats 2

Rows, per shape (B, N, H, D) and pass (fwd, fwd+bwd), each timed in the same process:
- xla+cls:       the reference, materialising the probabilities, with the "cls" score;
- cudnn:         tokax's "cudnn" path (kernels.attention.cudnn_attention): cuDNN flash attention,
                 unpadded when only evaluated, padded to a multiple of 64 under differentiation so
                 that cuDNN's own backward runs (GPU only), no scores;
- cudnn-native:  jax.nn.dot_product_attention(implementation="cudnn") as it is (GPU only; cuDNN
                 refuses N = 197 and 577 in the backward: the row then fails);
- pallas:        tokax's kernel through kernels.attention (on a GPU: its own backward kernels), no scores;
- pallas+cls, pallas+received: the same with one score;
- pallas-refbwd: the Mosaic GPU kernel with backward="reference" (the reference's vjp in XLA), GPU only;
- pallas-bwd[QxKV]: the Mosaic GPU kernel at other backward tiles (--bwd-blocks; GPU only).
Each time is the median of --repeats calls after warm-up; the ratio columns divide by cudnn (or,
without a GPU, by xla+cls). --check first compares the pallas outputs and scores against the float32
reference (with key_bias and key_mask) and prints the max errors; on a GPU it also compares
backward="pallas"'s dq, dk, dv, d(key_bias) against the float32 reference's gradients (max abs
error, error relative to the largest reference entry, and the largest gradient on masked keys,
which must be 0; bf16 operands and outputs put the relative errors near 1e-2, a wrong kernel near
1). A failing row prints its error and the table goes on.
"""
from __future__ import annotations

import argparse
import json
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from tokax.kernels import attention as fused_attention  # the entry-point function
from tokax.bench import throughput
from tokax.kernels import reference

DEFAULT_SHAPES = ("256,197,12,64", "64,577,16,64", "16,1024,12,64", "8,4096,12,64")


def _inputs(shape, dtype, seed=0):
  b, n, h, d = shape
  keys = jax.random.split(jax.random.key(seed), 5)
  q, k, v = (jax.random.normal(key, (b, n, h, d), jnp.float32).astype(dtype) for key in keys[:3])
  bias = jnp.log(jax.random.randint(keys[3], (b, n), 1, 9).astype(jnp.float32))
  mask = (jax.random.uniform(keys[4], (b, n)) > 0.2).at[:, 0].set(True)
  return q, k, v, bias, mask


def _time(fn: Callable, args, repeats: int) -> float:
  """Median seconds of one call of jit(fn)(*args), after compile and two warm-up calls."""
  return throughput.median_seconds(jax.jit(fn), *args, warmup=2, repeats=repeats)


def _variants(backend: str, interpret, bwd_blocks=((64, 64),)):
  def attend(impl, scores):
    def fwd(q, k, v):
      out, s = fused_attention(q, k, v, scores=scores, implementation=impl, interpret=interpret)
      return out, s
    return fwd

  def cudnn_native(q, k, v):  # jax's own cuDNN call: cuDNN's flash backward too, where it takes the shape
    return jax.nn.dot_product_attention(q, k, v, implementation="cudnn"), {}

  rows = {"xla+cls": attend("xla", ("cls",))}
  if backend == "gpu":
    rows["cudnn"] = attend("cudnn", ())
    rows["cudnn-native"] = cudnn_native
  rows["pallas"] = attend("pallas", ())
  rows["pallas+cls"] = attend("pallas", ("cls",))
  rows["pallas+received"] = attend("pallas", ("received",))
  if backend == "gpu":
    from tokax.kernels.mosaic_gpu import flash_attention as gpu_flash
    rows["pallas-refbwd"] = lambda q, k, v: gpu_flash.flash_attention(q, k, v, backward="reference")
    default = gpu_flash.BlockSizes()
    for block_q, block_kv in bwd_blocks:
      if (block_q, block_kv) == (default.block_q_bwd, default.block_kv_bwd):
        continue  # the "pallas" row
      blocks = gpu_flash.BlockSizes(block_q_bwd=block_q, block_kv_bwd=block_kv)
      rows[f"pallas-bwd[{block_q}x{block_kv}]"] = (lambda blocks: lambda q, k, v: gpu_flash.flash_attention(
          q, k, v, block_sizes=blocks))(blocks)
  return rows


def _with_backward(fwd):
  def loss(q, k, v):
    out, s = fwd(q, k, v)
    total = jnp.sum(out.astype(jnp.float32) ** 2)
    return total + sum(jnp.sum(x) for x in s.values())
  return jax.grad(loss, argnums=(0, 1, 2))


def check(shape, dtype, interpret) -> dict[str, float]:
  """Max abs errors of the pallas kernel (key_bias, key_mask, both scores) against the reference."""
  q, k, v, bias, mask = _inputs(shape, dtype, seed=1)
  names = ("cls", "received")
  out, s = jax.jit(lambda q, k, v, b, m: fused_attention(
      q, k, v, key_bias=b, key_mask=m, scores=names, implementation="pallas", interpret=interpret))(q, k, v, bias, mask)
  ref_out, ref_s = jax.jit(lambda q, k, v, b, m: reference.attention_reference(
      q, k, v, key_bias=b, key_mask=m, scores=names))(q, k, v, bias, mask)
  errors = {"out": float(jnp.max(jnp.abs(out.astype(jnp.float32) - ref_out.astype(jnp.float32))))}
  for name in names:
    errors[name] = float(jnp.max(jnp.abs(s[name] - ref_s[name])))
    errors[name + "_rel"] = errors[name] / float(jnp.max(jnp.abs(ref_s[name])))
  return errors


def check_backward(shape, dtype) -> dict[str, float]:
  """backward="pallas" gradients (q, k, v, key_bias; key_mask set) against the float32 reference's."""
  from tokax.kernels.mosaic_gpu import flash_attention as gpu_flash

  q, k, v, bias, mask = _inputs(shape, dtype, seed=2)
  d_out = jax.random.normal(jax.random.key(3), q.shape, jnp.float32)
  f32 = lambda x: x.astype(jnp.float32)

  def pallas(q, k, v, b):
    return gpu_flash.flash_attention(q, k, v, key_bias=b, key_mask=mask, backward="pallas")[0]

  def ref(q, k, v, b):
    return reference.attention_reference(f32(q), f32(k), f32(v), key_bias=b, key_mask=mask)[0]

  def grads(fn):
    return jax.jit(jax.grad(lambda *a: jnp.sum(f32(fn(*a)) * d_out), argnums=(0, 1, 2, 3)))(q, k, v, bias)

  errors = {}
  masked = ~mask[:, :, None, None]
  for name, g, w in zip(("dq", "dk", "dv", "dbias"), grads(pallas), grads(ref)):
    err = float(jnp.max(jnp.abs(f32(g) - f32(w))))
    errors[name] = err
    errors[name + "_rel"] = err / float(jnp.max(jnp.abs(f32(w))))
    if name in ("dk", "dv"):
      errors[name + "_masked"] = float(jnp.max(jnp.abs(jnp.where(masked, f32(g), 0))))
  return errors


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--shapes", nargs="+", default=list(DEFAULT_SHAPES), help="B,N,H,D")
  parser.add_argument("--dtype", default="bfloat16")
  parser.add_argument("--repeats", type=int, default=20)
  parser.add_argument("--check", action="store_true", help="compare against the reference first")
  parser.add_argument("--no-backward", action="store_true")
  parser.add_argument("--out", default=None, help="write the rows as JSON here")
  parser.add_argument("--bwd-blocks", nargs="+", default=[],
                      help="block_q_bwd,block_kv_bwd of extra pallas-bwd rows (GPU only), e.g. 128,64 64,128")
  args = parser.parse_args(argv)

  backend = jax.default_backend()
  interpret = None
  if backend not in ("gpu", "tpu"):
    from jax.experimental.pallas import tpu as pltpu
    interpret = pltpu.InterpretParams()
  dtype = jnp.dtype(args.dtype)
  print(f"device: {jax.devices()[0].device_kind} ({backend}), jax {jax.__version__}, {dtype.name}", flush=True)
  results = []
  for text in args.shapes:
    shape = tuple(int(x) for x in text.split(","))
    if args.check:
      try:
        print(f"check {shape}: {check(shape, dtype, interpret)}", flush=True)
      except Exception as e:  # keep benchmarking the other rows
        print(f"check {shape}: FAILED {type(e).__name__}: {str(e)[:2000]}", flush=True)
      if backend == "gpu":
        try:
          print(f"check backward {shape}: {check_backward(shape, dtype)}", flush=True)
        except Exception as e:
          print(f"check backward {shape}: FAILED {type(e).__name__}: {str(e)[:2000]}", flush=True)
    q, k, v, _, _ = _inputs(shape, dtype)
    passes = ["fwd"] if args.no_backward else ["fwd", "fwd+bwd"]
    for pass_name in passes:
      times = {}
      bwd_blocks = [tuple(int(x) for x in text.split(",")) for text in args.bwd_blocks]
      for name, fwd in _variants(backend, interpret, bwd_blocks).items():
        if pass_name == "fwd" and (name.startswith("pallas-bwd") or name == "pallas-refbwd"):
          continue  # the same forward as "pallas"
        fn = fwd if pass_name == "fwd" else _with_backward(fwd)
        try:
          times[name] = _time(fn, (q, k, v), args.repeats)
        except Exception as e:
          print(f"  {shape} {pass_name} {name}: FAILED {type(e).__name__}: {str(e)[:1000]}", flush=True)
      base_name = "cudnn" if "cudnn" in times else "xla+cls"
      base = times.get(base_name)
      for name, t in times.items():
        row = dict(shape=list(shape), dtype=dtype.name, pass_=pass_name, impl=name, ms=t * 1e3,
                   vs=base_name, ratio=(t / base) if base else float("nan"),
                   xla_over_this=(times["xla+cls"] / t) if "xla+cls" in times else float("nan"))
        results.append(row)
        print(f"| {shape} | {pass_name} | {name} | {row['ms']:.3f} ms | {row['ratio']:.2f}x {base_name} | "
              f"xla+cls / this {row['xla_over_this']:.2f}x |", flush=True)
  if args.out:
    with open(args.out, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  main()
