"""Preprocessing ops named by string, big_vision style: "decode|resize_small(256)|random_crop(224)|flip_lr".

An example op maps one example dict and a numpy Generator to a new dict; its randomness comes only
from that Generator, which the loader seeds from (seed, epoch, example index), so every example is
a pure function of those and the input pipeline can restart anywhere. A batch op does the same
for a whole batch (mixup / cutmix of the DeiT recipe, seeded per batch).

  preprocess = parse("decode|inception_crop(224)|flip_lr|value_range(-1, 1)")   # or a list of ops
  example = preprocess({"image": jpeg_bytes, "label": 3}, np.random.default_rng(0))
  mix = parse_batch("mixup_cutmix(num_classes=1000, label_smoothing=0.1)")
  batch = mix({"image": (B, H, W, 3) float32, "label": (B,) int}, rng)   # label -> (B, K) float32

Example ops (images are (H, W, 3) uint8 until value_range / normalize make them float32):
  decode                       encoded bytes (JPEG, PNG, ...) -> uint8 RGB; arrays pass (grey -> RGB);
                               bytes that do not decode raise BadImageError naming example["path"]
  resize(h, w=h)               bilinear with antialiasing (PIL), to exactly h x w
  resize_small(s)              the shorter side to s, aspect kept
  central_crop(h, w=h), random_crop(h, w=h)
  inception_crop(size, area_min=8, area_max=100)   RandomResizedCrop (scale in %, ratio 3/4..4/3) then resize
  flip_lr                      mirror with probability 1/2
  value_range(vmin, vmax, in_min=0, in_max=255)     linear map to float32
  normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)   (x / 255 - mean) / std, float32
Batch ops: mixup(alpha, num_classes, label_smoothing=0), cutmix(alpha, num_classes, label_smoothing=0),
  mixup_cutmix(mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5, num_classes=1000, label_smoothing=0.1)
  (timm's Mixup in batch mode: each image mixes with its mirror in the batch, x[::-1]).
"""
from __future__ import annotations

import ast
import io
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

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


def pil_resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """(H, W, C) uint8 or float -> (height, width, C), PIL bilinear (antialiased when shrinking)."""
  from PIL import Image  # noqa: PLC0415

  if image.shape[:2] == (height, width):
    return image
  if image.dtype == np.uint8:
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))
  channels = [np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c], np.float32)).resize(
      (width, height), Image.BILINEAR)) for c in range(image.shape[-1])]
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


def random_crop(height: int, width: int | None = None) -> ExampleOp:
  height, width = _size2(height, width)

  def op(example, rng):
    image = example["image"]
    _check_fits(image, height, width, "random_crop")
    top = int(rng.integers(image.shape[0] - height + 1))
    left = int(rng.integers(image.shape[1] - width + 1))
    return _with_image(example, image[top:top + height, left:left + width])
  return op


def inception_crop(size: int, area_min: float = 8, area_max: float = 100) -> ExampleOp:
  """timm's RandomResizedCrop(size, scale=(area_min, area_max) / 100, ratio=(3/4, 4/3)): 10 tries, then center."""
  size, _ = _size2(size, None)
  if not 0 < area_min <= area_max <= 100:
    raise ValueError(f"inception_crop: need 0 < area_min <= area_max <= 100 (percent); got {area_min}, {area_max}")
  log_ratio = (math.log(3 / 4), math.log(4 / 3))

  def op(example, rng):
    image = example["image"]
    h, w = image.shape[:2]
    for _ in range(10):
      area = h * w * rng.uniform(area_min / 100, area_max / 100)
      ratio = math.exp(rng.uniform(*log_ratio))
      cw, ch = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
      if 0 < cw <= w and 0 < ch <= h:
        top, left = int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))
        break
    else:  # the fallback center crop, with the ratio clamped to the allowed range
      ch, cw = min(h, round(w / (3 / 4))), w
      if w / h > 4 / 3:
        ch, cw = h, round(h * 4 / 3)
      top, left = (h - ch) // 2, (w - cw) // 2
    return _with_image(example, pil_resize(image[top:top + ch, left:left + cw], size, size))
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
    "random_crop": random_crop, "inception_crop": inception_crop, "flip_lr": flip_lr,
    "value_range": value_range, "normalize": normalize,
}
BATCH_OPS: dict[str, Callable[..., BatchOp]] = {"mixup": mixup, "cutmix": cutmix, "mixup_cutmix": mixup_cutmix}


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
    raise ValueError(f"preprocess: unknown {kind} op {name!r}; known: {sorted(registry)}")
  try:
    return registry[name](*args, **kwargs)
  except TypeError as e:
    raise ValueError(f"preprocess: bad arguments for {op!r}: {e}") from e


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
