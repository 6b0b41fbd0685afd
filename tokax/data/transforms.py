"""Preprocessing ops named by string, big_vision style: "decode|resize_small(256)|random_crop(224)|flip_lr".

An example op maps one example dict and a numpy Generator to a new dict; its randomness comes only
from that Generator, which the loader seeds from (seed, epoch, example index), so every example is
a pure function of those and the input pipeline can restart anywhere. A batch op does the same
for a whole batch (mixup / cutmix of the DeiT recipe, seeded per batch).

  preprocess = parse("decode|inception_crop(224)|flip_lr|value_range(-1, 1)")   # or a list of ops
  example = preprocess({"image": jpeg_bytes, "label": 3}, np.random.default_rng(0))
  mix = parse_batch("mixup_cutmix(num_classes=1000, label_smoothing=0.1)")
  batch = mix({"image": (B, H, W, 3) float32, "label": (B,) int}, rng)   # label -> (B, K) float32

DeiT's training preprocess (timm's create_transform for DeiT; docs/preprocess.md):
  decode|inception_crop(224, interpolation="bicubic")|flip_lr
  |rand_augment("rand-m9-mstd0.5-inc1", interpolation="bicubic")|normalize|random_erasing(0.25)
with parse_batch("mixup_cutmix(num_classes=1000, label_smoothing=0.1)").

Example ops (images are (H, W, 3) uint8 until value_range / normalize make them float32):
  decode                       encoded bytes (JPEG, PNG, ...) -> uint8 RGB; arrays pass (grey -> RGB);
                               bytes that do not decode raise BadImageError naming example["path"]
  resize(h, w=h)               bilinear with antialiasing (PIL), to exactly h x w
  resize_small(s)              the shorter side to s, aspect kept
  central_crop(h, w=h), random_crop(h, w=h)
  resize_center_crop(size, crop_pct=0.875, interpolation="bicubic")
                               timm's eval transform (Resize(floor(size / crop_pct)) + CenterCrop(size)) with
                               torchvision's sizes and offsets: its pixels, before ToTensor / Normalize
  inception_crop(size, area_min=8, area_max=100, *, scale=None, ratio=(3/4, 4/3), interpolation="bilinear")
                               timm's RandomResizedCropAndInterpolation: scale (fractions) or area_min/max
                               (percent) bound the crop's area; interpolation nearest / bilinear / bicubic /
                               lanczos / box / hamming / random (bilinear or bicubic, drawn)
  flip_lr                      mirror with probability 1/2
  rand_augment(config="rand-m9-mstd0.5-inc1", interpolation="random", fill=(124, 116, 104), translate_pct=0.45)
                               timm's RandAugment from its --aa string, on the uint8 image (rand_augment.py)
  value_range(vmin, vmax, in_min=0, in_max=255)     linear map to float32
  normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)   (x / 255 - mean) / std, float32
  random_erasing(prob=0.25, mode="pixel", min_count=1, max_count=1, min_area=0.02, max_area=1/3,
                 min_aspect=0.3, max_aspect=None)
                               timm's RandomErasing (DeiT's reprob/remode/recount defaults) on the float image:
                               it must come after normalize (or value_range); on a uint8 image it raises
Batch ops: mixup(alpha, num_classes, label_smoothing=0), cutmix(alpha, num_classes, label_smoothing=0),
  mixup_cutmix(mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5, num_classes=1000, label_smoothing=0.1)
  (timm's Mixup in batch mode: each image mixes with its mirror in the batch, x[::-1]).
Your own ops: register_op(name, factory) / register_batch_op(name, factory), then use the name in a string.
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import io
import keyword
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from tokax.data.rand_augment import IMAGENET_FILL, apply_layers, draw_layers, parse_config

Example = dict[str, Any]
ExampleOp = Callable[[Example, np.random.Generator], Example]
BatchOp = Callable[[dict[str, np.ndarray], np.random.Generator], dict[str, np.ndarray]]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _with_image(example: Example, image: np.ndarray) -> Example:
  return {**example, "image": image}


def _size2(h: int, w: int | None) -> tuple[int, int]:
  w = h if w is None else w
  for name, v in (("height", h), ("width", w)):
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
      raise ValueError(f"preprocess: crop/resize {name} must be a positive int; got {v!r}")
  return h, w


INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")


def _resample(interpolation: str) -> Any:
  from PIL import Image  # noqa: PLC0415

  return {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
          "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS, "box": Image.Resampling.BOX,
          "hamming": Image.Resampling.HAMMING}[interpolation]


def pil_resize(image: np.ndarray, height: int, width: int, interpolation: str = "bilinear") -> np.ndarray:
  """(H, W, C) uint8 or float -> (height, width, C) with PIL's filter (antialiased when shrinking)."""
  from PIL import Image  # noqa: PLC0415

  if image.shape[:2] == (height, width):
    return image
  resample = _resample(interpolation)
  if image.dtype == np.uint8:
    return np.asarray(Image.fromarray(image).resize((width, height), resample))
  channels = [np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c], np.float32)).resize(
      (width, height), resample)) for c in range(image.shape[-1])]
  return np.stack(channels, axis=-1).astype(image.dtype)


class BadImageError(ValueError):
  """Encoded bytes that do not decode to an image; the message names the file where the example has a "path".

  Attributes:
    reason: what is wrong, in a few words ("an empty file (0 bytes)", "OSError: image file is truncated ...").
  """

  def __init__(self, message: str, reason: str = ""):
    super().__init__(message)
    self.reason = reason or message


def decode_image(data: bytes | bytearray | memoryview, path: str | None = None) -> np.ndarray:
  """Encoded image bytes (JPEG, PNG, ...) -> (H, W, 3) uint8 RGB; BadImageError naming `path` if they do not decode."""
  from PIL import Image, UnidentifiedImageError  # noqa: PLC0415

  try:
    with Image.open(io.BytesIO(data)) as img:
      return np.asarray(img.convert("RGB"))
  except Exception as e:  # noqa: BLE001 (PIL raises OSError, SyntaxError, ValueError, ... for broken files)
    if not len(data):
      reason = "an empty file (0 bytes)"
    elif isinstance(e, UnidentifiedImageError):
      reason = f"not an image format PIL can identify ({len(data)} bytes)"
    else:
      reason = f"{type(e).__name__}: {e}"
    if path is None:
      raise BadImageError(f"decode: an encoded image of {len(data)} bytes does not decode: {reason}", reason) from e
    raise BadImageError(f"decode: {path} does not decode: {reason}; list every such file with "
                        "tokax.data.folder.check(root) (python -m tokax.data.folder ROOT), or replace them while "
                        "loading with data.skip_bad_images=True (counted as bad_examples)", reason) from e


def decode() -> ExampleOp:
  def op(example, rng):
    image = example["image"]
    if isinstance(image, (bytes, bytearray, memoryview)):
      image = decode_image(image, example.get("path"))
    image = np.asarray(image)
    if image.ndim == 2:
      image = image[..., None]
    if image.shape[-1] == 1:
      image = np.repeat(image, 3, axis=-1)
    elif image.shape[-1] == 4:
      image = image[..., :3]
    return _with_image(example, image)
  return op


def resize(height: int, width: int | None = None) -> ExampleOp:
  height, width = _size2(height, width)
  return lambda example, rng: _with_image(example, pil_resize(example["image"], height, width))


def resize_small(size: int) -> ExampleOp:
  size, _ = _size2(size, None)

  def op(example, rng):
    h, w = example["image"].shape[:2]
    scale = size / min(h, w)
    return _with_image(example, pil_resize(example["image"], max(size, round(h * scale)), max(size, round(w * scale))))
  return op


def _check_fits(image: np.ndarray, h: int, w: int, op: str) -> None:
  if image.shape[0] < h or image.shape[1] < w:
    raise ValueError(f"preprocess: {op}({h}, {w}) of a {image.shape[0]}x{image.shape[1]} image; "
                     f"resize first (e.g. resize_small({max(h, w)}))")


def central_crop(height: int, width: int | None = None) -> ExampleOp:
  height, width = _size2(height, width)

  def op(example, rng):
    image = example["image"]
    _check_fits(image, height, width, "central_crop")
    top, left = (image.shape[0] - height) // 2, (image.shape[1] - width) // 2
    return _with_image(example, image[top:top + height, left:left + width])
  return op


def resize_center_crop(size: int, crop_pct: float = 0.875, interpolation: str = "bicubic") -> ExampleOp:
  """timm's eval transform (transforms_imagenet_eval, crop_mode "center") on the uint8 image, sizes as torchvision's.

  Resize(floor(size / crop_pct)): the shorter side to s = floor(size / crop_pct), the longer to
  int(s * long / short) (truncated, where resize_small rounds), with PIL's `interpolation` (one of
  INTERPOLATIONS); then CenterCrop(size) at offsets int(round((H - size) / 2)) (where central_crop floors).
  With the same decoded image it gives timm.data.create_transform(**resolve_data_config(model))'s pixels
  before ToTensor / Normalize.
  """
  size, _ = _size2(size, None)
  if isinstance(crop_pct, bool) or not isinstance(crop_pct, (int, float)) or not 0 < crop_pct <= 1:
    raise ValueError(f"resize_center_crop: crop_pct must be in (0, 1] (timm's pretrained cfg: 0.875, 0.9, 1.0); "
                     f"got {crop_pct!r}")
  if interpolation not in INTERPOLATIONS:
    raise ValueError(f"resize_center_crop: interpolation must be one of {INTERPOLATIONS}; got {interpolation!r}")
  scale = math.floor(size / crop_pct)

  def op(example, rng):
    image = example["image"]
    h, w = image.shape[:2]
    if h <= w:
      height, width = scale, int(scale * w / h)
    else:
      height, width = int(scale * h / w), scale
    image = pil_resize(image, height, width, interpolation)
    top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    return _with_image(example, image[top:top + size, left:left + size])
  return op


def random_crop(height: int, width: int | None = None) -> ExampleOp:
  height, width = _size2(height, width)

  def op(example, rng):
    image = example["image"]
    _check_fits(image, height, width, "random_crop")
    top = int(rng.integers(image.shape[0] - height + 1))
    left = int(rng.integers(image.shape[1] - width + 1))
    return _with_image(example, image[top:top + height, left:left + width])
  return op


def inception_box(height: int, width: int, rng: np.random.Generator, scale: tuple[float, float] = (0.08, 1.0),
                  ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
  """RandomResizedCrop.get_params: (top, left, crop_height, crop_width) of an (height, width) image.

  Up to 10 tries of an area fraction uniform in `scale` and an aspect (w / h) log-uniform in `ratio`, the
  first that fits placed uniformly; else the central crop with the aspect clamped into `ratio`.
  """
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target_area = float(rng.uniform(scale[0], scale[1])) * area
    aspect = math.exp(float(rng.uniform(*log_ratio)))
    cw, ch = round(math.sqrt(target_area * aspect)), round(math.sqrt(target_area / aspect))
    if 0 < cw <= width and 0 < ch <= height:
      return int(rng.integers(height - ch + 1)), int(rng.integers(width - cw + 1)), ch, cw
  if width / height < min(ratio):
    cw, ch = width, round(width / min(ratio))
  elif width / height > max(ratio):
    cw, ch = round(height * max(ratio)), height
  else:
    cw, ch = width, height
  return (height - ch) // 2, (width - cw) // 2, ch, cw


def _pair(name: str, value: Any, op: str) -> tuple[float, float]:
  if (not isinstance(value, (tuple, list)) or len(value) != 2
      or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
      or not 0 < value[0] <= value[1]):
    raise ValueError(f"{op}: {name} must be (low, high) with 0 < low <= high; got {value!r}")
  return float(value[0]), float(value[1])


def inception_crop(size: int | Sequence[int], area_min: float = 8, area_max: float = 100, *,
                   scale: Sequence[float] | None = None, ratio: Sequence[float] = (3 / 4, 4 / 3),
                   interpolation: str = "bilinear") -> ExampleOp:
  """timm's RandomResizedCropAndInterpolation(size, scale, ratio, interpolation): inception_box, then resize.

  size: an int (square) or (height, width). The crop's area range is `scale` (fractions, timm's and
  torchvision's argument) or area_min / area_max (percent, big_vision's), not both. interpolation:
  one of INTERPOLATIONS (PIL's filters, as timm's PIL path), or "random": bilinear or bicubic,
  drawn after the box as timm does. DeiT trains with interpolation="bicubic".
  """
  if isinstance(size, (tuple, list)) and len(size) == 2:
    height, width = _size2(size[0], size[1])
  else:
    height, width = _size2(size, None)
  if scale is None:
    if not 0 < area_min <= area_max <= 100:
      raise ValueError(f"inception_crop: need 0 < area_min <= area_max <= 100 (percent); got {area_min}, {area_max}")
    scale = (area_min / 100, area_max / 100)
  elif (area_min, area_max) != (8, 100):
    raise ValueError("inception_crop: give the area range once: scale=(0.08, 1.0) (fractions) or "
                     f"area_min/area_max (percent); got scale={scale!r} and area_min={area_min}, area_max={area_max}")
  scale = _pair("scale", scale, "inception_crop")
  ratio = _pair("ratio", ratio, "inception_crop")
  if interpolation not in (*INTERPOLATIONS, "random"):
    raise ValueError(f"inception_crop: interpolation must be one of {(*INTERPOLATIONS, 'random')}; "
                     f"got {interpolation!r} (DeiT uses 'bicubic')")

  def op(example, rng):
    image = example["image"]
    top, left, ch, cw = inception_box(image.shape[0], image.shape[1], rng, scale, ratio)
    mode = interpolation
    if mode == "random":
      mode = ("bilinear", "bicubic")[int(rng.integers(2))]
    return _with_image(example, pil_resize(image[top:top + ch, left:left + cw], height, width, mode))
  return op


def flip_lr() -> ExampleOp:
  return lambda example, rng: _with_image(example, example["image"][:, ::-1]) if rng.random() < 0.5 else example


def value_range(vmin: float, vmax: float, in_min: float = 0.0, in_max: float = 255.0) -> ExampleOp:
  scale = (vmax - vmin) / (in_max - in_min)
  return lambda example, rng: _with_image(
      example, ((np.asarray(example["image"], np.float32) - in_min) * scale + vmin).astype(np.float32))


def normalize(mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> ExampleOp:
  mean255 = np.asarray(mean, np.float32) * 255.0
  inv_std255 = 1.0 / (np.asarray(std, np.float32) * 255.0)
  return lambda example, rng: _with_image(example, (np.asarray(example["image"], np.float32) - mean255) * inv_std255)


def rand_augment(config: str = "rand-m9-mstd0.5-inc1", interpolation: str = "random",
                 fill: int | Sequence[int] = IMAGENET_FILL, translate_pct: float = 0.45) -> ExampleOp:
  """timm's RandAugment from its --aa config string: (H, W, 3) uint8 -> (H, W, 3) uint8 (tokax.data.rand_augment).

  fill / interpolation / translate_pct are timm's hparams img_mean / interpolation / translate_pct; timm's
  create_transform sets interpolation to the training interpolation unless that is "random" (DeiT: "bicubic").
  """
  cfg = parse_config(config, fill=fill, interpolation=interpolation, translate_pct=translate_pct)

  def op(example, rng):
    image = np.asarray(example["image"])
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
      raise ValueError(f"rand_augment: needs the (H, W, 3) uint8 image (timm augments the PIL image); got "
                       f"{image.dtype} {image.shape}: put it after decode / the crop and before normalize / "
                       "value_range, e.g. 'decode|inception_crop(224)|flip_lr|rand_augment(...)|normalize'")
    return _with_image(example, apply_layers(image, draw_layers(cfg, rng), cfg))
  return op


ERASING_MODES = ("const", "rand", "pixel")


@dataclasses.dataclass(frozen=True)
class ErasingBox:
  """A box random_erasing fills: rows top:top + height, columns left:left + width, with `fill` (broadcast)."""
  top: int
  left: int
  height: int
  width: int
  fill: np.ndarray  # (height, width, C) "pixel", (1, 1, C) "rand", (1, 1, 1) zeros "const"


def erasing_boxes(shape: tuple[int, int, int], rng: np.random.Generator, *, prob: float = 0.25,
                  mode: str = "pixel", min_count: int = 1, max_count: int = 1, min_area: float = 0.02,
                  max_area: float = 1 / 3, log_aspect: tuple[float, float] = (math.log(0.3), math.log(1 / 0.3)),
                  dtype: Any = np.float32) -> list[ErasingBox]:
  """timm RandomErasing's draws for one (H, W, C) image, in its order.

  Erase with probability prob; then count boxes (uniform in [min_count, max_count]), each of up to 10
  tries: area = uniform(min_area, max_area) * H * W / count, aspect (h / w) log-uniform in log_aspect,
  h = round(sqrt(area * aspect)), w = round(sqrt(area / aspect)); the first with h < H and w < W is
  placed uniformly and filled with N(0, 1) noise per pixel ("pixel"), per channel ("rand") or zeros.
  """
  height, width, channels = shape
  if float(rng.random()) > prob:
    return []
  count = min_count if min_count == max_count else int(rng.integers(min_count, max_count + 1))
  boxes = []
  for _ in range(count):
    for _ in range(10):
      target_area = float(rng.uniform(min_area, max_area)) * (height * width) / count
      aspect = math.exp(float(rng.uniform(*log_aspect)))
      h, w = round(math.sqrt(target_area * aspect)), round(math.sqrt(target_area / aspect))
      if w < width and h < height:
        top, left = int(rng.integers(height - h + 1)), int(rng.integers(width - w + 1))
        noise_dtype = dtype if dtype in (np.float32, np.float64) else np.float32
        if mode == "pixel":
          fill = rng.standard_normal((h, w, channels), dtype=noise_dtype)
        elif mode == "rand":
          fill = rng.standard_normal((1, 1, channels), dtype=noise_dtype)
        else:
          fill = np.zeros((1, 1, 1), noise_dtype)
        boxes.append(ErasingBox(top, left, h, w, fill.astype(dtype, copy=False)))
        break
  return boxes


def random_erasing(prob: float = 0.25, mode: str = "pixel", min_count: int = 1, max_count: int = 1,
                   min_area: float = 0.02, max_area: float = 1 / 3, min_aspect: float = 0.3,
                   max_aspect: float | None = None) -> ExampleOp:
  """timm's RandomErasing on the normalized (H, W, C) float image; DeiT's --reprob 0.25 --remode pixel --recount 1.

  Comes after normalize (or value_range), as timm erases the tensor after ToTensor + Normalize: noise
  is N(0, 1) in normalized units and "const" erases to 0, the mean. A uint8 image is an error.
  Deliberate differences from timm: the defaults are DeiT's (timm's class defaults are probability 0.5,
  mode "const"); boxes are drawn by erasing_boxes from the example's Generator.
  """
  if isinstance(prob, bool) or not isinstance(prob, (int, float)) or not 0.0 <= prob <= 1.0:
    raise ValueError(f"random_erasing: prob must be in [0, 1]; got {prob!r} (DeiT: random_erasing(0.25))")
  if mode not in ERASING_MODES:
    raise ValueError(f"random_erasing: mode must be one of {ERASING_MODES}; got {mode!r} (DeiT: mode='pixel')")
  for name, v in (("min_count", min_count), ("max_count", max_count)):
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
      raise ValueError(f"random_erasing: {name} must be a positive int; got {v!r}")
  if min_count > max_count:
    raise ValueError(f"random_erasing: min_count {min_count} > max_count {max_count}; the count is uniform in "
                     "[min_count, max_count]")
  if not 0.0 < min_area <= max_area <= 1.0:
    raise ValueError(f"random_erasing: need 0 < min_area <= max_area <= 1 (fractions of the image); "
                     f"got {min_area}, {max_area}")
  if not min_aspect > 0.0 or not (max_aspect is None or max_aspect >= min_aspect):
    raise ValueError(f"random_erasing: need 0 < min_aspect <= max_aspect (h / w; max_aspect=None is 1 / min_aspect); "
                     f"got {min_aspect}, {max_aspect}")
  max_aspect = max_aspect or 1 / min_aspect
  log_aspect = (math.log(min_aspect), math.log(max_aspect))

  def op(example, rng):
    image = np.asarray(example["image"])
    if not np.issubdtype(image.dtype, np.floating) or image.ndim != 3:
      raise ValueError(f"random_erasing: got a {image.dtype} {image.shape} image; it erases the normalized "
                       "(H, W, C) float image (timm: after ToTensor + Normalize), so put it after normalize: "
                       "'...|normalize|random_erasing(0.25)'")
    boxes = erasing_boxes(image.shape, rng, prob=prob, mode=mode, min_count=min_count, max_count=max_count,
                          min_area=min_area, max_area=max_area, log_aspect=log_aspect, dtype=image.dtype)
    if not boxes:
      return example
    image = image.copy()
    for b in boxes:
      image[b.top:b.top + b.height, b.left:b.left + b.width] = b.fill
    return _with_image(example, image)
  return op


# --- batch ops -----------------------------------------------------------------------------------


def one_hot(labels: np.ndarray, num_classes: int, label_smoothing: float = 0.0) -> np.ndarray:
  """(B,) int -> (B, K) float32 with timm's smoothing: off = eps / K, on = 1 - eps + eps / K."""
  off = label_smoothing / num_classes
  out = np.full((labels.shape[0], num_classes), off, np.float32)
  out[np.arange(labels.shape[0]), labels] = 1.0 - label_smoothing + off
  return out


def _soft_labels(batch: dict[str, np.ndarray], num_classes: int, label_smoothing: float) -> np.ndarray:
  labels = np.asarray(batch["label"])
  return labels.astype(np.float32) if labels.ndim == 2 else one_hot(labels, num_classes, label_smoothing)


def cutmix_box(height: int, width: int, lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
  """timm's rand_bbox: a box of side sqrt(1 - lam) of the image's, centred uniformly, clipped: (y0, y1, x0, x1)."""
  cut = math.sqrt(1.0 - lam)
  ch, cw = int(height * cut), int(width * cut)
  cy, cx = int(rng.integers(height)), int(rng.integers(width))
  return (int(np.clip(cy - ch // 2, 0, height)), int(np.clip(cy + ch // 2, 0, height)),
          int(np.clip(cx - cw // 2, 0, width)), int(np.clip(cx + cw // 2, 0, width)))


def mix_batch(batch: dict[str, np.ndarray], rng: np.random.Generator, *, mixup_alpha: float, cutmix_alpha: float,
              switch_prob: float, num_classes: int, label_smoothing: float) -> dict[str, np.ndarray]:
  """timm Mixup (mode "batch", prob 1): images mix with batch[::-1]; labels become (B, K) weights.

  CutMix pastes the partner inside cutmix_box and sets lam to the kept area fraction (timm's
  correct_lam), so each label row is lam * own + (1 - lam) * partner and sums to 1.
  """
  use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or rng.random() < switch_prob)
  lam = float(rng.beta(cutmix_alpha, cutmix_alpha) if use_cutmix else rng.beta(mixup_alpha, mixup_alpha))
  images = np.asarray(batch["image"], np.float32)
  partner = images[::-1]
  if use_cutmix:
    h, w = images.shape[1:3]
    y0, y1, x0, x1 = cutmix_box(h, w, lam, rng)
    images = images.copy()
    images[:, y0:y1, x0:x1] = partner[:, y0:y1, x0:x1]
    lam = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)
  else:
    images = images * np.float32(lam) + partner * np.float32(1.0 - lam)
  labels = _soft_labels(batch, num_classes, label_smoothing)
  labels = labels * np.float32(lam) + labels[::-1] * np.float32(1.0 - lam)
  return {**batch, "image": images, "label": labels, "mix_lambda": np.full((images.shape[0],), lam, np.float32)}


def mixup(alpha: float = 0.8, num_classes: int = 1000, label_smoothing: float = 0.0) -> BatchOp:
  return lambda batch, rng: mix_batch(batch, rng, mixup_alpha=alpha, cutmix_alpha=0.0, switch_prob=0.0,
                                      num_classes=num_classes, label_smoothing=label_smoothing)


def cutmix(alpha: float = 1.0, num_classes: int = 1000, label_smoothing: float = 0.0) -> BatchOp:
  return lambda batch, rng: mix_batch(batch, rng, mixup_alpha=0.0, cutmix_alpha=alpha, switch_prob=1.0,
                                      num_classes=num_classes, label_smoothing=label_smoothing)


def mixup_cutmix(mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0, switch_prob: float = 0.5,
                 num_classes: int = 1000, label_smoothing: float = 0.1) -> BatchOp:
  """The DeiT recipe's timm Mixup defaults."""
  if mixup_alpha <= 0 and cutmix_alpha <= 0:
    raise ValueError("mixup_cutmix: at least one of mixup_alpha, cutmix_alpha must be > 0")
  return lambda batch, rng: mix_batch(batch, rng, mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha,
                                      switch_prob=switch_prob, num_classes=num_classes,
                                      label_smoothing=label_smoothing)


EXAMPLE_OPS: dict[str, Callable[..., ExampleOp]] = {
    "decode": decode, "resize": resize, "resize_small": resize_small, "central_crop": central_crop,
    "resize_center_crop": resize_center_crop, "random_crop": random_crop, "inception_crop": inception_crop,
    "flip_lr": flip_lr, "rand_augment": rand_augment, "value_range": value_range, "normalize": normalize,
    "random_erasing": random_erasing,
}
BATCH_OPS: dict[str, Callable[..., BatchOp]] = {"mixup": mixup, "cutmix": cutmix, "mixup_cutmix": mixup_cutmix}
BUILTIN_OPS = frozenset(EXAMPLE_OPS) | frozenset(BATCH_OPS)  # register_op never replaces these


def _register(registry: dict[str, Callable[..., Any]], kind: str, name: str, factory: Any, replace: bool) -> None:
  what = "register_op" if kind == "example" else "register_batch_op"
  if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
    raise ValueError(f"{what}: the name must be a Python identifier (it is written name(args) in a preprocess "
                     f"string); got {name!r}")
  if not callable(factory):
    raise TypeError(f"{what}({name!r}, ...): expected a callable factory (args from the string) -> "
                    f"op({kind}, rng); got {type(factory).__name__} {factory!r}")
  other, other_kind = (BATCH_OPS, "a batch") if kind == "example" else (EXAMPLE_OPS, "an example")
  if name in BUILTIN_OPS and registry.get(name) is not factory:
    raise ValueError(f"{what}: {name!r} is a built-in op of tokax.data.transforms; pick another name")
  if name in other:
    raise ValueError(f"{what}: {name!r} is already {other_kind} op; pick another name")
  if name in registry and registry[name] is not factory and not replace:
    raise ValueError(f"{what}: {kind} op {name!r} is already registered ({registry[name]!r}); pick another name, "
                     "or pass replace=True to swap it")
  registry[name] = factory


def register_op(name: str, factory: Callable[..., ExampleOp] | None = None, *, replace: bool = False) -> Any:
  """Adds an example op named `name`; `factory(*args, **kwargs)` gets the string's arguments, returns op(example, rng).

  Returns the factory, so it works as a decorator too: @register_op("my_op"). The op must draw its
  randomness only from `rng`. Register at import time (module top level): data workers
  (num_workers > 0) are spawned processes that re-import modules and rebuild ops from the string.
  """
  if factory is None:
    return lambda f: register_op(name, f, replace=replace)
  _register(EXAMPLE_OPS, "example", name, factory, replace)
  return factory


def register_batch_op(name: str, factory: Callable[..., BatchOp] | None = None, *, replace: bool = False) -> Any:
  """register_op for batch ops: `factory(*args, **kwargs)` returns op(batch, rng) -> batch."""
  if factory is None:
    return lambda f: register_batch_op(name, f, replace=replace)
  _register(BATCH_OPS, "batch", name, factory, replace)
  return factory


def _split(spec: str | Sequence[str]) -> list[str]:
  if isinstance(spec, str):
    return [part.strip() for part in spec.split("|") if part.strip()]
  if isinstance(spec, Sequence) and all(isinstance(s, str) for s in spec):
    return [s.strip() for s in spec if s.strip()]
  raise ValueError(f"preprocess: expected a '|'-separated string or a list of op strings; got {spec!r}")


def _build(op: str, registry: dict[str, Callable[..., Any]], kind: str) -> Any:
  """"name", "name(1, 2)" or "name(a=1)" -> registry[name](1, 2) / (a=1); arguments are Python literals."""
  try:
    node = ast.parse(op, mode="eval").body
    if isinstance(node, ast.Name):
      name, args, kwargs = node.id, [], {}
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
      name = node.func.id
      args = [ast.literal_eval(a) for a in node.args]
      kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
    else:
      raise SyntaxError(op)
  except (SyntaxError, ValueError) as e:
    raise ValueError(f"preprocess: cannot parse {kind} op {op!r}; expected name or name(literal args)") from e
  if name not in registry:
    close = difflib.get_close_matches(name, registry, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise ValueError(f"preprocess: unknown {kind} op {name!r}; {hint}known: {sorted(registry)} (add one with "
                     f"tokax.data.transforms.register_{'op' if kind == 'example' else 'batch_op'})")
  try:
    built = registry[name](*args, **kwargs)
  except TypeError as e:
    raise ValueError(f"preprocess: bad arguments for {op!r}: {e}") from e
  if not callable(built):
    raise ValueError(f"preprocess: {kind} op {name!r} built {type(built).__name__}, not a callable "
                     f"op({kind}, rng); its factory must return the op")
  return built


def parse(spec: str | Sequence[str]) -> ExampleOp:
  """An example pipeline from "op|op(args)|..." (or a list of op strings); "" is the identity."""
  ops = [_build(op, EXAMPLE_OPS, "example") for op in _split(spec)]

  def preprocess(example: Example, rng: np.random.Generator) -> Example:
    for op in ops:
      example = op(example, rng)
    return example
  return preprocess


def parse_batch(spec: str | Sequence[str]) -> BatchOp:
  """A batch pipeline ("mixup_cutmix(num_classes=10)", ...); "" is the identity."""
  ops = [_build(op, BATCH_OPS, "batch") for op in _split(spec)]

  def preprocess(batch: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    for op in ops:
      batch = op(batch, rng)
    return batch
  return preprocess
