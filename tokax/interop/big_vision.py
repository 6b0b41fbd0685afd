"""big_vision / google-research/vision_transformer (AugReg) .npz ViT checkpoints -> tokax params.

Layout (flattened with "/"; optional prefix "params/", "params/img/" or "opt/target/"):

  embedding/{kernel (P, P, 3, D) HWIO, bias (D,)}        -> patch_embed
  cls (1, 1, D)                                          -> cls_token
  pos_embedding (1, N[+1], D)  or  Transformer/posembed_input/pos_embedding (1, N+1, D)
                               or  Transformer/pos_embedding                   -> pos_embed
  Transformer/encoderblock_{i}/ (or Transformer/encoderblock/ with a leading (depth,) axis)
    LayerNorm_0/{scale, bias}                            -> blocks_i/norm1
    MultiHeadDotProductAttention_{1|0}/
      {query, key, value}/{kernel (D, H, Dh), bias (H, Dh)} -> blocks_i/attn/qkv (D, 3D), (3D,)
      out/{kernel (H, Dh, D), bias (D,)}                 -> blocks_i/attn/proj
    LayerNorm_{2|1}/{scale, bias}                        -> blocks_i/norm2
    MlpBlock_{3|0}/Dense_{0,1}/{kernel, bias}            -> blocks_i/mlp_fc1, mlp_fc2
  Transformer/encoder_norm/{scale, bias}                 -> norm
  head/{kernel (D, C), bias (C,)}                        -> head

Sub-module numbers are vision_transformer's (MultiHeadDotProductAttention_1, LayerNorm_2,
MlpBlock_3) or big_vision's (_0, _1, _0); both are read. big_vision adds the position embedding
before prepending [cls], so its table has no [cls] row: the class token gets a zero one (exact).

Not loaded (each raises, naming the feature): pool_type "gap" / "0" (no "cls": big_vision applies
encoder_norm to every token and then averages, tokax's "gap" averages and then applies fc_norm,
so the weights would compute a different function), "map" (MAPHead_0), a pre_logits layer
(representation_size), hybrid ResNet stems, sincos2d position embeddings (not stored).

Unknown arrays: every array under the ViT's prefix must be one the conversion reads (an empty head or
pre_logits counts as read); any other (an extra layer, a naming this file does not know) is an
UnknownKeysError listing them, unless allow_unknown=True loads the rest without them. Arrays outside the
prefix (another tower "params/txt/...", optimizer state) are not the ViT's and are not checked.

Numerics: big_vision and vision_transformer train with flax's nn.gelu (tanh approximation);
tokax, like timm (whose AugReg weights are these files), uses the exact erf GELU. Logits differ
from the JAX originals by that approximation (small; timm's published accuracies include it).
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

from tokax.interop.common import Params, check_params
from tokax.models.vit import ViT

_PREFIXES = ("", "params/", "params/img/", "opt/target/")
_POS_KEYS = ("pos_embedding", "Transformer/posembed_input/pos_embedding", "Transformer/pos_embedding")
# (attention, second LayerNorm, MLP) sub-module numbers.
_NAMINGS = {"vision_transformer": (1, 2, 3), "big_vision": (0, 1, 0)}
_SHOWN = 12  # unknown keys named in one message


class UnknownKeysError(ValueError):
  """Arrays of a checkpoint that the conversion does not read (see the module docstring)."""


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """All arrays of an .npz file; bfloat16 stored as raw 2-byte voids is decoded to float32."""
  with np.load(os.fspath(path), allow_pickle=False) as data:
    arrays = {key: data[key] for key in data.files}
  for key, value in arrays.items():
    if value.dtype.kind == "V" and value.dtype.itemsize == 2:
      import ml_dtypes  # a jax dependency
      arrays[key] = value.view(ml_dtypes.bfloat16).astype(np.float32)
  return arrays


def strip_prefix(arrays: Mapping[str, np.ndarray], prefix: str | None = None) -> dict[str, np.ndarray]:
  """Removes the prefix in front of "embedding/kernel" (given, or one of params/, params/img/, ...)."""
  prefix = find_prefix(arrays, prefix)
  return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}


def find_prefix(arrays: Mapping[str, np.ndarray], prefix: str | None = None) -> str:
  """The prefix in front of "embedding/kernel": `prefix` if given, else found (one of params/, params/img/, ...)."""
  if prefix is None:
    found = [p for p in _PREFIXES if f"{p}embedding/kernel" in arrays]
    if not found:
      found = [k[: -len("embedding/kernel")] for k in arrays if k.endswith("/embedding/kernel")]
    if len(found) != 1:
      raise ValueError(f"load_npz: cannot find the ViT in this .npz: expected one '<prefix>embedding/kernel' key, "
                       f"found prefixes {found}; pass prefix=... (keys start {sorted(arrays)[:6]})")
    prefix = found[0]
  return prefix


def _refuse_unsupported(w: Mapping[str, np.ndarray], model: ViT) -> None:
  """Raises for checkpoints tokax's ViT would compute differently."""
  problems = []
  if any(k.startswith(("conv_root/", "block1/")) for k in w):
    problems.append("a hybrid ResNet stem (R50+ViT): tokax has a conv patch embedding only")
  if any(k.startswith("MAPHead_0/") for k in w):
    problems.append("attention pooling (pool_type='map', MAPHead_0)")
  if "cls" not in w and "MAPHead_0/probe" not in w:
    problems.append("no class token (pool_type='gap' or '0'): big_vision applies encoder_norm to every token, "
                    "then averages; tokax's pool='gap' averages, then applies fc_norm, a different function")
  if np.size(w.get("pre_logits/kernel", np.zeros(0))):
    problems.append("a pre_logits layer (representation_size / rep_size): tokax has no pre-logits Dense+tanh")
  if not any(k in w for k in _POS_KEYS):
    problems.append("no stored position embedding (posemb='sincos2d' or none)")
  if model.pool != "cls" or not model.class_token or model.distilled:
    problems.append(f"the model has pool={model.pool!r}, class_token={model.class_token}, "
                    f"distilled={model.distilled}; these checkpoints need ViT(pool='cls', class_token=True, "
                    "distilled=False)")
  if problems:
    raise ValueError("load_npz: this checkpoint cannot be loaded into tokax's ViT:\n  - " + "\n  - ".join(problems))


def _blocks(w: Mapping[str, np.ndarray]) -> tuple[list[dict[str, np.ndarray]], str]:
  """Per-block {relative key: array}, unstacking the scanned layout; and the naming used."""
  scanned = {k[len("Transformer/encoderblock/"):]: v for k, v in w.items()
             if k.startswith("Transformer/encoderblock/")}
  if scanned:
    depth = {v.shape[0] for v in scanned.values()}
    if len(depth) != 1:
      raise ValueError(f"load_npz: scanned Transformer/encoderblock arrays disagree on depth: {sorted(depth)}")
    blocks = [{k: v[i] for k, v in scanned.items()} for i in range(depth.pop())]
  else:
    blocks = []
    while any(k.startswith(f"Transformer/encoderblock_{len(blocks)}/") for k in w):
      head = f"Transformer/encoderblock_{len(blocks)}/"
      blocks.append({k[len(head):]: v for k, v in w.items() if k.startswith(head)})
  if not blocks:
    raise ValueError("load_npz: no Transformer/encoderblock_{i} or scanned Transformer/encoderblock keys")
  naming = "big_vision" if "MultiHeadDotProductAttention_0/query/kernel" in blocks[0] else "vision_transformer"
  return blocks, naming


def _block_keys(naming: str) -> tuple[str, ...]:
  """The keys of one encoder block that _block_params reads."""
  attn_n, ln_n, mlp_n = _NAMINGS[naming]
  mha = f"MultiHeadDotProductAttention_{attn_n}"
  return (*(f"LayerNorm_{n}/{p}" for n in (0, ln_n) for p in ("scale", "bias")),
          *(f"{mha}/{n}/{p}" for n in ("query", "key", "value", "out") for p in ("kernel", "bias")),
          *(f"MlpBlock_{mlp_n}/Dense_{d}/{p}" for d in (0, 1) for p in ("kernel", "bias")))


def unknown_keys(w: Mapping[str, np.ndarray], num_blocks: int, naming: str) -> list[str]:
  """The keys of `w` (prefix stripped) that convert_npz does not read, sorted."""
  pos = next(k for k in _POS_KEYS if k in w)
  read = {"embedding/kernel", "embedding/bias", "cls", pos, "Transformer/encoder_norm/scale",
          "Transformer/encoder_norm/bias", "head/kernel", "head/bias"}
  read |= {k for k in ("pre_logits/kernel", "pre_logits/bias") if k in w and not np.size(w[k])}
  scanned = any(k.startswith("Transformer/encoderblock/") for k in w)
  heads = ["Transformer/encoderblock/"] if scanned else [f"Transformer/encoderblock_{i}/" for i in range(num_blocks)]
  read |= {head + key for head in heads for key in _block_keys(naming)}
  return sorted(set(w) - read)


def _block_params(b: Mapping[str, np.ndarray], naming: str, num_heads: int, i: int) -> dict[str, Any]:
  """One encoder block -> tokax Block params; per-head q/k/v fused into qkv (D, 3 * H * Dh)."""
  attn_n, ln_n, mlp_n = _NAMINGS[naming]
  mha = f"MultiHeadDotProductAttention_{attn_n}"
  try:
    q = b[f"{mha}/query/kernel"]
    heads = q.shape[1]
    if heads != num_heads:
      raise ValueError(f"load_npz: block {i} has {heads} attention heads (query kernel {q.shape}), "
                       f"the model {num_heads}: set ViT.variant to a size with {heads} heads")
    kernels = [b[f"{mha}/{n}/kernel"] for n in ("query", "key", "value")]
    biases = [b[f"{mha}/{n}/bias"] for n in ("query", "key", "value")]
    out = b[f"{mha}/out/kernel"]
    return {
        "norm1": {"scale": b["LayerNorm_0/scale"], "bias": b["LayerNorm_0/bias"]},
        "attn": {
            "qkv": {"kernel": np.concatenate([k.reshape(k.shape[0], -1) for k in kernels], axis=1),
                    "bias": np.concatenate([x.reshape(-1) for x in biases])},
            "proj": {"kernel": out.reshape(-1, out.shape[-1]), "bias": b[f"{mha}/out/bias"]},
        },
        "norm2": {"scale": b[f"LayerNorm_{ln_n}/scale"], "bias": b[f"LayerNorm_{ln_n}/bias"]},
        "mlp_fc1": {"kernel": b[f"MlpBlock_{mlp_n}/Dense_0/kernel"], "bias": b[f"MlpBlock_{mlp_n}/Dense_0/bias"]},
        "mlp_fc2": {"kernel": b[f"MlpBlock_{mlp_n}/Dense_1/kernel"], "bias": b[f"MlpBlock_{mlp_n}/Dense_1/bias"]},
    }
  except KeyError as err:
    raise ValueError(f"load_npz: encoder block {i} ({naming} naming) lacks {err.args[0]!r}; "
                     f"it has {sorted(b)}") from None


def convert_npz(arrays: Mapping[str, np.ndarray], model: ViT, prefix: str | None = None, *,
                allow_unknown: bool = False) -> Params:
  """big_vision / vision_transformer arrays (flat "/" keys) -> unvalidated tokax params for `model`.

  Raises UnknownKeysError for arrays under the prefix that are not read, unless allow_unknown.
  """
  prefix = find_prefix(arrays, prefix)
  w = strip_prefix(arrays, prefix)
  _refuse_unsupported(w, model)
  blocks, naming = _blocks(w)
  unknown = unknown_keys(w, len(blocks), naming)
  if unknown and not allow_unknown:
    shown = [prefix + k for k in unknown[:_SHOWN]]
    more = f" and {len(unknown) - _SHOWN} more" if len(unknown) > _SHOWN else ""
    raise UnknownKeysError(
        f"load_npz: {len(unknown)} arrays of this checkpoint are not read into tokax's ViT and would be dropped: "
        f"{shown}{more}; they may hold weights the model's function needs (an extra layer, a naming tokax does "
        "not know); pass allow_unknown=True to load the rest without them")
  pos = next(w[k] for k in _POS_KEYS if k in w)
  params: dict[str, Any] = {
      "patch_embed": {"kernel": w["embedding/kernel"], "bias": w["embedding/bias"]},
      "cls_token": w["cls"],
      "pos_embed": pos.reshape(1, -1, pos.shape[-1]),
      "norm": {"scale": w["Transformer/encoder_norm/scale"], "bias": w["Transformer/encoder_norm/bias"]},
  }
  for i, block in enumerate(blocks):
    params[f"blocks_{i}"] = _block_params(block, naming, model.arch.num_heads, i)
  if "head/kernel" in w and np.size(w["head/kernel"]):
    params["head"] = {"kernel": w["head/kernel"], "bias": w["head/bias"]}
  return {"params": params}


def load_npz(path: str | os.PathLike, model: ViT, *, prefix: str | None = None, allow_unknown: bool = False
             ) -> Params:
  """Params for `model` from a big_vision / AugReg .npz ViT checkpoint, validated against it.

  path: the .npz file (np.savez of the flattened param tree, "/"-joined keys).
  model: a ViT with pool="cls", class_token=True and the checkpoint's variant, image_size and
    num_classes (num_classes=0 drops the head, e.g. for an ImageNet-21k checkpoint as a backbone).
  prefix: key prefix in front of the ViT's params; found automatically when None.
  allow_unknown: load a checkpoint with arrays under the prefix that tokax's ViT does not read (dropped).
  Returns {"params": ...} numpy arrays in the model's param dtype.

  Raises:
    ValueError: an unsupported checkpoint (see the module docstring) or one that does not fit the
      model: the message names the parameter, both shapes and the ViT field to change.
    UnknownKeysError (a ValueError): arrays under the prefix that are not read, listed (unless allow_unknown).
  """
  try:
    return check_params(convert_npz(read_npz(path), model, prefix, allow_unknown=allow_unknown), model)
  except UnknownKeysError as e:
    raise UnknownKeysError(str(e).replace("load_npz: ", f"load_npz: {os.fspath(path)}: ", 1)) from None
