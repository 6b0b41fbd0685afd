r"""Trains the OFFICIAL PyTorch T2T_ViT (yitu-opensource/T2T-ViT) on tokax's cluttered digits.

Question: is tokax's T2T-ViT staying at chance on cluttered digits a tokax bug, or T2T's own
behaviour on this data and recipe? This runs the official model (imported from a local checkout
of the official repository, models/t2t_vit.py; nothing of it is copied here) on the same images
and the same small recipe as tokax's CPU reproduction:

  python -m tokax.train --config configs/cluttered_digits_t2t.py:image_size=112 --workdir W \
      --config.model.width=64 --config.model.depth=4 --config.model.num_heads=2 --config.model.mlp_ratio=4.0 \
      --config.model.drop_path=0.0 --config.data.num_train=12800 --config.total_steps=400 \
      --config.warmup_steps=40 --config.batch_size=32 --config.augment.max_shift=4 [--config.label_smoothing=0.1]

Recipe here: T2T_ViT(img_size=112, tokens_type=performer|transformer, embed_dim=64, depth=4,
num_heads=2, mlp_ratio=4, num_classes=10, drop rates 0), official _init_weights; 12,800 training
images (tokax.data.offline.load("cluttered_digits", ..., seed=0), NHWC [0,1] -> NCHW), random
edge-padded translation by up to 4 px (tokax.train.augment.random_translate), inputs scaled to
[-1, 1] as tokax's trainer does (--norm imagenet for the official ImageNet mean/std instead);
AdamW lr 5e-4, wd 0.05 on weight matrices only (tokax's mask), linear warm-up over 10% then cosine
to 0, global-norm clip 1.0, label smoothing 0.1, batch 32, 400 steps, float32; test on 1,000 images.

  git clone /work/.mirror/yitu-opensource+T2T-ViT/repo /tmp/t2t_official
  JAX_PLATFORMS=cpu python scripts/t2t_official_cluttered.py /tmp/t2t_official [--tokens_type transformer]

timm is only stubbed (register_model, load_pretrained, trunc_normal_, DropPath): the venv's timm
does not import against its torchvision, and the model needs nothing else from it.

Results (2-core CPU, torch 2.13, seed 0; train loss = mean over the last 50 steps, ln 10 = 2.3026):

  run                                         step 50  100    200    300    400    test acc
  official, performer stem, [-1,1] inputs     2.3071  2.3100 2.3099 2.3046 2.3036  8.4%
  official, transformer stem, [-1,1] inputs   2.3075  2.3105 2.3103 2.3049 2.3040  9.3%
  official, performer, ImageNet mean/std      2.3074  2.3105 2.3097 2.3042 2.3033  9.0%
  tokax (command above, label smoothing 0.1)  2.3100  2.3120 2.3071 2.3050 2.3028  10.2%
  official, performer, 1,600 steps (4 epochs): 2.3086 at 200, 2.3070 at 800, 2.3023 at 1600;  9.2%
  official, performer, plain digits (1,258)   2.2717  2.1227 1.9345 1.7208 1.6364  47.4% (359 test)

  (the earlier tokax run without label smoothing: 2.30 throughout, 9.6%; ViT-Ti/8 of the same size
  leaves chance by step ~200, 16%.) The official model stays at chance on cluttered digits exactly as
  tokax's does, with either stem and either input scaling, while the same harness trains it on plain
  digits: the behaviour is T2T-ViT's on this data and recipe, not a tokax bug. About 100 s a run
  (performer), 160 s (transformer stem).
"""
from __future__ import annotations

import argparse
import importlib
import math
import sys
import time
import types

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from tokax.data import offline


class _DropPath(nn.Module):
  """timm's DropPath (stochastic depth per sample); identity at drop_prob 0 or in eval."""

  def __init__(self, drop_prob=0.0):
    super().__init__()
    self.drop_prob = drop_prob

  def forward(self, x):
    if self.drop_prob == 0.0 or not self.training:
      return x
    keep = 1 - self.drop_prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


def _stub_timm():
  """Registers the four timm names the official model files import."""
  timm = types.ModuleType("timm")
  models = types.ModuleType("timm.models")
  helpers = types.ModuleType("timm.models.helpers")
  registry = types.ModuleType("timm.models.registry")
  layers = types.ModuleType("timm.models.layers")
  helpers.load_pretrained = lambda *a, **k: None
  registry.register_model = lambda fn: fn
  # timm's trunc_normal_(t, mean=0, std=1, a=-2, b=2): the cut is in absolute units.
  layers.trunc_normal_ = lambda t, mean=0.0, std=1.0, a=-2.0, b=2.0: nn.init.trunc_normal_(t, mean, std, a, b)
  layers.DropPath = _DropPath
  timm.models = models
  models.helpers, models.registry, models.layers = helpers, registry, layers
  sys.modules.update({"timm": timm, "timm.models": models, "timm.models.helpers": helpers,
                      "timm.models.registry": registry, "timm.models.layers": layers})


def import_official(checkout: str):
  """The official models/t2t_vit.py as a module, without running models/__init__.py."""
  _stub_timm()
  pkg = types.ModuleType("t2t_official_models")
  pkg.__path__ = [f"{checkout}/models"]
  sys.modules["t2t_official_models"] = pkg
  return importlib.import_module("t2t_official_models.t2t_vit")


def random_translate(images: torch.Tensor, gen: torch.Generator, max_shift: int) -> torch.Tensor:
  """(B, C, H, W) shifted by integers in [-max_shift, max_shift]^2, edge pixels repeated."""
  if max_shift <= 0:
    return images
  b, _, h, w = images.shape
  padded = F.pad(images, (max_shift,) * 4, mode="replicate")
  off = torch.randint(0, 2 * max_shift + 1, (b, 2), generator=gen)
  return torch.stack([padded[i, :, off[i, 0]:off[i, 0] + h, off[i, 1]:off[i, 1] + w] for i in range(b)])


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("checkout", help="path of a checkout of yitu-opensource/T2T-ViT")
  p.add_argument("--dataset", default="cluttered_digits", choices=("cluttered_digits", "digits"),
                 help="digits: the plain set, a check that this harness trains T2T at all")
  p.add_argument("--tokens_type", default="performer", choices=("performer", "transformer"))
  p.add_argument("--image_size", type=int, default=112)
  p.add_argument("--num_train", type=int, default=12_800)
  p.add_argument("--num_test", type=int, default=1000)
  p.add_argument("--steps", type=int, default=400)
  p.add_argument("--batch_size", type=int, default=32)
  p.add_argument("--lr", type=float, default=5e-4)
  p.add_argument("--weight_decay", type=float, default=0.05)
  p.add_argument("--warmup_frac", type=float, default=0.1)
  p.add_argument("--label_smoothing", type=float, default=0.1)
  p.add_argument("--max_shift", type=int, default=4)
  p.add_argument("--norm", default="pm1", choices=("pm1", "imagenet"),
                 help="pm1: x * 2 - 1 (tokax's trainer); imagenet: the official mean/std")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--log_every", type=int, default=50)
  args = p.parse_args()

  torch.manual_seed(args.seed)
  torch.set_num_threads(2)
  t2t = import_official(args.checkout)
  model = t2t.T2T_ViT(img_size=args.image_size, tokens_type=args.tokens_type, in_chans=3, num_classes=10,
                      embed_dim=64, depth=4, num_heads=2, mlp_ratio=4.0, drop_rate=0.0, attn_drop_rate=0.0,
                      drop_path_rate=0.0)
  print(f"official T2T_ViT {args.tokens_type}: {sum(q.numel() for q in model.parameters() if q.requires_grad):,} "
        f"trainable parameters", flush=True)

  def to_torch(ds):
    return torch.from_numpy(np.array(ds.images)).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(
        np.array(ds.labels)).long()

  t0 = time.time()
  x_train, y_train = to_torch(offline.load(args.dataset, "train", image_size=args.image_size,
                                           num_examples=args.num_train, seed=0))
  x_test, y_test = to_torch(offline.load(args.dataset, "test", image_size=args.image_size,
                                         num_examples=args.num_test, seed=0))
  print(f"data: train {tuple(x_train.shape)}, test {tuple(x_test.shape)} in {time.time() - t0:.0f} s; "
        f"train label counts {np.bincount(y_train.numpy(), minlength=10).tolist()}", flush=True)

  if args.norm == "pm1":
    normalize = lambda x: x * 2.0 - 1.0
  else:
    mean = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
    normalize = lambda x: (x - mean) / std

  # Weight decay on weight matrices only (tokax's mask: Dense kernels); biases, LayerNorms, cls get none.
  # The performer's random features w are nn.Parameter(requires_grad=False): no grad, so no update.
  params = [q for q in model.parameters() if q.requires_grad]
  decay = [q for q in params if q.ndim >= 2 and q.shape[0] != 1]  # excludes cls_token (1, 1, C)
  no_decay = [q for q in params if not any(q is d for d in decay)]
  opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.999), eps=1e-8)
  warmup = int(round(args.warmup_frac * args.steps))

  def lr_at(step):
    if step < warmup:
      return args.lr * step / warmup
    return args.lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, args.steps - warmup)))

  gen = torch.Generator().manual_seed(args.seed)
  perm = torch.randperm(args.num_train, generator=gen)
  pos, window, t0 = 0, [], time.time()
  model.train()
  for step in range(args.steps):
    if pos + args.batch_size > args.num_train:
      perm, pos = torch.randperm(args.num_train, generator=gen), 0
    idx = perm[pos:pos + args.batch_size]
    pos += args.batch_size
    x = normalize(random_translate(x_train[idx], gen, args.max_shift))
    for g in opt.param_groups:
      g["lr"] = lr_at(step)
    loss = F.cross_entropy(model(x), y_train[idx], label_smoothing=args.label_smoothing)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    gnorm = torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    window.append((loss.item(), gnorm.item()))
    if (step + 1) % args.log_every == 0:
      ls, gs = zip(*window)
      print(f"step {step + 1:4d}  train loss {np.mean(ls):.4f}  grad norm {np.mean(gs):.3f}  "
            f"lr {lr_at(step):.2e}  {time.time() - t0:.0f} s", flush=True)
      window = []

  model.eval()
  correct = 0
  with torch.no_grad():
    for i in range(0, len(x_test), 250):
      correct += (model(normalize(x_test[i:i + 250])).argmax(-1) == y_test[i:i + 250]).sum().item()
  print(f"test accuracy {correct / len(x_test):.4f} ({correct}/{len(x_test)})", flush=True)


if __name__ == "__main__":
  main()
