"""Models from config data: `config.model = dict(name="vit", variant=..., ...)` is `ViT(**fields)`.

build_model looks the class up by name (MODELS) and passes the other fields through unchanged
(lists become tuples, dtype names become dtypes, as config.json stores them); a field the class
does not have is an error naming the class and its fields. The reduction comes from
tokax.reduction.build(config.reduction) (in tokax.train.tasks.classifier).

`attention` (every ViT-family model, and XAR) picks the kernels.attention implementation: "xla",
"cudnn", "pallas" or "auto" (None); anything else is an error naming config.model.attention and
the choices. "pallas" on a backend without a compiled Pallas kernel (the CPU) needs
`interpret=True` (ViT, T2TViT; the model says so when it runs): the TPU kernel then runs in
Pallas' interpreter. docs/tpu.md has the TPU command lines.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from tokax import kernels
from tokax.models.t2t_vit import T2TViT
from tokax.models.vit import ViT

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


def check_attention(fields: Mapping[str, Any], *, what: str = "config.model") -> None:
  """config.model.attention names a kernels.attention implementation; config.model.interpret is a bool.

  (Whether "pallas" has a kernel on the backend is checked when the model runs: a run restored on
  another machine may switch attention first.)
  """
  attention = fields.get("attention")
  choices = kernels.IMPLEMENTATIONS
  if attention is not None and attention not in choices:
    raise ValueError(f"{what}.attention: unknown attention implementation {attention!r}; expected one of "
                     f"{', '.join(choices)} (or None, which is 'auto')")
  interpret = fields.get("interpret", False)
  if not isinstance(interpret, bool):
    raise ValueError(f"{what}.interpret: expected True or False; got {interpret!r}")


def from_fields(cls: type[nn.Module], fields: Mapping[str, Any], *, what: str = "config.model") -> nn.Module:
  """cls(**fields), with lists as tuples and dtype names as dtypes; an unknown field is an error.

  The attention fields are checked (check_attention) before anything is built.
  """
  known = module_fields(cls)
  unknown = sorted(set(fields) - set(known))
  if unknown:
    raise ValueError(f"{what}: {cls.__name__} has no field{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                     f"its fields are {', '.join(known)}")
  if "attention" in known:
    check_attention(fields, what=what)
  return cls(**{key: _as_field(key, value) for key, value in fields.items()})


def build_model(name: str = "vit", /, **fields: Any) -> nn.Module:
  """The classifier MODELS[name] built from its fields: build_model("vit", variant="Ti/4", num_classes=10, ...)."""
  if name not in MODELS:
    raise ValueError(f"config.model.name: unknown model {name!r}; expected one of {sorted(MODELS)}")
  return from_fields(MODELS[name], fields)


def normalize_images(images: jax.Array) -> jax.Array:
  """(B, H, W, 3) in [0, 1] (uint8: 0..255) -> (B, H, W, 3) in [-1, 1], the model's input range.

  uint8 batches let the host pipeline skip its float conversion and send 4x fewer bytes.
  """
  if images.dtype == jnp.uint8:
    return images.astype(jnp.float32) * (2.0 / 255.0) - 1.0
  return images * 2.0 - 1.0
