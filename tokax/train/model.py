"""Builds the model from explicit arguments (the trainer reads them off the config; its reduction comes from
tokax.reduction.build)."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from tokax.models.t2t_vit import T2TViT
from tokax.models.vit import ViT

MODELS = ("vit", "t2t_vit")


def build_model(*, variant: str, image_size: int, num_classes: int, pool: str = "cls", drop_path: float = 0.0,
                dtype: str = "float32", width: int | None = None, depth: int | None = None,
                num_heads: int | None = None, mlp_dim: int | None = None, reduction: Any = None,
                name: str = "vit", tokens_type: str | None = None, mlp_ratio: float | None = None,
                distilled: bool = False) -> ViT | T2TViT:
  """A classifier by name: "vit" (ViT; width/depth/num_heads/mlp_dim override the variant, None keeps
  it) or "t2t_vit" (T2TViT; variant "7", "14", "t_14", ...; tokens_type, width, depth, num_heads,
  mlp_ratio override the preset; pool must be "cls" and mlp_dim None). distilled: a DeiT
  distillation token and head (ViT only)."""
  if name == "t2t_vit":
    if distilled:
      raise ValueError("model.distilled: only model.name='vit' has a distillation token")
    if pool != "cls" or mlp_dim is not None:
      raise ValueError(f"model: t2t_vit pools its class token and sizes its MLP by mlp_ratio; got pool={pool!r}, "
                       f"mlp_dim={mlp_dim!r} (use pool='cls', mlp_dim=None)")
    return T2TViT(
        variant=variant, tokens_type=tokens_type, width=width, depth=depth, num_heads=num_heads,
        mlp_ratio=mlp_ratio, num_classes=num_classes, image_size=image_size, drop_path=drop_path,
        dtype=jnp.dtype(dtype), reduction=reduction)
  if name != "vit":
    raise ValueError(f"model.name: unknown model {name!r}; expected one of {MODELS}")
  if tokens_type is not None or mlp_ratio is not None:
    raise ValueError("model: tokens_type and mlp_ratio are T2T-ViT fields; set model.name='t2t_vit' or drop them")
  return ViT(
      variant=variant, image_size=image_size, num_classes=num_classes, pool=pool, drop_path=drop_path,
      dtype=jnp.dtype(dtype), width=width, depth=depth, num_heads=num_heads, mlp_dim=mlp_dim,
      reduction=reduction, distilled=distilled)


def normalize_images(images: jax.Array) -> jax.Array:
  """(B, H, W, 3) in [0, 1] (uint8: 0..255) -> (B, H, W, 3) in [-1, 1], the model's input range.

  uint8 batches let the host pipeline skip its float conversion and send 4x fewer bytes.
  """
  if images.dtype == jnp.uint8:
    return images.astype(jnp.float32) * (2.0 / 255.0) - 1.0
  return images * 2.0 - 1.0
