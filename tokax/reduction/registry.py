"""The one registry of reduction methods: METHODS (name -> class) and build(spec).

    build(None) / build("none")                  -> None (the dense model)
    build("tome:16")                             -> ToMe(r=16)          ("name:<strength>")
    build("tome:16,-1")                          -> ToMe(r=(16, -1))    (several values: a tuple)
    build("evit:0.7,fuse_token=False")           -> EViT(keep_rate=0.7, fuse_token=False)
    build(dict(name="mctf", r=8, activate_layers=(1, 2)))  (a dict or an ml_collections ConfigDict)

The short form's value sets the class's `strength_field`; `key=value` parts set other fields (Python
literals). Unknown names, unknown fields and out-of-range values raise ValueError naming them.
Methods with `needs_calibration` (dtome) build their calibration spec; see calibrate_dtome.

Adding a method: one file with a frozen dataclass that follows tokax.reduction.base, plus one line
in METHODS below (docs/adding_a_method.md); the trainer, the sweep, the throughput benchmark and
tests/reduction/test_zoo.py pick it up from here.
"""
from __future__ import annotations

import ast
import dataclasses
import types
from typing import Any, Mapping, Union

from tokax.reduction.dct import DCT
from tokax.reduction.divprune import DivPrune, ToDRE
from tokax.reduction.dtome import DToMeCalibration
from tokax.reduction.evit import EViT
from tokax.reduction.fastervlm import FasterVLM
from tokax.reduction.mctf import MCTF
from tokax.reduction.pitome import PiToMe
from tokax.reduction.random_select import RandomSelect
from tokax.reduction.slim import Slim
from tokax.reduction.tome import ToMe

METHODS: Mapping[str, type] = types.MappingProxyType({
    "tome": ToMe,
    "pitome": PiToMe,
    "evit": EViT,
    "mctf": MCTF,
    "dtome": DToMeCalibration,
    "slim": Slim,
    "divprune": DivPrune,
    "todre": ToDRE,
    "dct": DCT,
    "fastervlm": FasterVLM,
    "random": RandomSelect,
})

NONE = ("none", "")
Spec = Union[None, str, Mapping[str, Any]]


def fields_of(cls: type) -> tuple[str, ...]:
  """The fields a spec may set for method class `cls` (its dataclass init fields)."""
  return tuple(f.name for f in dataclasses.fields(cls) if f.init)


def _split_top_level(text: str) -> list[str]:
  """"16,layers=(1, 2)" -> ["16", "layers=(1, 2)"]: commas inside brackets do not split."""
  parts, depth, start = [], 0, 0
  for i, ch in enumerate(text):
    depth += ch in "([{"
    depth -= ch in ")]}"
    if ch == "," and depth == 0:
      parts.append(text[start:i])
      start = i + 1
  parts.append(text[start:])
  return [p.strip() for p in parts]


def _literal(text: str) -> Any:
  """A Python literal ("16", "0.7", "(1, 2)", "False"), else the string itself ("max_sum")."""
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def parse(spec: str) -> dict[str, Any]:
  """A short spec as a dict: "tome:16,-1" -> {"name": "tome", "r": (16, -1)}; "none" -> {"name": "none"}."""
  name, _, rest = spec.strip().partition(":")
  name = name.strip()
  out: dict[str, Any] = {"name": name}
  if not rest.strip():
    return out
  if name in NONE:
    raise ValueError(f"reduction {spec!r}: 'none' takes no value")
  cls = method_class(name)
  values = []
  for part in _split_top_level(rest):
    if not part:
      raise ValueError(f"reduction {spec!r}: empty value; expected 'name:<{cls.strength_field}>[,field=value...]'")
    key, eq, value = part.partition("=")
    if eq:
      out[key.strip()] = _literal(value.strip())
    elif len(out) > 1:
      raise ValueError(f"reduction {spec!r}: positional values (the {cls.strength_field}) must come before "
                       "field=value parts")
    else:
      values.append(_literal(part))
  if values:
    out[cls.strength_field] = values[0] if len(values) == 1 else tuple(values)
  return out


def method_class(name: str) -> type:
  """METHODS[name], or a ValueError that lists the registered names."""
  if name not in METHODS:
    raise ValueError(f"reduction: unknown method {name!r}; expected 'none' or one of {sorted(METHODS)}")
  return METHODS[name]


def build(spec: Spec, *, calibration: bool = True) -> Any:
  """The reduction method described by `spec`, or None for the dense model.

  Args:
    spec: None, "none", a short string "name[:strength][,field=value...]" or a mapping with "name"
      and the method's fields (an ml_collections ConfigDict is converted with to_dict). A method
      instance (anything with a `placement`) is returned as it is.
    calibration: whether a method that needs calibration (`needs_calibration`, e.g. "dtome") may be
      returned as its calibration spec; False raises instead (the trainer: calibration needs a
      trained model, and training with the calibration's batch-level merge would make the model's
      outputs depend on the batch).

  Returns:
    an instance of METHODS[name] (a frozen dataclass: placement, scores, token counts; see
    tokax.reduction.base), or None.
  """
  if spec is None:
    return None
  if hasattr(spec, "placement") and not isinstance(spec, (str, Mapping)) and not hasattr(spec, "to_dict"):
    return spec
  if isinstance(spec, str):
    fields = parse(spec)
  elif hasattr(spec, "to_dict"):
    fields = dict(spec.to_dict())
  elif isinstance(spec, Mapping):
    fields = dict(spec)
  else:
    raise ValueError(f"reduction: expected None, 'none', a string like 'tome:16' or a dict(name=..., ...); "
                     f"got {spec!r}")
  if "name" not in fields:
    raise ValueError(f"reduction: the spec {fields!r} has no 'name'; expected one of {sorted(METHODS)} or 'none'")
  name = fields.pop("name")
  if name in NONE:
    if fields:
      raise ValueError(f"reduction: 'none' (the dense model) takes no fields; got {sorted(fields)}")
    return None
  cls = method_class(name)
  known = fields_of(cls)
  unknown = sorted(set(fields) - set(known))
  if unknown:
    raise ValueError(f"reduction {name!r}: unknown fields {unknown}; {cls.__name__} has fields {list(known)}")
  if cls.needs_calibration and not calibration:
    raise ValueError(f"reduction {name!r} needs calibration ({cls.__name__} -> tokax.reduction.calibrate_dtome on "
                     "a trained model) and cannot be trained from a config; train dense (or with another method) "
                     "and calibrate afterwards, or pass a calibrated DToMe(thresholds=...) to the model in code")
  try:
    return cls(**fields)
  except TypeError as e:
    raise ValueError(f"reduction {name!r}: {e}; {cls.__name__} has fields {list(known)}") from e
