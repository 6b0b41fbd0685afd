r"""xAR speed: tokax (jit, KV cache) vs the official PyTorch model at the same size, same card, same run.

  # H100, official xar_base size (768 wide, 8 + 8 blocks) on the official 16 x 16 x 16 latent:
  python -m tokax.bench.xar_speed --xar /path/to/xAR --width 768 --depth 8 --heads 12 --batch 64 \
      --sample_batch 256 --num_steps 40 --cfg 2.7 --dtype bfloat16
  # CPU smoke run:
  python -m tokax.bench.xar_speed --xar /path/to/xAR --width 64 --depth 1 --heads 4 --batch 4 \
      --sample_batch 4 --num_steps 3 --iters 2

The official EM sampler needs --num_steps >= 3: with 2, its final step reuses i == 0 and appends
the previous cell to the KV cache twice (generative.md 2.9, gotcha 6).
Training: one AdamW step (forward, backward, update) per iteration, batch --batch, with torch
autocast(bfloat16) when --dtype bfloat16 (the official AMP) and tokax computing in that dtype.
Sampling: the official sample_tokens (EM, KV cache, CFG doubled batch) vs tokax.models.xar.sample
(EM, jit over all cells and steps). Prints one JSON line with steps/s, samples/s and the ratios.
"""
from __future__ import annotations

import json
import pathlib
import sys
import time
import types

from absl import app, flags

_XAR = flags.DEFINE_string("xar", None, "Checkout of OliverRensu/xAR (the directory holding models/xar.py).")
_WIDTH = flags.DEFINE_integer("width", 768, "Width.")
_DEPTH = flags.DEFINE_integer("depth", 8, "Encoder and decoder depth each.")
_HEADS = flags.DEFINE_integer("heads", 12, "Heads.")
_BATCH = flags.DEFINE_integer("batch", 64, "Training batch.")
_SAMPLE_BATCH = flags.DEFINE_integer("sample_batch", 256, "Sampling batch.")
_NUM_STEPS = flags.DEFINE_integer("num_steps", 40, "Flow steps per cell.")
_CFG = flags.DEFINE_float("cfg", 2.7, "Guidance.")
_ITERS = flags.DEFINE_integer("iters", 20, "Timed iterations (training); sampling runs max(1, iters // 10).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype of both sides.")
flags.mark_flags_as_required(["xar"])


def _official(path: str):
  root = pathlib.Path(__file__).resolve().parents[2]
  sys.path.insert(0, str(root / "tests"))
  import torch_compat  # the torchvision/timm import work-around of the parity tests
  torch_compat.import_timm()
  import torch
  sys.modules.setdefault("flash_attn", types.SimpleNamespace(flash_attn_func=None))
  if not torch.cuda.is_available():
    torch.Tensor.cuda = lambda self, *a, **k: self
  sys.path.insert(0, path)
  import models.xar as official
  return torch, official


def _time(fn, iters: int) -> float:
  fn()
  t0 = time.perf_counter()
  for _ in range(iters):
    fn()
  return (time.perf_counter() - t0) / iters


def main(argv: list[str]) -> None:
  del argv
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax
  from tokax.interop.xar import params_from_official
  from tokax.models.xar import XAR, sample, xar_loss

  torch, official = _official(_XAR.value)
  device = "cuda" if torch.cuda.is_available() else "cpu"
  w, d, h, b, sb = _WIDTH.value, _DEPTH.value, _HEADS.value, _BATCH.value, _SAMPLE_BATCH.value
  tmodel = official.xAR(img_size=256, vae_stride=16, patch_size=1, encoder_embed_dim=w, encoder_depth=d,
                        encoder_num_heads=h, decoder_embed_dim=w, decoder_depth=d, decoder_num_heads=h,
                        mlp_ratio=4, vae_embed_dim=16).to(device)
  topt = torch.optim.AdamW(tmodel.parameters(), lr=1e-4, betas=(0.9, 0.96), weight_decay=0.02)
  x = torch.randn(b, 16, 16, 16, device=device)
  y = torch.randint(0, 1000, (b,), device=device)
  autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=_DTYPE.value == "bfloat16")
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

  def torch_step():
    with autocast:
      loss = tmodel(x, y)
    topt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(tmodel.parameters(), 1.0)
    topt.step()
    sync()

  tmodel.train()
  torch_train = _time(torch_step, _ITERS.value)
  tmodel.eval()
  labels_t = torch.arange(sb, device=device) % 1000
  sample_iters = max(1, _ITERS.value // 10)

  def torch_sample():
    with torch.no_grad(), autocast:
      tmodel.sample_tokens(num_steps=_NUM_STEPS.value, cfg=_CFG.value, label=labels_t)
    sync()
  torch_sample_s = _time(torch_sample, sample_iters)

  dtype = jnp.bfloat16 if _DTYPE.value == "bfloat16" else jnp.float32
  model = XAR(token_dim=16, grid_size=16, entity="cell", entity_size=8, width=w, encoder_depth=d, decoder_depth=d,
              num_heads=h, num_classes=1000, dtype=dtype)
  params = jax.device_put(params_from_official(tmodel.state_dict()))
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-4, b1=0.9, b2=0.96, weight_decay=0.02))
  opt = tx.init(params)
  tokens = jnp.asarray(np.random.default_rng(0).standard_normal((b, 256, 16)), jnp.float32)
  labels = jnp.asarray(np.arange(b) % 1000)

  @jax.jit
  def jax_step(params, opt, rng):
    (loss, _), grads = jax.value_and_grad(
        lambda p: xar_loss(model, p, tokens, labels, rng), has_aux=True)(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt, loss

  state = [params, opt]

  def jax_train():
    state[0], state[1], loss = jax_step(state[0], state[1], jax.random.key(0))
    loss.block_until_ready()
  jax_train_s = _time(jax_train, _ITERS.value)
  run = jax.jit(lambda p, y, k: sample(model, p, y, k, num_steps=_NUM_STEPS.value, cfg=_CFG.value, method="em"))
  slabels = jnp.asarray(np.arange(sb) % 1000)
  jax_sample_s = _time(lambda: run(state[0], slabels, jax.random.key(1)).block_until_ready(), sample_iters)
  print(json.dumps({
      "device": str(jax.devices()[0].device_kind), "torch_device": device, "dtype": _DTYPE.value, "width": w,
      "depth": d, "heads": h, "batch": b, "sample_batch": sb, "num_steps": _NUM_STEPS.value,
      "torch_train_steps_per_s": 1 / torch_train, "tokax_train_steps_per_s": 1 / jax_train_s,
      "train_speedup": torch_train / jax_train_s,
      "torch_samples_per_s": sb / torch_sample_s, "tokax_samples_per_s": sb / jax_sample_s,
      "sample_speedup": torch_sample_s / jax_sample_s}))


if __name__ == "__main__":
  app.run(main)
