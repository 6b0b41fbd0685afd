"""Device check of the fused kernels inside the model: logits of ViT-B/16 (random weights, bf16) with
attention="pallas" and the fused matching against attention="xla", per reduction method; then the
parameter gradients of a cross-entropy loss (EViT 0.7, which asks for the [CLS] scores in its
pruning blocks, and dense) with attention="pallas" (its Pallas backward) and "auto" against "xla".

  python scripts/device/kernels_check.py [--grads-only]
"""
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from tokax.models import ViT
from tokax.reduction import EViT, MCTF, PiToMe, ToMe


def main():
  images = jax.random.uniform(jax.random.key(0), (16, 224, 224, 3), jnp.float32)
  rows = [("dense", None), ("tome r=16", ToMe(r=16)), ("tome r=16 pallas matching", ToMe(r=16, matching="pallas")),
          ("pitome 0.9 pallas matching", PiToMe(ratio=0.9, matching="pallas")),
          ("evit 0.7", EViT(keep_rate=0.7, layers=(3, 6, 9))), ("mctf r=16", MCTF(r=16))]
  base = ViT(variant="B/16", image_size=224, num_classes=1000, dtype=jnp.bfloat16, gelu_approximate=True)
  params = base.init(jax.random.key(1), images[:1])
  head = params["params"]["head"]  # zero-initialised: give it random weights so logits differ
  head["kernel"] = 0.02 * jax.random.normal(jax.random.key(2), head["kernel"].shape, head["kernel"].dtype)
  for name, reduction in ([] if "--grads-only" in sys.argv else rows):
    for impl in ("pallas", "cudnn"):
      try:
        start = time.perf_counter()
        ref = jax.jit(base.clone(reduction=reduction, attention="xla").apply)(params, images)
        got = jax.jit(base.clone(reduction=reduction, attention=impl).apply)(params, images)
        ref, got = np.asarray(ref, np.float32), np.asarray(got, np.float32)
        err = float(np.abs(ref - got).max() / np.abs(ref).max())
        agree = float((ref.argmax(-1) == got.argmax(-1)).mean())
        print(f"{name:28s} {impl:7s} rel max err {err:.2e} top-1 agree {agree:.2f} ({time.perf_counter() - start:.1f} s)",
              flush=True)
      except Exception as e:  # the next row still runs
        print(f"{name:28s} {impl:7s} FAILED {type(e).__name__}: {str(e)[:1500]}", flush=True)
  labels = jax.random.randint(jax.random.key(3), (images.shape[0],), 0, 1000)
  for name, reduction in (("dense", None), ("evit 0.7", EViT(keep_rate=0.7, layers=(3, 6, 9)))):
    def grads(impl):
      model = base.clone(reduction=reduction, attention=impl)
      def loss(p):
        logits = model.apply(p, images).astype(jnp.float32)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))
      return jax.tree.leaves(jax.jit(jax.grad(loss))(params))
    try:
      ref = grads("xla")
      for impl in ("pallas", "auto"):
        got = grads(impl)
        err = max(float(jnp.max(jnp.abs(g.astype(jnp.float32) - r.astype(jnp.float32)))
                        / (float(jnp.max(jnp.abs(r.astype(jnp.float32)))) + 1e-30)) for g, r in zip(got, ref))
        print(f"grad {name:23s} {impl:7s} max over params of rel max err {err:.2e}", flush=True)
    except Exception as e:
      print(f"grad {name:23s} FAILED {type(e).__name__}: {str(e)[:1500]}", flush=True)


if __name__ == "__main__":
  main()
