"""Official T2T-ViT (yitu-opensource/T2T-ViT) <-> tokax: convert its PyTorch weights into T2TViT params.

tokax.models.t2t_vit keeps the official names, so conversion is a rename and a transpose per
Linear. Two things are not one-to-one:

- the official backbone attention scale is `qk_scale` (width ** -0.5 in the released checkpoints:
  the factories set it when pretrained=True) where tokax's Block uses head_dim ** -0.5; the
  converter multiplies the query rows of every blocks.i.attn.qkv.weight by
  qk_scale / head_dim ** -0.5, which gives the same logits (and the same keys, for ToMe).
- pos_embed is the fixed sinusoid table, which tokax computes instead of storing; the converter
  checks that the checkpoint's table is that one.

  convert_state_dict(state_dict, model, qk_scale="pretrained") -> {"params": ...}
  load_checkpoint(path, model, qk_scale="pretrained") -> {"params": ...}   a .pth / .pth.tar file

torch is imported only inside load_checkpoint.
"""
from __future__ import annotations

import math
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from tokax.interop.common import flatten, unflatten
from tokax.models.t2t_vit import T2TViT, sinusoid_table

_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
_STEM = re.compile(r"^tokens_to_token\.(attention[12])\.(.+)$")
_BLOCK_MAP = {
    "norm1.weight": ("norm1", "scale"), "norm1.bias": ("norm1", "bias"),
    "attn.qkv.weight": ("attn", "qkv", "kernel"),
    "attn.proj.weight": ("attn", "proj", "kernel"), "attn.proj.bias": ("attn", "proj", "bias"),
    "norm2.weight": ("norm2", "scale"), "norm2.bias": ("norm2", "bias"),
    "mlp.fc1.weight": ("mlp_fc1", "kernel"), "mlp.fc1.bias": ("mlp_fc1", "bias"),
    "mlp.fc2.weight": ("mlp_fc2", "kernel"), "mlp.fc2.bias": ("mlp_fc2", "bias"),
}
_TRANSFORMER_MAP = {  # Token_transformer
    "norm1.weight": ("norm1", "scale"), "norm1.bias": ("norm1", "bias"),
    "attn.qkv.weight": ("attn_qkv", "kernel"),
    "attn.proj.weight": ("attn_proj", "kernel"), "attn.proj.bias": ("attn_proj", "bias"),
    "norm2.weight": ("norm2", "scale"), "norm2.bias": ("norm2", "bias"),
    "mlp.fc1.weight": ("mlp", "fc1", "kernel"), "mlp.fc1.bias": ("mlp", "fc1", "bias"),
    "mlp.fc2.weight": ("mlp", "fc2", "kernel"), "mlp.fc2.bias": ("mlp", "fc2", "bias"),
}
_PERFORMER_MAP = {  # Token_performer
    "norm1.weight": ("norm1", "scale"), "norm1.bias": ("norm1", "bias"),
    "kqv.weight": ("kqv", "kernel"), "kqv.bias": ("kqv", "bias"),
    "proj.weight": ("proj", "kernel"), "proj.bias": ("proj", "bias"),
    "norm2.weight": ("norm2", "scale"), "norm2.bias": ("norm2", "bias"),
    "mlp.0.weight": ("mlp_0", "kernel"), "mlp.0.bias": ("mlp_0", "bias"),
    "mlp.2.weight": ("mlp_2", "kernel"), "mlp.2.bias": ("mlp_2", "bias"),
    "w": ("w",),
}
_TOP_MAP = {
    "cls_token": ("cls_token",),
    "tokens_to_token.project.weight": ("tokens_to_token", "project", "kernel"),
    "tokens_to_token.project.bias": ("tokens_to_token", "project", "bias"),
    "norm.weight": ("norm", "scale"), "norm.bias": ("norm", "bias"),
    "head.weight": ("head", "kernel"), "head.bias": ("head", "bias"),
}


def _to_numpy(value: Any) -> np.ndarray:
  if hasattr(value, "detach"):  # torch tensor
    value = value.detach().cpu().float().numpy()
  return np.asarray(value, np.float32)


def unwrap_checkpoint(checkpoint: Mapping[str, Any], *, use_ema: bool = True) -> dict[str, Any]:
  """The model state dict inside an official training checkpoint, "module." prefixes stripped.

  Official train checkpoints hold {"state_dict": ..., "state_dict_ema": ...}; the released
  model files are plain state dicts. With use_ema the EMA weights are taken when present (as the
  official utils.load_state_dict(use_ema=True)).
  """
  for key in (("state_dict_ema", "state_dict") if use_ema else ("state_dict",)) + ("model",):
    if key in checkpoint and isinstance(checkpoint[key], Mapping):
      checkpoint = checkpoint[key]
      break
  return {(name[len("module."):] if name.startswith("module.") else name): value for name, value in checkpoint.items()}


def _resolve_qk_scale(qk_scale: float | str | None, width: int, num_heads: int) -> float:
  if qk_scale == "pretrained":
    return width ** -0.5
  if qk_scale is None:
    return (width // num_heads) ** -0.5
  if isinstance(qk_scale, (int, float)) and not isinstance(qk_scale, bool) and qk_scale > 0:
    return float(qk_scale)
  raise ValueError(f"qk_scale: expected 'pretrained' (width ** -0.5, the released checkpoints), None "
                   f"(head_dim ** -0.5, a model built with pretrained=False) or a positive float; got {qk_scale!r}")


def convert_state_dict(state_dict: Mapping[str, Any], model: T2TViT, *,
                       qk_scale: float | str | None = "pretrained") -> dict[str, Any]:
  """Official T2T_ViT state dict -> {"params": ...} of `model` (numpy arrays, checked against its shapes).

  Args:
    state_dict: the official model's state_dict() (or unwrap_checkpoint of a training checkpoint).
    model: the tokax T2TViT to load into (its variant, tokens_type, num_classes, image_size).
    qk_scale: the backbone attention scale the weights were trained with: "pretrained" (width **
      -0.5, what the official factories use with pretrained=True, i.e. the released checkpoints),
      None (head_dim ** -0.5: a model built with pretrained=False) or a number.

  Raises:
    ValueError: on keys with no tokax counterpart, missing keys, shape mismatches (naming the
      T2TViT field to change) or a pos_embed that is not the fixed sinusoid table.
  """
  arch = model.arch
  scale = _resolve_qk_scale(qk_scale, arch.width, arch.num_heads)
  stem_map = _PERFORMER_MAP if arch.tokens_type == "performer" else _TRANSFORMER_MAP
  flat: dict[tuple[str, ...], np.ndarray] = {}
  unknown = []
  pos_embed = None
  for name, value in state_dict.items():
    value = _to_numpy(value)
    block, stem = _BLOCK.match(name), _STEM.match(name)
    if name == "pos_embed":
      pos_embed = value
      continue
    if block and block[2] in _BLOCK_MAP:
      path = (f"blocks_{block[1]}",) + _BLOCK_MAP[block[2]]
    elif stem and stem[2] in stem_map:
      path = ("tokens_to_token", stem[1]) + stem_map[stem[2]]
    elif name in _TOP_MAP:
      path = _TOP_MAP[name]
    else:
      unknown.append(name)
      continue
    if path[-1] == "kernel":
      value = value.T
    if block and block[2] == "attn.qkv.weight":  # (C, 3C) after the transpose: q is the first C columns
      value = value.copy()
      value[:, :arch.width] *= scale * math.sqrt(arch.width // arch.num_heads)
    flat[path] = value
  if unknown:
    raise ValueError(f"convert_state_dict: official keys with no place in a {arch.tokens_type}-stem T2TViT: "
                     f"{sorted(unknown)[:8]}{' ...' if len(unknown) > 8 else ''} (check T2TViT.variant / tokens_type)")
  if pos_embed is not None:
    table = sinusoid_table(model.num_patches + 1, arch.width)
    if pos_embed.shape != table.shape or not np.allclose(pos_embed, table, atol=1e-5):
      raise ValueError(f"convert_state_dict: pos_embed {pos_embed.shape} is not the fixed sinusoid table "
                       f"{table.shape} of image_size={model.image_size}; T2TViT computes that table, so set "
                       "T2TViT.image_size to the checkpoint's (a resized, learned table is not supported)")
  _check_shapes(flat, model)
  return {"params": unflatten(flat)}


def _check_shapes(flat: Mapping[tuple[str, ...], np.ndarray], model: T2TViT) -> None:
  images = jax.ShapeDtypeStruct((1, model.image_size, model.image_size, 3), jnp.float32)
  want = flatten(jax.eval_shape(model.init, jax.random.key(0), images)["params"])
  missing = sorted("/".join(p) for p in want if p not in flat)
  extra = sorted("/".join(p) for p in flat if p not in want)
  wrong = [f"{'/'.join(p)}: checkpoint {flat[p].shape} vs model {tuple(want[p].shape)}"
           for p in want if p in flat and flat[p].shape != tuple(want[p].shape)]
  if missing or extra or wrong:
    hint = (" (head: set T2TViT.num_classes to the checkpoint's)" if any(w.startswith("head/") for w in wrong) else
            " (check T2TViT.variant, tokens_type and token_dim)")
    raise ValueError(f"convert_state_dict: checkpoint does not fit T2TViT(variant={model.variant!r}): "
                     f"missing {missing[:6]}, unexpected {extra[:6]}, shape mismatches {wrong[:6]}{hint}")


def load_checkpoint(path: str, model: T2TViT, *, qk_scale: float | str | None = "pretrained",
                    use_ema: bool = True) -> dict[str, Any]:
  """Reads an official .pth / .pth.tar file (torch.load, weights_only) and converts it."""
  import torch  # noqa: PLC0415 (optional dependency)

  checkpoint = torch.load(path, map_location="cpu", weights_only=True)
  return convert_state_dict(unwrap_checkpoint(checkpoint, use_ema=use_ema), model, qk_scale=qk_scale)
