"""tokax.create_model: a ViT and its variables from a timm name or a shipped model's name, as timm.create_model.

  model, variables = tokax.create_model("vit_base_patch16_224.augreg2_in21k_ft_in1k", pretrained=True,
                                        reduction="tome:16")
  logits = model.apply(variables, images)       # images (B, 224, 224, 3), normalised as the weights expect

Names: the timm ViT / DeiT architectures tokax builds without timm (vit_*, deit_*, deit3_*; with a
weights tag or without: timm's default tag), and the models that ship with tokax (tokax.pretrained).
`tokax.list_models()` lists them, `tokax.list_models("deit*", pretrained=True)` the tags with weights.

timm weights come from the Hugging Face hub (`timm/<arch>.<tag>`, model.safetensors) through
huggingface_hub (`pip install 'tokax[hub]'`), or from its local cache when offline (tokax.interop.hub).
"""
from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from tokax import pretrained as shipped
from tokax import reduction as reduction_lib
from tokax.interop import hub, timm_names
from tokax.interop.common import check_params
from tokax.interop.timm import convert_state_dict, read_state_dict
from tokax.models.vit import ViT

_HEADS = ("head", "head_dist")
_NOT_FIELDS = ("parent", "name", "reduction", "num_classes")  # flax Module fields, create_model arguments


def list_models(pattern: str = "*", pretrained: bool = False) -> list[str]:
  """The names create_model takes that match the fnmatch `pattern`, sorted (as timm.list_models).

  pretrained=False: the timm architectures and the shipped models; pretrained=True: every timm
  "<arch>.<tag>" with weights on the hub, and the shipped models.
  """
  ours = [n for n in shipped.available() if fnmatch.fnmatchcase(n, pattern)]
  return sorted(timm_names.timm_names(pattern, pretrained) + ours)


def _unknown_name(name: str) -> ValueError:
  known = timm_names.timm_names() + list(shipped.available())
  close = difflib.get_close_matches(timm_names.split_tag(name)[0], known, n=3, cutoff=0.6)
  return ValueError(
      f"create_model: unknown model {name!r}"
      f"{' (did you mean ' + ' or '.join(map(repr, close)) + '?)' if close else ''}; tokax builds the timm ViT / DeiT "
      "architectures vit_<size>_patch<p>_<image>, deit_<size>[_distilled]_patch16_<image> and "
      "deit3_<size>_patch<p>_<image> (with or without a weights tag) and the models that ship with tokax "
      f"({', '.join(shipped.available())}): tokax.list_models() lists them, tokax.list_models(pretrained=True) the "
      "timm tags with weights. Another timm ViT that tokax's ViT computes: "
      "tokax.interop.from_timm(timm.create_model(name, pretrained=True))")


def _check_overrides(overrides: dict[str, Any]) -> None:
  fields = {f.name for f in dataclasses.fields(ViT)} - set(_NOT_FIELDS)
  unknown = sorted(set(overrides) - fields)
  if unknown:
    raise ValueError(f"create_model: {', '.join(map(repr, unknown))}: not a ViT field; the keyword arguments after "
                     f"cache_dir and rng set ViT fields: {', '.join(sorted(fields))}")


def _head_classes(state_dict: dict[str, Any]) -> int:
  return int(np.shape(state_dict["head.weight"])[0]) if "head.weight" in state_dict else 0


def _fresh_heads(params: dict[str, Any], model: ViT) -> dict[str, Any]:
  """params with the classifier(s) replaced by the model's own init for model.num_classes (zeros, as tokax's ViT)."""
  tree = {k: v for k, v in params["params"].items() if k not in _HEADS}
  width, dtype = model.arch.width, jnp.dtype(model.param_dtype)
  for head in _HEADS[:1 + int(model.distilled)]:
    tree[head] = {"kernel": np.zeros((width, model.num_classes), dtype), "bias": np.zeros((model.num_classes,), dtype)}
  return {"params": tree}


def _fit(state_dict: dict[str, Any], model: ViT, what: str, path: str) -> dict[str, Any]:
  """The checkpoint's params for `model`, its classifier reset when the model's class count differs (not 0)."""
  params = convert_state_dict(state_dict)
  classes = _head_classes(state_dict)
  if model.num_classes and model.num_classes != classes:
    logging.info("%s: the checkpoint's classifier has %d classes, the model %d: the head starts from zeros",
                 what, classes, model.num_classes)
    params = _fresh_heads(params, model)
  try:
    return check_params(params, model)
  except ValueError as err:
    raise ValueError(f"{what}: the weights in {path} do not fit the model built with these overrides: {err}") from None


def _init(model: ViT, rng: jax.Array | None) -> dict[str, Any]:
  images = jnp.zeros((1, model.image_size, model.image_size, 3), jnp.float32)
  return jax.jit(model.init)(jax.random.key(0) if rng is None else rng, images)


def create_model(name: str, pretrained: bool = False, reduction: Any = None, num_classes: int | None = None,
                 cache_dir: str | os.PathLike | None = None, *, rng: jax.Array | None = None,
                 **overrides: Any) -> tuple[ViT, dict[str, Any]]:
  """(model, variables): the tokax ViT of `name` and its {"params": ...}, as timm.create_model builds it.

  Args:
    name: a timm name, "vit_base_patch16_224" or with a weights tag "vit_base_patch16_224.augreg2_in21k_ft_in1k"
      (no tag: timm's default), or a model that ships with tokax ("glyphs_vit_ti16_112"); list_models().
    pretrained: load the weights (timm names: from the Hugging Face hub or its cache; shipped models: from the
      package). False: the model's own init from `rng` (default jax.random.key(0)).
    reduction: a tokax.reduction.build spec ("tome:16", dict(name="evit", keep_rate=0.7)), a method object, or
      None for the dense model.
    num_classes: None keeps the weights' classes (timm: the tag's). 0 drops the classifier: the model returns
      the pooled features. Another count resets the classifier as timm does: the checkpoint's head is
      dropped and the new one starts from the model's init (zeros in tokax, as big_vision), the rest loads.
    cache_dir: the Hugging Face hub cache (default $HF_HUB_CACHE, else ~/.cache/huggingface/hub); timm names only.
    rng: the init key when pretrained=False.
    **overrides: ViT fields (dtype, attention, drop_path, ...). With weights, fields that change parameter
      shapes (image_size, variant) fail naming the parameters: tokax does not resample position embeddings.

  timm weights expect images normalised with their tag's mean / std (vit_ AugReg: 0.5, deit_ / dino / mae:
  ImageNet's): tokax.interop.timm_names.parse_timm_name(name)[1]; shipped models take [-1, 1].

  Raises:
    ValueError: an unknown name or tag, an override that is no ViT field, weights that do not fit the
      overrides, or pretrained=True offline with nothing in the cache (the message says where it looked and
      how to fetch the file).
    ImportError: pretrained=True for a timm name without huggingface_hub (pip install 'tokax[hub]').
  """
  _check_overrides(overrides)
  if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0):
    raise ValueError(f"create_model: num_classes must be an int >= 0 (0: features) or None; got {num_classes!r}")
  method = reduction_lib.build(reduction)
  what = f"create_model({name!r}{', pretrained=True' if pretrained else ''})"
  if name in shipped.available():
    model = shipped.build(name, reduction=method,
                          **(overrides if num_classes is None else {**overrides, "num_classes": num_classes}))
    if not pretrained:
      return model, _init(model, rng)
    path = shipped.weights_path(name)
    return model, jax.device_put(_fit(read_state_dict(path), model, what, path))
  if not timm_names.is_timm_name(name):
    raise _unknown_name(name)
  try:
    kwargs, _ = timm_names.parse_timm_name(name)
    repo = timm_names.hub_repo(name) if pretrained else None
  except ValueError as err:
    raise ValueError(f"{what}: {err}") from None
  state_dict = path = None
  if pretrained:
    try:
      path = hub.hub_file(repo, "model.safetensors", cache_dir=cache_dir)
    except ValueError as err:
      raise ValueError(f"{what}: {err}") from None
    state_dict = read_state_dict(path)
  if num_classes is None:  # the weights', else the tag's (timm's pretrained_cfg)
    num_classes = kwargs["num_classes"] if state_dict is None else _head_classes(state_dict)
  model = ViT(**{**kwargs, **overrides, "num_classes": num_classes, "reduction": method})
  if state_dict is None:
    return model, _init(model, rng)
  return model, jax.device_put(_fit(state_dict, model, what, path))
