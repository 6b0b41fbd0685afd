"""Fit a converted checkpoint to a tokax ViT: shared by every loader in tokax.interop.

Loaders turn a foreign checkpoint into a {"params": ...} tree with tokax's names; `check_params`
then compares it against the parameter shapes of the model (jax.eval_shape of model.init, no
FLOPs) and fails at once, naming each parameter, both shapes and the ViT field to change.
"""
from __future__ import annotations

import math
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from tokax.models.vit import _WIDTHS, ViT

Params = dict[str, Any]
Path = tuple[str, ...]
_HEADS = ("head", "head_dist")


def flatten(tree: Mapping[str, Any], prefix: Path = ()) -> dict[Path, Any]:
  """{"a": {"b": x}} -> {("a", "b"): x}."""
  out: dict[Path, Any] = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      out.update(flatten(value, prefix + (key,)))
    else:
      out[prefix + (key,)] = value
  return out


def unflatten(flat: Mapping[Path, Any]) -> dict[str, Any]:
  """{("a", "b"): x} -> {"a": {"b": x}}."""
  tree: dict[str, Any] = {}
  for path, value in flat.items():
    node = tree
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = value
  return tree


def model_shapes(model: ViT) -> dict[Path, jax.ShapeDtypeStruct]:
  """Parameter shapes and dtypes of `model` at its image_size, without allocating them."""
  images = jax.ShapeDtypeStruct((1, model.image_size, model.image_size, 3), jnp.float32)
  abstract = jax.eval_shape(model.init, jax.random.key(0), images)
  return flatten(abstract["params"])


def _num_patches(model: ViT) -> int:
  return (model.image_size // model.arch.patch_size) ** 2


def pad_prefix_positions(flat: dict[Path, Any], model: ViT) -> dict[Path, Any]:
  """Give the class/distillation tokens zero position embeddings when the checkpoint has none.

  timm's no_embed_class models (DeiT-III) and big_vision add the position embedding to the patch
  tokens only, then prepend the prefix tokens; tokax adds one (1, prefix + N, C) table after
  prepending. A zero row per prefix token is the exact equivalent.
  """
  pos = flat.get(("pos_embed",))
  prefix = int(model.class_token) + int(model.distilled)
  if pos is None or not prefix or np.ndim(pos) != 3 or pos.shape[1] != _num_patches(model):
    return flat
  pos = np.asarray(pos)
  zeros = np.zeros((pos.shape[0], prefix, pos.shape[2]), pos.dtype)
  return {**flat, ("pos_embed",): np.concatenate([zeros, pos], axis=1)}


def _guess_variant(flat: Mapping[Path, Any]) -> str | None:
  """Reads '<size>/<patch>' off a checkpoint's shapes (width, depth, mlp_dim, patch), if known."""
  kernel = flat.get(("patch_embed", "kernel"))
  fc1 = flat.get(("blocks_0", "mlp_fc1", "kernel"))
  if kernel is None or fc1 is None or np.ndim(kernel) != 4:
    return None
  depth = len({p[0] for p in flat if p[0].startswith("blocks_")})
  for name, (width, layers, _, mlp_dim) in _WIDTHS.items():
    if (width, layers, mlp_dim) == (kernel.shape[3], depth, fc1.shape[1]):
      return f"{name}/{kernel.shape[0]}"
  return None


def _pos_hint(shape: tuple[int, ...], model: ViT) -> str:
  """Which image_size / prefix tokens a (1, n, C) position table is for."""
  n, prefix, p = shape[1], int(model.class_token) + int(model.distilled), model.arch.patch_size
  for k in dict.fromkeys((prefix, 0, 1, 2)):
    grid = math.isqrt(max(n - k, 0))
    if grid * grid == n - k and grid:
      if grid * p != model.image_size:
        return f"set ViT(image_size={grid * p}) (a {grid}x{grid} grid of {p}px patches)"
      return (f"the checkpoint has {k} prefix token position(s), the model {prefix}: "
              f"check ViT.class_token / ViT.distilled")
  return "check ViT.image_size, ViT.class_token and ViT.distilled"


def _hint(path: Path, kind: str, got: tuple[int, ...] | None, expected: tuple[int, ...] | None,
          model: ViT, variant: str | None) -> str:
  """The ViT field to change for one mismatching parameter; kind is missing|unexpected|shape."""
  top = path[0]
  if kind == "shape":
    if top in _HEADS and got[-1] != expected[-1]:
      return f"set ViT(num_classes={got[-1]})"
    if top == "pos_embed" and got[1] != expected[1]:
      return _pos_hint(got, model)
  elif top in _HEADS:
    if top == "head_dist":
      return f"set ViT(distilled={kind == 'unexpected'})"
    return "the checkpoint has no classifier: set ViT(num_classes=0)" if kind == "missing" else ""
  elif top == "cls_token":
    return "set ViT(class_token=True)" if kind == "unexpected" else "set ViT(class_token=False, pool='gap')"
  elif top == "dist_token":
    return f"set ViT(distilled={kind == 'unexpected'})"
  elif top == "norm":
    return "set ViT(pool='cls')" if kind == "unexpected" else "the checkpoint pools with fc_norm: set ViT(pool='gap')"
  elif top == "fc_norm":
    return "set ViT(pool='gap')" if kind == "unexpected" else "the checkpoint has no fc_norm: set ViT(pool='cls')"
  elif path[1:2] in (("ls1",), ("ls2",)):
    return ("set ViT(layer_scale=1e-5) (any value: the gammas come from the checkpoint)"
            if kind == "unexpected" else "set ViT(layer_scale=None)")
  elif path[1:] == ("attn", "qkv", "bias"):
    return f"set ViT(qkv_bias={kind == 'unexpected'})"
  if variant and variant != model.variant:
    return f"set ViT(variant={variant!r})"
  return f"check ViT.variant (model {model.variant!r}: width, depth, heads, mlp_dim or patch size)"


def _grouped(lines: list[tuple[Path, str, str]]) -> list[str]:
  """(path, before, after) -> "before<path>after" lines; a line that reads the same for several
  blocks is written once as blocks_{0..11}/...; top-level parameters come first."""
  groups: dict[tuple[str, str, str], list[int]] = {}
  for path, before, after in lines:
    block = re.fullmatch(r"blocks_(\d+)", path[0])
    rest = "/".join(path[1:] if block else path)
    groups.setdefault((before, rest if not block else "/" + rest, after), []).append(int(block[1]) if block else -1)
  out = []
  for (before, rest, after), layers in sorted(groups.items(), key=lambda kv: (kv[1][0] >= 0, min(kv[1]))):
    if layers[0] < 0:
      out.append(f"{before}{rest}{after}")
      continue
    layers = sorted(layers)
    contiguous = layers == list(range(layers[0], layers[-1] + 1))
    where = (f"blocks_{layers[0]}" if len(layers) == 1 else
             f"blocks_{{{layers[0]}..{layers[-1]}}}" if contiguous else f"blocks_{layers}")
    out.append(f"{before}{where}{rest}{after}")
  return out


def check_params(params: Mapping[str, Any], model: ViT) -> Params:
  """Validates converted parameters against `model` and returns them fitted to it.

  params: {"params": {...}} (or the bare inner tree) with tokax names, numpy/jax leaves.
  Returns {"params": {...}} of numpy arrays cast to the model's param dtypes, after two exact
  normalisations: zero position embeddings for prefix tokens the checkpoint gives none
  (pad_prefix_positions), and the classifier dropped when model.num_classes == 0 (features).

  Raises:
    ValueError: listing every missing, unexpected or mis-shaped parameter with the checkpoint's
      and the model's shapes and the ViT field to change.
  """
  flat = flatten(params.get("params", params))
  want = model_shapes(model)
  if not model.num_classes:
    flat = {p: v for p, v in flat.items() if p[0] not in _HEADS}
  flat = pad_prefix_positions(flat, model)
  variant = _guess_variant(flat)
  lines: list[tuple[Path, str, str]] = []
  for path in sorted(want.keys() - flat.keys()):
    lines.append((path, "missing ", f" (model shape {tuple(want[path].shape)}): "
                  f"{_hint(path, 'missing', None, None, model, variant)}"))
  for path in sorted(flat.keys() - want.keys()):
    lines.append((path, "unexpected ", f" (checkpoint shape {tuple(np.shape(flat[path]))}): "
                  f"{_hint(path, 'unexpected', None, None, model, variant)}"))
  for path in sorted(want.keys() & flat.keys()):
    got, expected = tuple(np.shape(flat[path])), tuple(want[path].shape)
    if got != expected:
      lines.append((path, "", f": checkpoint shape {got}, model shape {expected}: "
                    f"{_hint(path, 'shape', got, expected, model, variant)}"))
  if lines:
    problems = _grouped(lines)
    if variant and variant != model.variant:
      problems.insert(0, f"the checkpoint's shapes are those of variant {variant!r}: set ViT(variant={variant!r})")
    shown = "\n  ".join(problems[:12]) + (f"\n  ... and {len(problems) - 12} more" if len(problems) > 12 else "")
    raise ValueError(
        f"checkpoint does not fit ViT(variant={model.variant!r}, num_classes={model.num_classes}, "
        f"image_size={model.image_size}, pool={model.pool!r}, class_token={model.class_token}, "
        f"distilled={model.distilled}, qkv_bias={model.qkv_bias}, layer_scale={model.layer_scale}):\n  {shown}")
  return {"params": unflatten({p: np.asarray(v, dtype=want[p].dtype) for p, v in flat.items()})}
