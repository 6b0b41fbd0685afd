"""Device check: the "cudnn" attention path with cuDNN's own (padded) backward vs the XLA reference backward.

Checks gradients against the float32 reference at N = 197 (plain, key_bias, key_mask, block-causal),
times forward+backward at ViT-B/16 shapes, and the ViT-B/16 train step (batch 128) with each backward
beside timm torch.compile, all in one process.

  python scripts/device/cudnn_backward_check.py [--timm]
"""
import sys
import time

import jax
import jax.numpy as jnp

import tokax.kernels
from tokax.bench import throughput, train_step
from tokax.kernels import reference

A = sys.modules["tokax.kernels.attention"]


def grads(fn, q, k, v, w):
  return jax.jit(jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v).astype(jnp.float32) * w), argnums=(0, 1, 2)))(q, k, v)


def check():
  keys = jax.random.split(jax.random.key(0), 6)
  b, n, h, d = 4, 197, 4, 64
  q, k, v = (jax.random.normal(x, (b, n, h, d), jnp.float32).astype(jnp.bfloat16) for x in keys[:3])
  w = jax.random.normal(keys[5], (b, n, h, d), jnp.float32)
  bias = jnp.log(jax.random.randint(keys[3], (b, n), 1, 9).astype(jnp.float32))
  km = (jax.random.uniform(keys[4], (b, n)) > 0.2).at[:, 0].set(True)
  causal = jnp.tril(jnp.ones((n, n), bool))[None, None]
  for name, kb, kmask, mask in (("plain", None, None, None), ("key_bias", bias, None, None),
                                ("key_mask", None, km, None), ("bias+mask+causal", bias, km, causal)):
    try:
      got = grads(lambda q, k, v: A.cudnn_padded(q, k, v, kb, kmask, mask), q, k, v, w)
      ref = grads(lambda q, k, v: reference.attention_reference(
          q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32), key_bias=kb, key_mask=kmask,
          mask=mask)[0], q, k, v, w)
      errs = [float(jnp.max(jnp.abs(g.astype(jnp.float32) - r)) / jnp.max(jnp.abs(r))) for g, r in zip(got, ref)]
      print(f"grad check {name:18s} rel max err dq {errs[0]:.2e} dk {errs[1]:.2e} dv {errs[2]:.2e}", flush=True)
    except Exception as e:
      print(f"grad check {name}: FAILED {type(e).__name__}: {str(e)[:1500]}", flush=True)


def time_attention():
  for shape in ((256, 197, 12, 64), (128, 197, 12, 64), (64, 577, 16, 64)):
    keys = jax.random.split(jax.random.key(1), 3)
    q, k, v = (jax.random.normal(x, shape, jnp.float32).astype(jnp.bfloat16) for x in keys)
    row = []
    for backward in ("reference", "cudnn"):
      A.CUDNN_BACKWARD = backward
      fn = jax.jit(jax.grad(lambda q, k, v: jnp.sum(tokax.kernels.attention(
          q, k, v, implementation="cudnn")[0].astype(jnp.float32) ** 2), argnums=(0, 1, 2)))
      try:
        row.append(f"{backward} bwd {throughput.median_seconds(fn, q, k, v, warmup=2, repeats=20) * 1e3:.3f} ms")
      except Exception as e:
        row.append(f"{backward} FAILED {type(e).__name__}: {str(e)[:800]}")
    print(f"fwd+bwd {shape}: " + " | ".join(row), flush=True)


def time_train_step(with_timm: bool):
  common = dict(variant="B/16", batch=128, image_size=224, steps=30, warmup=5, devices=jax.devices()[:1])
  for backward in ("reference", "cudnn"):
    A.CUDNN_BACKWARD = backward
    for gelu in (False, True):
      start = time.perf_counter()
      r = train_step.tokax_step_images_per_s(attention="cudnn", gelu_approximate=gelu, **common)
      print(f"train step B/16 b128, cudnn {backward} backward, {'tanh' if gelu else 'exact'} GELU: "
            f"{r['images_per_s']:.1f} img/s, {r['step_ms']:.2f} ms, loss {r['loss']:.4f} "
            f"({time.perf_counter() - start:.0f} s)", flush=True)
  if with_timm:
    del common["devices"]
    r = train_step.timm_step_images_per_s(compile=True, **common)
    print(f"timm torch.compile: {r['images_per_s']:.1f} img/s, {r['step_ms']:.2f} ms", flush=True)


if __name__ == "__main__":
  print(jax.devices()[0].device_kind, jax.__version__, flush=True)
  check()
  time_attention()
  time_train_step("--timm" in sys.argv)
