"""Models from config data: `config.model = dict(name="vit", variant=..., ...)` is `ViT(**fields)`.

build_model looks the class up by name (MODELS) and passes the other fields through unchanged
(lists become tuples, dtype names become dtypes, as config.json stores them); a field the class
does not have is an error naming the class and its fields. build_reduction makes the reduction
method of config.reduction (the one call site is tokax.train.tasks.classifier).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from tokax.models.t2t_vit import T2TViT
from tokax.models.vit import ViT
from tokax.reduction import MCTF, Slim, ToMe

MODELS: dict[str, type[nn.Module]] = {"vit": ViT, "t2t_vit": T2TViT}
_DTYPE_FIELDS = ("dtype", "param_dtype")
_MODULE_FIELDS = ("parent", "name")  # flax's own dataclass fields, never config data


def module_fields(cls: type[nn.Module]) -> tuple[str, ...]:
  """The constructor fields of a flax module class (without flax's parent and name)."""
  return tuple(f.name for f in dataclasses.fields(cls) if f.init and f.name not in _MODULE_FIELDS)


def _as_field(key: str, value: Any) -> Any:
  if isinstance(value, list):
    return tuple(_as_field(key, v) for v in value)
  if key in _DTYPE_FIELDS and isinstance(value, str):
    return jnp.dtype(value)
  return value


def from_fields(cls: type[nn.Module], fields: Mapping[str, Any], *, what: str = "config.model") -> nn.Module:
  """cls(**fields), with lists as tuples and dtype names as dtypes; an unknown field is an error."""
  known = module_fields(cls)
  unknown = sorted(set(fields) - set(known))
  if unknown:
    raise ValueError(f"{what}: {cls.__name__} has no field{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                     f"its fields are {', '.join(known)}")
  return cls(**{key: _as_field(key, value) for key, value in fields.items()})


def build_model(name: str = "vit", /, **fields: Any) -> nn.Module:
  """The classifier MODELS[name] built from its fields: build_model("vit", variant="Ti/4", num_classes=10, ...)."""
  if name not in MODELS:
    raise ValueError(f"config.model.name: unknown model {name!r}; expected one of {sorted(MODELS)}")
  return from_fields(MODELS[name], fields)


REDUCTIONS = ("none", "tome", "mctf", "slim")


def build_reduction(name: str, *, r: int | float = 0, prop_attn: bool = True,
                    activate_layers: tuple[int, ...] | None = None, stage_blocks: tuple[int, ...] | None = None,
                    keeping_ratio: float = 0.5) -> Any:
  """A reduction method by name: "none" (dense), "tome" (ToMe merging r tokens per layer), "mctf"
  (MCTF fusing r per layer in activate_layers, None: all) or "slim" (SiT's token slimming with
  stage_blocks and keeping_ratio)."""
  if name in ("", "none"):
    return None
  if name == "tome":
    return ToMe(r=r, prop_attn=prop_attn)
  if name == "mctf":
    layers = None if activate_layers is None else tuple(activate_layers)
    return MCTF(r=r, prop_attn=prop_attn, activate_layers=layers)
  if name == "slim":
    if not stage_blocks:
      raise ValueError("reduction.stage_blocks: 'slim' needs the blocks of each stage, summing to the depth "
                       "(e.g. (1, 1, 1, 9) for 12 blocks)")
    return Slim(stage_blocks=tuple(stage_blocks), keeping_ratio=keeping_ratio)
  raise ValueError(f"reduction: unknown method {name!r}; expected one of {REDUCTIONS}")


def normalize_images(images: jax.Array) -> jax.Array:
  """(B, H, W, 3) in [0, 1] (uint8: 0..255) -> (B, H, W, 3) in [-1, 1], the model's input range.

  uint8 batches let the host pipeline skip its float conversion and send 4x fewer bytes.
  """
  if images.dtype == jnp.uint8:
    return images.astype(jnp.float32) * (2.0 / 255.0) - 1.0
  return images * 2.0 - 1.0
