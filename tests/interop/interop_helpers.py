"""Helpers for the interop tests: randomised timm ViTs, running them on NHWC images, errors."""
from __future__ import annotations

import math

import numpy as np


def randomize_(module, seed: int) -> None:
  """Re-draws every parameter in place so no term can hide (timm zero-inits heads and biases).

  Linear/conv weights: normal / sqrt(fan_in); LayerNorm scales 1 + 0.1 normal; LayerScale gammas
  0.1 + 0.05 normal; cls/dist/pos tokens 0.5 normal; biases and anything else 0.1 normal.
  """
  import torch
  torch.manual_seed(seed)
  with torch.no_grad():
    for name, p in sorted(module.named_parameters()):
      draw = torch.randn(p.shape, dtype=torch.float32)
      leaf = name.rsplit(".", 1)[-1]
      if leaf == "gamma":
        value = 0.1 + 0.05 * draw
      elif leaf in ("cls_token", "dist_token", "pos_embed", "reg_token"):
        value = 0.5 * draw
      elif leaf == "weight" and p.ndim >= 2:
        value = draw / math.sqrt(math.prod(p.shape[1:]))
      elif leaf == "weight" and "norm" in name:
        value = 1.0 + 0.1 * draw
      else:
        value = 0.1 * draw
      p.copy_(value)


def random_timm(timm, name: str, seed: int = 0, **kwargs):
  """An eval-mode timm model `name` (no download) with randomised weights."""
  model = timm.create_model(name, pretrained=False, weight_init="skip", **kwargs)
  randomize_(model, seed)
  return model.eval()


def run_timm(model, images: np.ndarray) -> np.ndarray:
  """images (B, H, W, 3) NHWC -> the timm model's output; timm takes NCHW."""
  import torch
  with torch.no_grad():
    return model(torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))).numpy()


def images(batch: int, size: int, seed: int = 0) -> np.ndarray:
  """(batch, size, size, 3) float32 standard-normal 'normalised images'."""
  return np.random.default_rng(seed).standard_normal((batch, size, size, 3)).astype(np.float32)


def relative(a, b) -> float:
  """||a - b|| / ||b|| in float64."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))
