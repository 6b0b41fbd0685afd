"""Trained models that ship inside the package: `model, variables = tokax.pretrained.load("glyphs_vit_ti16_112")`.

Each model is two files in this folder: NAME.safetensors (bfloat16 parameters in timm's layout, read
by tokax.interop.load_checkpoint) and NAME.json, which records how it was made and what it scored:

  model      the ViT fields (ViT(**model), num_classes included)
  data       the dataset it was trained on (name, image size) and its input range
  metrics    test accuracy and the number of test images it was measured on
  command    the command that trained it, commit the commit it ran at, card the accelerator
  sha256     of NAME.safetensors, checked at load: a truncated or altered file is an error

  model, variables = tokax.pretrained.load("glyphs_vit_ti16_112", reduction="tome:8")
  logits = model.apply(variables, images * 2 - 1)     # images (B, 112, 112, 3) in [0, 1]

tokax.create_model(name, pretrained=True) takes these names too, beside timm's.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from typing import Any

import jax.numpy as jnp

from tokax import reduction as reduction_lib
from tokax.interop import load_checkpoint
from tokax.models.vit import ViT

DIRECTORY = os.path.dirname(os.path.abspath(__file__))
_DTYPE_FIELDS = ("dtype", "param_dtype")


def available(directory: str = DIRECTORY) -> tuple[str, ...]:
  """The names of the models in `directory` (NAME.json beside NAME.safetensors; default: the shipped ones)."""
  names = sorted(f[:-len(".json")] for f in os.listdir(directory) if f.endswith(".json"))
  return tuple(n for n in names if os.path.isfile(os.path.join(directory, n + ".safetensors")))


def info(name: str, directory: str = DIRECTORY) -> dict[str, Any]:
  """NAME.json: the model's fields, data, metrics, command, commit, card and the weights' sha256."""
  if name not in available(directory):
    raise ValueError(f"tokax.pretrained: no model {name!r} in {directory}; there are {list(available(directory))}")
  with open(os.path.join(directory, name + ".json"), encoding="utf-8") as f:
    return json.load(f)


@functools.lru_cache(maxsize=8)
def _sha256(path: str, size: int, mtime: float) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def weights_path(name: str, directory: str = DIRECTORY) -> str:
  """NAME.safetensors, after checking its sha256 against NAME.json (ValueError naming the file if it differs)."""
  expected = info(name, directory)["sha256"]
  path = os.path.join(directory, name + ".safetensors")
  stat = os.stat(path)
  got = _sha256(path, stat.st_size, stat.st_mtime)
  if got != expected:
    raise ValueError(f"tokax.pretrained: {path} ({stat.st_size} bytes) is damaged or truncated: its sha256 is {got}, "
                     f"{name}.json records {expected}; reinstall tokax")
  return path


def build(name: str, *, reduction: Any = None, directory: str = DIRECTORY, **overrides: Any) -> ViT:
  """The ViT of shipped model `name` (no weights), with a tokax.reduction.build spec and field overrides."""
  fields = {**info(name, directory)["model"], **overrides}
  fields = {k: jnp.dtype(v) if k in _DTYPE_FIELDS and isinstance(v, str) else v for k, v in fields.items()}
  return ViT(**fields, reduction=reduction_lib.build(reduction))


def load(name: str, *, reduction: Any = None, directory: str = DIRECTORY,
         **overrides: Any) -> tuple[ViT, dict[str, Any]]:
  """(model, variables) of shipped model `name`; variables in float32 ({"params": ...}).

  Args:
    name: one of available().
    reduction: a tokax.reduction.build spec ("tome:8", dict(name="evit", keep_rate=0.7), ...) or None.
    directory: where NAME.json and NAME.safetensors are (default: the models that ship with tokax).
    **overrides: ViT fields to change (dtype, attention, ...); architecture fields must keep the
      weights' shapes (load_checkpoint says which field does not fit).
  """
  model = build(name, reduction=reduction, directory=directory, **overrides)
  return model, load_checkpoint(weights_path(name, directory), model)
