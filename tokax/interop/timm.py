"""timm <-> tokax: convert timm VisionTransformer weights into tokax ViT parameters.

timm names map one to one onto tokax's (tokax.models.vit keeps them); Linear weights are
transposed, the patch-embedding conv goes from OIHW to HWIO.

  from_timm(timm_model) -> (ViT, params)    a live timm model (duck-typed: no timm import here)
  load_checkpoint(path, model) -> params     a checkpoint file: .safetensors, .pth/.pt/.bin, .npz
  convert_state_dict / export_state_dict     state dict <-> params, names and layouts only

torch and safetensors are imported only inside the functions that read their files.
"""
from __future__ import annotations

import math
import os
import re
from typing import Any, Mapping

import numpy as np

from tokax.interop.common import Params, check_params
from tokax.models.vit import _WIDTHS, ViT

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


# ------------------------------------------------------------------------------------------------
# A live timm model.


def _kind(module: Any) -> str:
  return type(module).__name__


def _is_identity(module: Any) -> bool:
  return module is None or _kind(module) == "Identity"


def _pair(value: Any) -> tuple[int, int]:
  return (int(value), int(value)) if isinstance(value, (int, np.integer)) else tuple(int(v) for v in value)


def _norm_problem(module: Any, where: str) -> str | None:
  """None if `module` is a LayerNorm tokax reproduces (eps 1e-6, affine with bias)."""
  if _kind(module) != "LayerNorm":
    return f"{where} is {_kind(module)}; tokax has LayerNorm only"
  if not math.isclose(float(getattr(module, "eps", 0.0)), 1e-6, rel_tol=1e-3):
    return f"{where}.eps={module.eps}; tokax's LayerNorm uses eps=1e-6"
  if getattr(module, "weight", None) is None or getattr(module, "bias", None) is None:
    return f"{where} has no affine weight/bias; tokax's LayerNorm has both"
  return None


def _block_problems(block: Any, width: int) -> list[str]:
  """Everything in a timm block that tokax's Block does not compute; "{where}" marks the block."""
  where = "{where}"
  if _kind(block) != "Block":
    return [f"{where} is {_kind(block)}; tokax has the pre-norm timm Block only"]
  problems = [_norm_problem(block.norm1, f"{where}.norm1"), _norm_problem(block.norm2, f"{where}.norm2")]
  attn, mlp = block.attn, block.mlp
  if _kind(attn) != "Attention":
    problems.append(f"{where}.attn is {_kind(attn)}; tokax has timm's plain Attention only")
  else:
    if not (_is_identity(getattr(attn, "q_norm", None)) and _is_identity(getattr(attn, "k_norm", None))):
      problems.append(f"{where}.attn has qk-norm (qk_norm=True); tokax's attention has none")
    if not _is_identity(getattr(attn, "norm", None)):
      problems.append(f"{where}.attn has a scale norm (scale_attn_norm=True); tokax has none")
    if getattr(attn, "gate", None) is not None:
      problems.append(f"{where}.attn is gated; tokax's attention is not")
    if attn.proj.bias is None:
      problems.append(f"{where}.attn.proj has no bias (proj_bias=False); tokax's proj has one")
    if attn.num_heads * attn.head_dim != width:
      problems.append(f"{where}.attn: num_heads*head_dim={attn.num_heads * attn.head_dim} != embed_dim={width}")
  if _kind(mlp) != "Mlp":
    problems.append(f"{where}.mlp is {_kind(mlp)}; tokax has the 2-layer GELU Mlp only")
  else:
    if _kind(mlp.act) != "GELU" or getattr(mlp.act, "approximate", "none") != "none":
      problems.append(f"{where}.mlp.act is {_kind(mlp.act)}"
                      f"{'(approximate=%r)' % mlp.act.approximate if hasattr(mlp.act, 'approximate') else ''};"
                      " tokax uses exact GELU")
    if not _is_identity(getattr(mlp, "norm", None)):
      problems.append(f"{where}.mlp has a norm (scale_mlp_norm=True); tokax has none")
    if mlp.fc1.bias is None or mlp.fc2.bias is None:
      problems.append(f"{where}.mlp has no bias (proj_bias=False); tokax's Mlp has biases")
  for name in ("ls1", "ls2"):
    scale = getattr(block, name, None)
    if not _is_identity(scale) and _kind(scale) != "LayerScale":
      problems.append(f"{where}.{name} is {_kind(scale)}; tokax has LayerScale or nothing")
  return [p for p in problems if p]


def _variant(width: int, depth: int, heads: int, mlp_dim: int, patch: int) -> str:
  for name, arch in _WIDTHS.items():
    if arch == (width, depth, heads, mlp_dim):
      return f"{name}/{patch}"
  known = ", ".join(f"{n}=(width={a[0]}, depth={a[1]}, heads={a[2]}, mlp_dim={a[3]})" for n, a in _WIDTHS.items())
  raise ValueError(f"from_timm: no tokax ViT size has embed_dim={width}, depth={depth}, num_heads={heads}, "
                   f"mlp hidden={mlp_dim}; tokax.models.vit._WIDTHS knows {known}")


def timm_config(timm_model: Any) -> dict[str, Any]:
  """ViT(...) keyword arguments for a timm VisionTransformer / VisionTransformerDistilled.

  Raises:
    ValueError: naming every feature of the timm model that tokax's ViT does not compute
      (register tokens, qk-norm, pre-norm, dynamic image size, attention pooling, ...).
  """
  for attr in ("patch_embed", "blocks", "norm", "head", "global_pool"):
    if not hasattr(timm_model, attr):
      raise ValueError(f"from_timm: {_kind(timm_model)} is not a timm VisionTransformer (no .{attr})")
  m = timm_model
  pe = m.patch_embed
  width = int(m.embed_dim)
  blocks = list(m.blocks)
  problems = []
  if getattr(m, "reg_token", None) is not None or getattr(m, "num_reg_tokens", 0):
    problems.append(f"register tokens (reg_tokens={getattr(m, 'num_reg_tokens', '?')})")
  if getattr(m, "pos_embed", None) is None:
    problems.append("no absolute position embedding (pos_embed='none' or RoPE)")
  if getattr(m, "dynamic_img_size", False) or getattr(pe, "dynamic_img_pad", False):
    problems.append("dynamic_img_size / dynamic_img_pad (tokax's ViT has a fixed image_size)")
  if not _is_identity(getattr(m, "norm_pre", None)):
    problems.append("pre-norm (norm_pre is not Identity: pre_norm=True, as in CLIP)")
  if not _is_identity(getattr(pe, "norm", None)):
    problems.append("a norm in patch_embed (embed_norm_layer)")
  if _kind(pe) != "PatchEmbed" or _kind(getattr(pe, "proj", None)) != "Conv2d":
    problems.append(f"patch_embed is {_kind(pe)} (hybrid or custom stem); tokax has a conv patch embedding")
  elif pe.proj.bias is None:
    problems.append("patch_embed.proj has no bias")
  elif pe.proj.in_channels != 3:
    problems.append(f"in_chans={pe.proj.in_channels}; tokax's ViT takes RGB (3 channels)")
  patch, image = _pair(pe.patch_size), _pair(pe.img_size)
  if patch[0] != patch[1] or image[0] != image[1]:
    problems.append(f"non-square patch_size={patch} / img_size={image}")
  pool = {"token": "cls", "avg": "gap"}.get(m.global_pool)
  if pool is None:
    problems.append(f"global_pool={m.global_pool!r}; tokax pools 'token' (cls) or 'avg' (gap)")
  if getattr(m, "attn_pool", None) is not None:
    problems.append(f"attention pooling ({_kind(m.attn_pool)}, global_pool='map'/'prr')")
  if pool == "gap" and getattr(m, "pool_include_prefix", False):
    problems.append("pool_include_prefix=True; tokax's gap averages the patch tokens only")
  if pool == "cls" and not (_is_identity(m.fc_norm) and not _is_identity(m.norm)):
    problems.append("token pooling with fc_norm (or without the final norm); tokax's cls pool uses norm only")
  if pool == "gap" and not (_is_identity(m.norm) and not _is_identity(m.fc_norm)):
    problems.append("avg pooling with the final norm before pooling (fc_norm=False) or no norm at all; "
                    "tokax's gap applies fc_norm after pooling only")
  for name in ("norm", "fc_norm"):
    module = getattr(m, name, None)
    if not _is_identity(module):
      problems.append(_norm_problem(module, name))
  if not (_is_identity(m.head) or _kind(m.head) == "Linear"):
    problems.append(f"head is {_kind(m.head)}; tokax has a Linear head")
  by_problem: dict[str, list[int]] = {}
  for i, block in enumerate(blocks):
    for problem in _block_problems(block, width):
      by_problem.setdefault(problem, []).append(i)
  for problem, layers in by_problem.items():
    contiguous = layers == list(range(layers[0], layers[-1] + 1))
    where = (f"blocks.{layers[0]}" if len(layers) == 1 else
             f"blocks.{{{layers[0]}..{layers[-1]}}}" if contiguous else f"blocks.{layers}")
    problems.append(problem.replace("{where}", where))
  problems = [p for p in problems if p]
  if problems:
    raise ValueError(f"from_timm: {_kind(m)} uses features tokax's ViT does not support:\n  - "
                     + "\n  - ".join(problems))

  first = blocks[0]
  layer_scales = {not _is_identity(getattr(b, n, None)) for b in blocks for n in ("ls1", "ls2")}
  qkv_biases = {b.attn.qkv.bias is not None for b in blocks}
  if len(layer_scales) > 1 or len(qkv_biases) > 1:
    raise ValueError("from_timm: LayerScale / qkv bias differ between blocks; tokax's ViT needs them uniform")
  drop = getattr(blocks[-1], "drop_path1", None)
  return dict(
      variant=_variant(width, len(blocks), int(first.attn.num_heads), int(first.mlp.fc1.out_features), patch[0]),
      num_classes=int(m.num_classes) if not _is_identity(m.head) else 0,
      image_size=image[0],
      pool=pool,
      class_token=getattr(m, "cls_token", None) is not None,
      distilled=getattr(m, "dist_token", None) is not None,
      qkv_bias=qkv_biases.pop(),
      layer_scale=(float(getattr(first.ls1, "init_values", 1e-5) or 1e-5) if layer_scales.pop() else None),
      drop_path=float(getattr(drop, "drop_prob", 0.0) or 0.0),
  )


def from_timm(timm_model: Any, **overrides: Any) -> tuple[ViT, Params]:
  """A tokax ViT and its params computing the same function as a timm VisionTransformer.

  timm_model: timm VisionTransformer or VisionTransformerDistilled (any weights, any mode).
  overrides: ViT fields to set beside those read off the timm model (dtype, attention, reduction,
    ...); an override that changes a parameter shape (num_classes, image_size) fails in check_params.
  Returns (model, {"params": ...}) with numpy float32 leaves (the model's param_dtype).

  Raises:
    ValueError: the timm model uses a feature tokax does not compute (see timm_config).
  """
  model = ViT(**{**timm_config(timm_model), **overrides})
  return model, check_params(convert_state_dict(timm_model.state_dict()), model)


# ------------------------------------------------------------------------------------------------
# Checkpoint files.

_WRAPPERS = ("state_dict", "model", "module")
_PREFIXES = ("module.", "_orig_mod.", "model.")
_TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".pth.tar")


def unwrap_state_dict(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
  """Strips training wrappers: {"state_dict"|"model"|"module": sd} and "module."-style key prefixes."""
  sd: Any = checkpoint
  while isinstance(sd, Mapping) and not any(k.startswith("blocks.") for k in sd):
    inner = next((sd[k] for k in _WRAPPERS if isinstance(sd.get(k), Mapping)), None)
    if inner is None:
      break
    sd = inner
  sd = dict(sd)
  stripped = True
  while stripped and sd:
    stripped = False
    for prefix in _PREFIXES:
      if all(k.startswith(prefix) for k in sd):
        sd = {k[len(prefix):]: v for k, v in sd.items()}
        stripped = True
  return sd


def _read_bfloat16_safetensors(path: str) -> dict[str, np.ndarray]:
  """safetensors.numpy cannot make bfloat16 arrays; this reads the (documented) file format directly:
  an 8-byte little-endian header size, a JSON header {name: {dtype, shape, data_offsets}}, the bytes."""
  import json
  import ml_dtypes  # a jax dependency
  dtypes = {"BF16": ml_dtypes.bfloat16, "F16": np.float16, "F32": np.float32, "F64": np.float64,
            "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
  with open(path, "rb") as f:
    header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    data = f.read()
  out = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    start, end = info["data_offsets"]
    out[name] = np.frombuffer(data[start:end], dtype=dtypes[info["dtype"]]).reshape(info["shape"]).astype(np.float32)
  return out


def read_state_dict(path: str | os.PathLike) -> dict[str, Any]:
  """A timm state dict from a .safetensors or torch (.pth/.pt/.bin) file, wrappers stripped."""
  path = os.fspath(path)
  if path.endswith(".safetensors"):
    try:
      from safetensors.numpy import load_file
    except ImportError as err:
      raise ImportError(f"reading {path} needs the safetensors package: pip install safetensors") from err
    try:
      return unwrap_state_dict(load_file(path))
    except TypeError as err:  # "data type 'bfloat16' not understood"
      if "bfloat16" not in str(err):
        raise
      return unwrap_state_dict(_read_bfloat16_safetensors(path))
  if path.endswith(_TORCH_SUFFIXES):
    try:
      import torch
    except ImportError as err:
      raise ImportError(f"reading the torch checkpoint {path} needs torch (CPU is enough): pip install torch; "
                        "or convert it to .safetensors") from err
    return unwrap_state_dict(torch.load(path, weights_only=True, map_location="cpu"))
  raise ValueError(f"load_checkpoint: unknown checkpoint type {path!r}; expected .safetensors, "
                   f".npz (big_vision / AugReg) or a torch file ({', '.join(_TORCH_SUFFIXES)})")


def load_checkpoint(path: str | os.PathLike, model: ViT) -> Params:
  """Params for `model` from a timm / DeiT checkpoint file, validated against the model.

  .safetensors (safetensors.numpy), .pth/.pt/.bin/.ckpt (torch.load with weights_only=True on the
  CPU; wrappers like {"model": ...} and "module." prefixes are stripped), .npz (big_vision /
  google-research/vision_transformer layout, see tokax.interop.big_vision.load_npz).

  Raises:
    ValueError: the checkpoint does not fit the model; the message names each parameter, the
      checkpoint's shape, the model's shape and the ViT field to change (num_classes, image_size...).
  """
  if os.fspath(path).endswith(".npz"):
    from tokax.interop.big_vision import load_npz
    return load_npz(path, model)
  return check_params(convert_state_dict(read_state_dict(path)), model)
