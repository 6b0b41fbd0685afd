"""timm's RandAugment (DeiT's `--aa rand-m9-mstd0.5-inc1`) as explicit draws plus PIL image ops.

  config = parse_config("rand-m9-mstd0.5-inc1", interpolation="bicubic")
  layers = draw_layers(config, rng)                  # what timm leaves to `random` / `np.random`
  image = apply_layers(image, layers, config)        # (H, W, 3) uint8 -> (H, W, 3) uint8

In a preprocess string: `rand_augment("rand-m9-mstd0.5-inc1")` (tokax.data.transforms), on the uint8
image before normalize. The config string is timm's: "rand", then dash-separated sections in any order:
  m<int>      magnitude (default 10)              n<int>     ops per image (default 2)
  mstd<f>     std of the normal noise on the magnitude, per op (default 0: none; > 100: uniform in [0, m])
  mmax<int>   upper clamp of the noisy magnitude (default 10)
  p<f>        probability that each chosen op is applied (default 0.5)
  inc<0|1>    the increasing-severity op set (default 0)
  t<name>     op set "weights", "3a" or "3aw"; "weights" and "3aw" choose ops by weight, without replacement
Other settings are timm's hparams: `fill` (img_mean, the colour geometric ops bring in; timm's
create_transform passes the ImageNet mean pixel, (124, 116, 104)), `interpolation` ("random": bilinear or
bicubic drawn per op, timm's default; create_transform fixes it to the training interpolation, bicubic in
DeiT) and `translate_pct` (0.45).

Draws, in timm's order: the n op indices, then for each op: applied (u <= p, drawn only when p < 1); if
applied, the magnitude (drawn only when mstd > 0) clamped to [0, mmax], the sign (ops whose argument is
signed: Rotate, Shear*, Translate*, the *Increasing enhancements) and the interpolation (geometric ops with
interpolation "random"). Given the same draws every op equals timm's bit for bit: the enhancements,
AutoContrast, Equalize and the geometric ops are the same PIL calls; the lookup-table ops build their
tables here.

Deliberate differences from timm:
  - Draws come from the example's numpy Generator, not from the `random` and `np.random` globals.
  - A config timm would half-read is an error: a section without a value, an unknown key or `t` name
    (timm skips the former and falls back to the default op set for the latter).
  - Only RandAugment's op sets are here (not AutoAugment policies, AugMix or the absolute translations).
  - Posterize to 0 bits (PosterizeIncreasing at magnitude 10, about 2% of its draws under m9 mstd0.5)
    gives black, as TF's reference and PIL's mask do; Pillow 13's ImageOps.posterize refuses 0 bits, so
    timm itself raises ValueError there.
"""
from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

LEVEL_DENOM = 10.0  # magnitude m maps to the fraction m / 10 of each op's range
IMAGENET_FILL = (124, 116, 104)  # round(255 * IMAGENET_MEAN), timm's img_mean hparam in create_transform

RAND_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color",
            "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
RAND_INCREASING_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing",
                       "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing",
                       "SharpnessIncreasing", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
# The `t` sets: weights relative within a set; a weighted set draws its ops without replacement.
WEIGHTED_OPS: dict[str, dict[str, float]] = {
    "weights": {"Rotate": 3, "ShearX": 2, "ShearY": 2, "TranslateXRel": 1, "TranslateYRel": 1,
                "ColorIncreasing": .25, "SharpnessIncreasing": 0.25, "AutoContrast": 0.25,
                "SolarizeIncreasing": .05, "SolarizeAdd": .05, "ContrastIncreasing": .05,
                "BrightnessIncreasing": .05, "Equalize": .05, "PosterizeIncreasing": 0.05, "Invert": 0.05},
    "3aw": {"SolarizeIncreasing": 6, "Desaturate": 6, "GaussianBlur": 6, "Rotate": 3, "ShearX": 2, "ShearY": 2,
            "PosterizeIncreasing": 1, "AutoContrast": 1, "ColorIncreasing": 1, "SharpnessIncreasing": 1,
            "ContrastIncreasing": 1, "BrightnessIncreasing": 1, "Equalize": 1, "Invert": 1},
}
UNIFORM_SETS = {"3a": ("SolarizeIncreasing", "Desaturate", "GaussianBlur")}

SIGNED_OPS = frozenset({"Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel", "ColorIncreasing",
                        "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing"})
GEOMETRIC_OPS = frozenset({"Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"})
INTERPOLATIONS = ("random", "nearest", "bilinear", "bicubic")
RANDOM_INTERPOLATIONS = ("bilinear", "bicubic")  # index drawn by "random", in timm's order


@dataclasses.dataclass(frozen=True)
class RandAugmentConfig:
  """A parsed config string plus timm's hparams; `weights` is None for a uniform choice with replacement."""
  ops: tuple[str, ...] = RAND_OPS
  weights: tuple[float, ...] | None = None
  num_layers: int = 2
  magnitude: float = 10.0
  magnitude_std: float = 0.0
  magnitude_max: float = LEVEL_DENOM
  prob: float = 0.5
  fill: tuple[int, int, int] = IMAGENET_FILL
  interpolation: str = "random"
  translate_pct: float = 0.45


@dataclasses.dataclass(frozen=True)
class Layer:
  """One chosen op and its draws.

  Attributes:
    op: the op's name, timm's spelling ("Rotate", "SolarizeIncreasing", ...).
    applied: False when the op's probability draw skipped it (the other fields are then unused).
    magnitude: the drawn magnitude before clamping (the config's magnitude where mstd is 0).
    negate: the sign draw of a signed op (timm: random() > 0.5 negates).
    interpolation: "bilinear" / "bicubic" drawn for a geometric op under interpolation "random", else None.
  """
  op: str
  applied: bool = True
  magnitude: float = LEVEL_DENOM
  negate: bool = False
  interpolation: str | None = None


def _error(config: str, what: str) -> ValueError:
  return ValueError(f"rand_augment: config {config!r}: {what}; expected timm's form, e.g. "
                    "'rand-m9-mstd0.5-inc1' (sections m<int>, n<int>, mstd<float>, mmax<int>, p<float>, inc<0|1>, "
                    f"t<{'|'.join([*WEIGHTED_OPS, *UNIFORM_SETS])}>)")


def parse_config(config: str = "rand-m9-mstd0.5-inc1", *, fill: int | Sequence[int] = IMAGENET_FILL,
                 interpolation: str = "random", translate_pct: float = 0.45) -> RandAugmentConfig:
  """timm's RandAugment config string (the `--aa` value) and hparams -> RandAugmentConfig; ValueError if malformed."""
  if not isinstance(config, str):
    raise ValueError(f"rand_augment: config must be a string such as 'rand-m9-mstd0.5-inc1'; got {config!r}")
  sections = config.split("-")
  if sections[0] != "rand":
    raise _error(config, f"starts with {sections[0]!r}, not 'rand' (AutoAugment / AugMix strings are not supported)")
  values: dict[str, Any] = {}
  op_set = None
  for section in sections[1:]:
    if section.startswith("t"):
      op_set = section[1:]
      if op_set not in WEIGHTED_OPS and op_set not in UNIFORM_SETS:
        raise _error(config, f"unknown op set t{op_set}")
      continue
    match = re.fullmatch(r"([a-z]+)(\d.*)", section)
    if match is None:
      raise _error(config, f"section {section!r} is not a key followed by a number")
    key, text = match.groups()
    convert = {"m": int, "n": int, "mmax": int, "inc": int, "p": float, "mstd": float}.get(key)
    if convert is None:
      raise _error(config, f"unknown section key {key!r} in {section!r}")
    try:
      values[key] = convert(text)
    except ValueError:
      raise _error(config, f"{key} takes {'an int' if convert is int else 'a number'}; got {text!r}") from None

  magnitude_std = float(values.get("mstd", 0.0))
  if magnitude_std > 100:
    magnitude_std = math.inf  # timm: uniform in [0, m]
  prob = float(values.get("p", 0.5))
  if not 0.0 <= prob <= 1.0:
    raise _error(config, f"p must be in [0, 1]; got {prob}")
  increasing = bool(values.get("inc", 0))
  if op_set in WEIGHTED_OPS:
    ops, raw = zip(*WEIGHTED_OPS[op_set].items())
    weights = tuple(float(w) for w in np.asarray(raw, np.float64) / np.sum(raw))
  else:
    ops = UNIFORM_SETS[op_set] if op_set else (RAND_INCREASING_OPS if increasing else RAND_OPS)
    weights = None
  num_layers = values.get("n", 2)
  if weights is not None and num_layers > len(ops):
    raise _error(config, f"n{num_layers} ops without replacement from the {len(ops)} of t{op_set}")

  if interpolation not in INTERPOLATIONS:
    raise ValueError(f"rand_augment: interpolation must be one of {INTERPOLATIONS}; got {interpolation!r}")
  fill3 = (fill,) * 3 if isinstance(fill, int) else tuple(fill)
  if len(fill3) != 3 or not all(isinstance(v, int) and 0 <= v <= 255 for v in fill3):
    raise ValueError(f"rand_augment: fill must be an int or 3 ints in [0, 255] (timm's img_mean); got {fill!r}")
  if not 0.0 <= translate_pct <= 1.0:
    raise ValueError(f"rand_augment: translate_pct must be in [0, 1] (a fraction of the image side); "
                     f"got {translate_pct}")
  return RandAugmentConfig(
      ops=tuple(ops), weights=weights, num_layers=num_layers, magnitude=float(values.get("m", LEVEL_DENOM)),
      magnitude_std=magnitude_std, magnitude_max=float(values.get("mmax") or LEVEL_DENOM), prob=prob,
      fill=fill3, interpolation=interpolation, translate_pct=float(translate_pct))


def draw_layers(config: RandAugmentConfig, rng: np.random.Generator) -> tuple[Layer, ...]:
  """The ops and draws for one image, in the order timm makes them (module docstring)."""
  if config.weights is None:
    picks = rng.integers(len(config.ops), size=config.num_layers)
  else:
    picks = rng.choice(len(config.ops), size=config.num_layers, replace=False, p=np.asarray(config.weights))
  layers = []
  for pick in picks:
    name = config.ops[int(pick)]
    if config.prob < 1.0 and float(rng.random()) > config.prob:
      layers.append(Layer(name, applied=False))
      continue
    magnitude = config.magnitude
    if config.magnitude_std == math.inf:
      magnitude = float(rng.uniform(0.0, config.magnitude))
    elif config.magnitude_std > 0:
      magnitude = float(rng.normal(config.magnitude, config.magnitude_std))
    negate = name in SIGNED_OPS and float(rng.random()) > 0.5
    interpolation = None
    if name in GEOMETRIC_OPS and config.interpolation == "random":
      interpolation = RANDOM_INTERPOLATIONS[int(rng.integers(len(RANDOM_INTERPOLATIONS)))]
    layers.append(Layer(name, True, magnitude, negate, interpolation))
  return tuple(layers)


def op_argument(layer: Layer, config: RandAugmentConfig) -> float | int | None:
  """The argument timm's level function gives `layer.op` (degrees, factor, bits, threshold, ...); None: no argument."""
  name = layer.op
  level = max(0.0, min(layer.magnitude, config.magnitude_max))
  frac = level / LEVEL_DENOM

  def signed(v: float) -> float:
    return -v if layer.negate else v

  if name in ("AutoContrast", "Equalize", "Invert"):
    return None
  if name == "Rotate":
    return signed(frac * 30.0)
  if name in ("Posterize", "PosterizeIncreasing"):
    bits = int(frac * 4)
    return 4 - bits if name == "PosterizeIncreasing" else bits
  if name in ("Solarize", "SolarizeIncreasing"):
    threshold = min(256, int(frac * 256))
    return 256 - threshold if name == "SolarizeIncreasing" else threshold
  if name == "SolarizeAdd":
    return min(128, int(frac * 110))
  if name in ("Color", "Contrast", "Brightness", "Sharpness"):
    return frac * 1.8 + 0.1
  if name.endswith("Increasing"):  # the enhancements: 1 is the identity, severity moves away from it
    return max(0.1, 1.0 + signed(frac * 0.9))
  if name in ("ShearX", "ShearY"):
    return signed(frac * 0.3)
  if name in ("TranslateXRel", "TranslateYRel"):
    return signed(frac * config.translate_pct)
  if name == "Desaturate":
    return min(1.0, max(0.0, 1.0 - min(1.0, max(0.5, 0.5 + (1.0 - 0.5) * frac))))
  if name == "GaussianBlur":
    return min(2.0, max(0.1, 0.1 + (2.0 - 0.1) * frac))
  known = sorted({*RAND_OPS, *RAND_INCREASING_OPS, *UNIFORM_SETS["3a"]})
  raise ValueError(f"rand_augment: unknown op {name!r}; known: {known}")


def _lut(img: Any, table: Sequence[int]) -> Any:
  """The same 256-entry table on every band (timm's point ops)."""
  return img.point(list(table) * len(img.getbands()))


def apply_layer(img: Any, layer: Layer, config: RandAugmentConfig) -> Any:
  """One op on a PIL RGB image (a new image); the argument from op_argument, the interpolation from config or layer."""
  from PIL import Image, ImageEnhance, ImageFilter, ImageOps  # noqa: PLC0415

  if not layer.applied:
    return img
  name, arg = layer.op, op_argument(layer, config)
  if name in GEOMETRIC_OPS:
    mode = layer.interpolation or config.interpolation
    if mode == "random":
      raise ValueError(f"rand_augment: layer {layer} of a geometric op needs an interpolation draw "
                       "(draw_layers makes one under interpolation='random')")
    resample = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
                "bicubic": Image.Resampling.BICUBIC}[mode]
    if name == "Rotate":
      return img.rotate(arg, resample=resample, fillcolor=config.fill)
    width, height = img.size
    affine = {"ShearX": (1, arg, 0, 0, 1, 0), "ShearY": (1, 0, 0, arg, 1, 0),
              "TranslateXRel": (1, 0, arg * width, 0, 1, 0), "TranslateYRel": (1, 0, 0, 0, 1, arg * height)}[name]
    return img.transform(img.size, Image.Transform.AFFINE, affine, resample=resample, fillcolor=config.fill)
  if name == "AutoContrast":
    return ImageOps.autocontrast(img)
  if name == "Equalize":
    return ImageOps.equalize(img)
  if name == "Invert":
    return _lut(img, [255 - i for i in range(256)])
  if name.startswith("Posterize"):
    if arg >= 8:
      return img
    return _lut(img, [i & (0xFF << (8 - arg)) & 0xFF for i in range(256)])
  if name.startswith("Solarize") and name != "SolarizeAdd":
    return _lut(img, [i if i < arg else 255 - i for i in range(256)])
  if name == "SolarizeAdd":
    return _lut(img, [min(255, i + arg) if i < 128 else i for i in range(256)])
  if name == "GaussianBlur":
    return img.filter(ImageFilter.GaussianBlur(radius=arg))
  enhancer = {"Color": ImageEnhance.Color, "Contrast": ImageEnhance.Contrast, "Brightness": ImageEnhance.Brightness,
              "Sharpness": ImageEnhance.Sharpness, "Desaturate": ImageEnhance.Color}[name.removesuffix("Increasing")]
  return enhancer(img).enhance(arg)


def apply_layers(image: np.ndarray, layers: Sequence[Layer], config: RandAugmentConfig) -> np.ndarray:
  """(H, W, 3) uint8 -> (H, W, 3) uint8: the layers in order."""
  from PIL import Image  # noqa: PLC0415

  img = Image.fromarray(image)
  for layer in layers:
    img = apply_layer(img, layer, config)
  return np.asarray(img)
