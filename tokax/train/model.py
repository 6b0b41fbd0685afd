"""Builds the model and its reduction from explicit arguments (the trainer reads them off the config)."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from tokax.models.vit import ViT
from tokax.reduction import ToMe


def build_model(*, variant: str, image_size: int, num_classes: int, pool: str = "cls", drop_path: float = 0.0,
                dtype: str = "float32", width: int | None = None, depth: int | None = None,
                num_heads: int | None = None, mlp_dim: int | None = None, reduction: Any = None) -> ViT:
  """A ViT classifier; width/depth/num_heads/mlp_dim (None: the variant's) override the variant."""
  return ViT(
      variant=variant, image_size=image_size, num_classes=num_classes, pool=pool, drop_path=drop_path,
      dtype=jnp.dtype(dtype), width=width, depth=depth, num_heads=num_heads, mlp_dim=mlp_dim,
      reduction=reduction)


def build_reduction(name: str, *, r: int = 0, prop_attn: bool = True) -> Any:
  """A reduction method by name: "none" (dense) or "tome" (ToMe merging r tokens per layer)."""
  if name in ("", "none"):
    return None
  if name == "tome":
    return ToMe(r=r, prop_attn=prop_attn)
  raise ValueError(f"reduction: unknown method {name!r}; expected 'none' or 'tome'")


def normalize_images(images: jax.Array) -> jax.Array:
  """(B, H, W, 3) in [0, 1] -> (B, H, W, 3) in [-1, 1], the model's input range."""
  return images * 2.0 - 1.0
