"""timm <-> tokax: convert timm VisionTransformer weights into tokax ViT parameters.

timm names map one to one onto tokax's (tokax.models.vit keeps them); Linear weights are
transposed, the patch-embedding conv goes from OIHW to HWIO.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
_BLOCK_MAP = {
    "norm1.weight": ("norm1", "scale"), "norm1.bias": ("norm1", "bias"),
    "attn.qkv.weight": ("attn", "qkv", "kernel"), "attn.qkv.bias": ("attn", "qkv", "bias"),
    "attn.proj.weight": ("attn", "proj", "kernel"), "attn.proj.bias": ("attn", "proj", "bias"),
    "ls1.gamma": ("ls1", "gamma"), "ls2.gamma": ("ls2", "gamma"),
    "norm2.weight": ("norm2", "scale"), "norm2.bias": ("norm2", "bias"),
    "mlp.fc1.weight": ("mlp_fc1", "kernel"), "mlp.fc1.bias": ("mlp_fc1", "bias"),
    "mlp.fc2.weight": ("mlp_fc2", "kernel"), "mlp.fc2.bias": ("mlp_fc2", "bias"),
}
_TOP_MAP = {
    "cls_token": ("cls_token",), "dist_token": ("dist_token",), "pos_embed": ("pos_embed",),
    "patch_embed.proj.weight": ("patch_embed", "kernel"), "patch_embed.proj.bias": ("patch_embed", "bias"),
    "norm.weight": ("norm", "scale"), "norm.bias": ("norm", "bias"),
    "fc_norm.weight": ("fc_norm", "scale"), "fc_norm.bias": ("fc_norm", "bias"),
    "head.weight": ("head", "kernel"), "head.bias": ("head", "bias"),
    "head_dist.weight": ("head_dist", "kernel"), "head_dist.bias": ("head_dist", "bias"),
}


def _to_numpy(value: Any) -> np.ndarray:
  if hasattr(value, "detach"):  # torch tensor
    value = value.detach().cpu().float().numpy()
  return np.asarray(value)


def _flax_layout(path: tuple[str, ...], value: np.ndarray) -> np.ndarray:
  if path[-1] == "kernel" and value.ndim == 4:  # conv OIHW -> HWIO
    return value.transpose(2, 3, 1, 0)
  if path[-1] == "kernel" and value.ndim == 2:  # Linear (out, in) -> (in, out)
    return value.T
  return value


def convert_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """timm VisionTransformer state dict -> tokax ViT params ({"params": {...}} tree of numpy arrays).

  Raises:
    ValueError: naming the timm keys tokax has no place for (e.g. register tokens, qk-norm).
  """
  params: dict[str, Any] = {}
  unknown = []
  for name, value in state_dict.items():
    m = _BLOCK.match(name)
    if m and m[2] in _BLOCK_MAP:
      path = (f"blocks_{m[1]}",) + _BLOCK_MAP[m[2]]
    elif name in _TOP_MAP:
      path = _TOP_MAP[name]
    else:
      unknown.append(name)
      continue
    node = params
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = _flax_layout(path, _to_numpy(value))
  if unknown:
    raise ValueError(f"convert_state_dict: timm keys with no tokax counterpart: {sorted(unknown)[:8]}"
                     f"{' ...' if len(unknown) > 8 else ''}")
  return {"params": params}


def export_state_dict(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """tokax ViT params -> timm VisionTransformer state dict (numpy), the inverse of convert_state_dict."""
  inverse = {path: name for name, path in _TOP_MAP.items()}
  block_inverse = {path: name for name, path in _BLOCK_MAP.items()}
  tree = params.get("params", params)
  out: dict[str, np.ndarray] = {}

  def visit(node: Mapping[str, Any], path: tuple[str, ...]) -> None:
    for key, value in node.items():
      if isinstance(value, Mapping):
        visit(value, path + (key,))
        continue
      full = path + (key,)
      arr = np.asarray(value)
      if arr.ndim == 4 and full[-1] == "kernel":
        arr = arr.transpose(3, 2, 0, 1)
      elif arr.ndim == 2 and full[-1] == "kernel":
        arr = arr.T
      m = re.match(r"^blocks_(\d+)$", full[0])
      if m and full[1:] in block_inverse:
        out[f"blocks.{m[1]}.{block_inverse[full[1:]]}"] = arr
      elif full in inverse:
        out[inverse[full]] = arr
      else:
        raise ValueError(f"export_state_dict: no timm name for tokax parameter {'/'.join(full)}")

  visit(tree, ())
  return out
