"""Embedded image datasets that need no network.

Two datasets are built, deterministically from a seed, out of data that ships inside installed
packages:

- ``digits``: scikit-learn's 1,797 handwritten 8x8 digits, bilinearly upsampled to
  ``image_size`` (default 32) as grey RGB.
- ``photo_crops``: random square crops (6 scales, random flips, no colour change) of scikit-image's
  bundled photos, split by photo (PHOTO_SPLITS): training photos never appear in val or test, and
  the textures (brick, grass, gravel) and text images (page, text) are in no split, kept for
  detail and text-preservation evaluation. Labels are the photo's index in BACKGROUNDS.
- ``cluttered_digits``: one such digit, in a random bright colour, alpha-blended onto a random
  crop of one of scikit-image's bundled photos and textures (default 224x224). The digit's side
  is 25-40% of the image's, so most patch tokens are background: the redundancy that token
  reduction exploits.

The 1,797 source digits are split once, by a fixed stratified permutation, into train / val /
test (70 / 10 / 20 per class); no source digit appears in two splits. Every cluttered example is
a pure function of ``(seed, split, index)``: asking for more examples extends the set without
changing the earlier ones, and ``image_size`` changes only the resolution of the same scenes.

Example::

  train = load("cluttered_digits", "train", image_size=112)
  for batch in iterate_batches(train, 128, seed=0):
    ...  # batch["image"]: (128, 112, 112, 3) float32, batch["label"]: (128,) int32
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator

import numpy as np

DATASETS: tuple[str, ...] = ("digits", "cluttered_digits", "photo_crops")
SPLITS: tuple[str, ...] = ("train", "val", "test")
NUM_CLASSES = 10
MIN_IMAGE_SIZE = 8

DEFAULT_IMAGE_SIZE: dict[str, int] = {"digits": 32, "cluttered_digits": 224, "photo_crops": 64}
DEFAULT_NUM_EXAMPLES: dict[str, int] = {"train": 5000, "val": 500, "test": 1000}

# scikit-image photos and textures whose files ship inside the scikit-image wheel. Left out: the
# ones skimage.data fetches with pooch (brain, cells3d, eagle, kidney, lily, ...), synthetic images
# (binary_blobs, checkerboard, colorwheel, logo, horse, shepp_logan_phantom), cat (= chelsea) and
# images too small to crop (microaneurysms, lfw_subset).
BACKGROUNDS: tuple[str, ...] = (
    "astronaut", "brick", "camera", "cell", "chelsea", "clock", "coffee", "coins", "grass",
    "gravel", "hubble_deep_field", "immunohistochemistry", "moon", "motorcycle", "page",
    "retina", "rocket", "text",
)

# photo_crops: which photos each split crops from (held out by photo, not by crop).
PHOTO_SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("camera", "cell", "clock", "coins", "hubble_deep_field", "immunohistochemistry", "moon",
              "motorcycle", "retina", "rocket"),
    "val": ("coffee",),
    "test": ("astronaut", "chelsea"),
}
TEXTURES: tuple[str, ...] = ("brick", "grass", "gravel")
TEXT_IMAGES: tuple[str, ...] = ("page", "text")

_SPLIT_FRACTIONS = (0.7, 0.1, 0.2)
_SPLIT_PERMUTATION_SEED = 20240611  # fixed: the split never depends on the user's seed
_SPLIT_ID = {split: i for i, split in enumerate(SPLITS)}
_DATASET_SALT = {"digits": 0x44494749, "cluttered_digits": 0x434C5554, "photo_crops": 0x50484F54}
_BATCH_SALT = 0x42415443
_PARAM_BLOCK = 1024  # examples drawn per RNG stream: example i does not depend on N
_DIGIT_SIDE_FRACTION = (0.25, 0.4)  # of the image side
_CROP_SIDE_FRACTION = (0.4, 0.9)  # of the photo's shorter side
_CROP_LEVELS = 6  # crop scales, geometric in _CROP_SIDE_FRACTION
_BACKGROUND_BRIGHTNESS = (0.4, 0.7)
_BACKGROUND_SATURATION = (0.3, 0.7)
_DIGIT_SATURATION = (0.4, 0.8)  # capped so that blue and purple digits stay bright


@dataclasses.dataclass(frozen=True, eq=False)
class ArrayDataset:
  """An in-memory image classification dataset; its arrays are made read-only.

  Attributes:
    images: (N, H, W, 3) float32 in [0, 1], NHWC.
    labels: (N,) int32 in [0, num_classes).
    num_classes: number of classes.
    name: dataset name, one of DATASETS (or the caller's own).
    split: "train", "val" or "test" (or the caller's own).
    source_index: (N,) int32 index into scikit-learn's load_digits() of each example's digit,
      or None.
    boxes: (N, 4) int32 (top, left, height, width) in pixels of each pasted digit, or None
      where the digit fills the image.
  """

  images: np.ndarray
  labels: np.ndarray
  num_classes: int
  name: str
  split: str = ""
  source_index: np.ndarray | None = None
  boxes: np.ndarray | None = None

  def __post_init__(self):
    if self.images.ndim != 4 or self.images.shape[-1] != 3:
      raise ValueError(f"images must have shape (N, H, W, 3), got {self.images.shape}")
    n = self.images.shape[0]
    if self.labels.shape != (n,):
      raise ValueError(f"labels must have shape ({n},), got {self.labels.shape}")
    if self.source_index is not None and self.source_index.shape != (n,):
      raise ValueError(f"source_index must have shape ({n},), got {self.source_index.shape}")
    if self.boxes is not None and self.boxes.shape != (n, 4):
      raise ValueError(f"boxes must have shape ({n}, 4), got {self.boxes.shape}")
    for array in (self.images, self.labels, self.source_index, self.boxes):
      if array is not None:
        array.setflags(write=False)

  def __len__(self) -> int:
    return self.images.shape[0]

  @property
  def image_size(self) -> int:
    return self.images.shape[1]


def load(
    name: str,
    split: str,
    *,
    image_size: int | None = None,
    num_examples: int | None = None,
    seed: int = 0,
) -> ArrayDataset:
  """Builds one split of an embedded dataset, without network access.

  Args:
    name: one of DATASETS.
    split: one of SPLITS.
    image_size: side S of the square images, >= 8. Defaults to 32 for digits and 224 for
      cluttered_digits.
    num_examples: number of examples N. For digits, at most the split's number of source
      digits (default: all of them, 1258 / 180 / 359); the seed picks which and their order.
      For cluttered_digits, any positive number (default 5000 / 500 / 1000); each example
      draws a digit from its split's pool, so digits repeat when N exceeds the pool.
    seed: non-negative int; the same seed gives identical arrays.

  Returns:
    An ArrayDataset with images (N, S, S, 3) float32 in [0, 1] and labels (N,) int32.
  """
  _check_choice("name", name, DATASETS)
  _check_choice("split", split, SPLITS)
  _check_int("seed", seed, minimum=0)
  if image_size is None:
    image_size = DEFAULT_IMAGE_SIZE[name]
  _check_int("image_size", image_size, minimum=MIN_IMAGE_SIZE)
  if num_examples is not None:
    _check_int("num_examples", num_examples, minimum=1)
  if name == "digits":
    return _build_digits(split, image_size, num_examples, seed)
  if num_examples is None:
    num_examples = DEFAULT_NUM_EXAMPLES[split]
  if name == "photo_crops":
    return _build_photo_crops(split, image_size, num_examples, seed)
  return _build_cluttered_digits(split, image_size, num_examples, seed)


def iterate_batches(
    ds: ArrayDataset,
    batch_size: int,
    *,
    seed: int = 0,
    epoch_offset: int = 0,
    num_epochs: int | None = 1,
    shuffle: bool = True,
    drop_remainder: bool = True,
) -> Iterator[dict[str, np.ndarray]]:
  """Batches of a dataset, epoch after epoch; bad arguments raise here, not at the first batch.

  Each epoch e (counting from epoch_offset) visits every example once, in an order that is a
  pure function of (seed, e) when shuffle is on and in dataset order otherwise, so
  ``epoch_offset=e`` resumes at epoch e.

  Args:
    ds: the dataset.
    batch_size: B, positive.
    seed: seed of the per-epoch permutations.
    epoch_offset: index of the first epoch.
    num_epochs: how many epochs to yield; None yields forever.
    shuffle: permute the examples in each epoch.
    drop_remainder: drop each epoch's last partial batch. When False, that batch is padded to
      B with zeros and every batch carries a "mask".

  Returns:
    An iterator of {"image": (B, H, W, 3) float32, "label": (B,) int32} and, without
    drop_remainder, "mask": (B,) bool, True for real examples.
  """
  _check_int("batch_size", batch_size, minimum=1)
  _check_int("seed", seed, minimum=0)
  _check_int("epoch_offset", epoch_offset, minimum=0)
  if num_epochs is not None:
    _check_int("num_epochs", num_epochs, minimum=1)
  n = len(ds)
  if drop_remainder and batch_size > n:
    raise ValueError(
        f"batch_size must be at most the dataset size {n} with drop_remainder=True "
        f"(else no batch is yielded), got {batch_size}")
  return _batches(ds, batch_size, seed, epoch_offset, num_epochs, shuffle, drop_remainder)


def _batches(
    ds: ArrayDataset, batch_size: int, seed: int, epoch_offset: int, num_epochs: int | None,
    shuffle: bool, drop_remainder: bool) -> Iterator[dict[str, np.ndarray]]:
  """The generator behind iterate_batches, which checks its arguments before the first batch."""
  n = len(ds)
  stop = n - n % batch_size if drop_remainder else n
  epoch = epoch_offset
  while num_epochs is None or epoch < epoch_offset + num_epochs:
    if shuffle:
      order = epoch_permutation(n, seed, epoch)
    else:
      order = np.arange(n)
    for start in range(0, stop, batch_size):
      index = order[start:start + batch_size]
      batch = {"image": ds.images[index], "label": ds.labels[index]}
      yield batch if drop_remainder else _pad_batch(batch, batch_size)
    epoch += 1


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """(N,) int: the order in which shuffled iterate_batches visits the examples in `epoch`."""
  return np.random.default_rng((_BATCH_SALT, seed, epoch)).permutation(num_examples)


def _pad_batch(batch: dict[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
  """Pads every (b, ...) array to (B, ...) with zeros and adds "mask": (B,) bool."""
  real = batch["label"].shape[0]
  padded = {}
  for key, value in batch.items():
    padded[key] = np.zeros((batch_size,) + value.shape[1:], value.dtype)
    padded[key][:real] = value
  padded["mask"] = np.arange(batch_size) < real
  return padded


def _check_choice(field: str, value: object, choices: tuple[str, ...]) -> None:
  if not isinstance(value, str) or value not in choices:
    raise ValueError(f"{field} must be one of {choices}, got {value!r}")


def _check_int(field: str, value: object, *, minimum: int) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise ValueError(f"{field} must be an int >= {minimum}, got {value!r}")


# --- source digits and splits ----------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _source_digits() -> tuple[np.ndarray, np.ndarray]:
  """scikit-learn's digits: (1797, 8, 8) float32 in [0, 1] and (1797,) int32 targets."""
  from sklearn.datasets import load_digits

  digits = load_digits()
  images = (digits.images / 16.0).astype(np.float32)
  targets = digits.target.astype(np.int32)
  images.setflags(write=False)
  targets.setflags(write=False)
  return images, targets


@functools.lru_cache(maxsize=1)
def _split_source_indices() -> dict[str, np.ndarray]:
  """Disjoint source-digit indices of each split, stratified by class, from a fixed seed."""
  _, targets = _source_digits()
  rng = np.random.default_rng(_SPLIT_PERMUTATION_SEED)
  parts = {split: [] for split in SPLITS}
  for label in range(NUM_CLASSES):
    members = rng.permutation(np.flatnonzero(targets == label))
    bounds = np.round(np.cumsum((0.0,) + _SPLIT_FRACTIONS) * len(members)).astype(int)
    for split, lo, hi in zip(SPLITS, bounds[:-1], bounds[1:]):
      parts[split].append(members[lo:hi])
  indices = {}
  for split in SPLITS:
    indices[split] = rng.permutation(np.concatenate(parts[split])).astype(np.int32)
    indices[split].setflags(write=False)
  return indices


def split_source_indices(split: str) -> np.ndarray:
  """(M,) int32 indices into scikit-learn's load_digits() of the digits a split draws from."""
  _check_choice("split", split, SPLITS)
  return _split_source_indices()[split]


def _interp_matrix(coords: np.ndarray, source_len: int) -> np.ndarray:
  """(L, source_len) float32 linear-interpolation weights sampling a source at coords (L,).

  coords are in source pixels with pixel centres at integers, clamped to the source (the edge
  pixel repeats).
  """
  coords = np.clip(coords, 0.0, source_len - 1)
  lo = np.floor(coords).astype(np.int64)
  hi = np.minimum(lo + 1, source_len - 1)
  frac = coords - lo
  grid = np.arange(source_len)
  weights = ((grid == lo[:, None]) * (1.0 - frac[:, None])
             + (grid == hi[:, None]) * frac[:, None])
  return weights.astype(np.float32)


def _centres(size: int, source_len: int) -> np.ndarray:
  """(size,) source coordinates of the pixel centres of a resize to size (half-pixel rule)."""
  return (np.arange(size) + 0.5) * (source_len / size) - 0.5


def resize_bilinear(images: np.ndarray, size: int) -> np.ndarray:
  """Resizes (N, h, w) images to (N, size, size) float32, bilinear with half-pixel centres.

  For upsampling this equals jax.image.resize(..., method="linear").
  """
  _, h, w = images.shape
  rows = _interp_matrix(_centres(size, h), h)  # (size, h)
  cols = _interp_matrix(_centres(size, w), w)  # (size, w)
  return np.einsum("ih,nhw,jw->nij", rows, images.astype(np.float32), cols, optimize=True)


def _build_digits(
    split: str, image_size: int, num_examples: int | None, seed: int) -> ArrayDataset:
  pool = split_source_indices(split)
  if num_examples is None:
    num_examples = len(pool)
  if num_examples > len(pool):
    raise ValueError(
        f"num_examples must be at most {len(pool)} for digits split {split!r} (its number of "
        f"source digits), got {num_examples}")
  rng = np.random.default_rng((_DATASET_SALT["digits"], seed, _SPLIT_ID[split]))
  source = rng.permutation(pool)[:num_examples].astype(np.int32)
  digits8, targets = _source_digits()
  grey = np.clip(resize_bilinear(digits8[source], image_size), 0.0, 1.0)
  return ArrayDataset(
      images=np.repeat(grey[..., None], 3, axis=-1), labels=targets[source],
      num_classes=NUM_CLASSES, name="digits", split=split, source_index=source)


# --- cluttered digits -------------------------------------------------------------------------


def _background_loaders() -> dict[str, Callable[[], np.ndarray]]:
  import skimage.data as skd

  loaders = {name: getattr(skd, name) for name in BACKGROUNDS if name != "motorcycle"}
  loaders["motorcycle"] = lambda: skd.stereo_motorcycle()[0]
  return loaders


def _as_rgb01(photo: np.ndarray) -> np.ndarray:
  """(H, W) or (H, W, 3|4) uint8 or float photo -> (H, W, 3) float32 in [0, 1]."""
  photo = np.asarray(photo)
  photo = photo.astype(np.float32) / (255.0 if photo.dtype == np.uint8 else 1.0)
  if photo.ndim == 2:
    photo = np.repeat(photo[..., None], 3, axis=-1)
  return np.clip(photo[..., :3], 0.0, 1.0)


def _resize_rgb(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """(H, W, 3) -> (height, width, 3) float32.

  Halves by 2x2 means while the image stays at least twice the target (that is the
  anti-aliasing), then resamples bilinearly with half-pixel centres.
  """
  image = image.astype(np.float32)
  while image.shape[0] >= 2 * height and image.shape[1] >= 2 * width:
    h, w = image.shape[0] // 2 * 2, image.shape[1] // 2 * 2
    image = image[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).mean(axis=(1, 3))
  for axis, size in ((0, height), (1, width)):
    source_len = image.shape[axis]
    coords = np.clip(_centres(size, source_len), 0, source_len - 1)
    lo = np.floor(coords).astype(np.int64)
    hi = np.minimum(lo + 1, source_len - 1)
    frac = (coords - lo).astype(np.float32).reshape((-1, 1, 1) if axis == 0 else (1, -1, 1))
    image = np.take(image, lo, axis) * (1.0 - frac) + np.take(image, hi, axis) * frac
  return image


def _crop_fractions() -> np.ndarray:
  """(L,) increasing fractions of a photo's shorter side that a crop covers."""
  return np.geomspace(*_CROP_SIDE_FRACTION, _CROP_LEVELS)


@functools.lru_cache(maxsize=2)
def _background_pyramid(image_size: int) -> tuple[tuple[np.ndarray, ...], ...]:
  """Every bundled photo at every crop scale: [photo][level] (H, W, 3) uint8.

  At level l a photo's shorter side is image_size / _crop_fractions()[l], so an image_size
  window of it is a crop covering that fraction of the photo.
  """
  loaders = _background_loaders()
  pyramid = []
  for name in BACKGROUNDS:
    photo = _as_rgb01(loaders[name]())
    levels = []
    for fraction in _crop_fractions():
      scale = image_size / (fraction * min(photo.shape[:2]))
      height = max(image_size, round(photo.shape[0] * scale))
      width = max(image_size, round(photo.shape[1] * scale))
      photo = _resize_rgb(photo, height, width)  # from the previous, larger level: cheap
      level = np.round(np.clip(photo, 0.0, 1.0) * 255.0).astype(np.uint8)
      level.setflags(write=False)
      levels.append(level)
    pyramid.append(tuple(levels))
  return tuple(pyramid)


def _cluttered_params(seed: int, split: str, num_examples: int) -> dict[str, np.ndarray]:
  """Resolution-free scene parameters of examples 0..N-1, each a function of its index.

  Returns:
    (N,) arrays: source (digit index), background (photo index), level (crop scale), crop_y,
    crop_x, flip, digit_side, digit_y, digit_x, brightness, saturation, hue, digit_saturation.
  """
  pool = split_source_indices(split)
  blocks = []
  for block in range(-(-num_examples // _PARAM_BLOCK)):
    rng = np.random.default_rng(
        (_DATASET_SALT["cluttered_digits"], seed, _SPLIT_ID[split], block))
    n = _PARAM_BLOCK
    blocks.append({
        "source": pool[rng.integers(len(pool), size=n)],
        "background": rng.integers(len(BACKGROUNDS), size=n),
        "level": rng.integers(_CROP_LEVELS, size=n),
        "crop_y": rng.uniform(size=n),
        "crop_x": rng.uniform(size=n),
        "flip": rng.integers(2, size=n).astype(bool),
        "digit_side": rng.uniform(*_DIGIT_SIDE_FRACTION, size=n),
        "digit_y": rng.uniform(size=n),
        "digit_x": rng.uniform(size=n),
        "brightness": rng.uniform(*_BACKGROUND_BRIGHTNESS, size=n),
        "saturation": rng.uniform(*_BACKGROUND_SATURATION, size=n),
        "hue": rng.uniform(size=n),
        "digit_saturation": rng.uniform(*_DIGIT_SATURATION, size=n),
    })
  return {key: np.concatenate([b[key] for b in blocks])[:num_examples] for key in blocks[0]}


def _window_start(fraction: np.ndarray, room: np.ndarray) -> np.ndarray:
  """Integer start in [0, room) from a fraction in [0, 1)."""
  return np.minimum(np.floor(fraction * room), room - 1).astype(np.int64)


def _digit_boxes(params: dict[str, np.ndarray], image_size: int) -> np.ndarray:
  """(N, 4) int32 (top, left, height, width) of the digits in images of side image_size."""
  side = np.maximum(2, np.round(params["digit_side"] * image_size)).astype(np.int64)
  top = _window_start(params["digit_y"], image_size - side + 1)
  left = _window_start(params["digit_x"], image_size - side + 1)
  return np.stack([top, left, side, side], axis=1).astype(np.int32)


def _hsv_to_rgb(hue: np.ndarray, saturation: np.ndarray) -> np.ndarray:
  """(N,) hue, saturation in [0, 1] at value 1 -> (N, 3) float32 RGB."""
  k = (np.array([5.0, 3.0, 1.0]) + hue[:, None] * 6.0) % 6.0
  ramp = np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
  return (1.0 - saturation[:, None] * ramp).astype(np.float32)


def _colour_matrices(brightness: np.ndarray, saturation: np.ndarray) -> np.ndarray:
  """(N, 3, 3) float32 M with rgb @ M = brightness * (grey + saturation * (rgb - grey))."""
  keep = np.eye(3) * saturation[:, None, None]
  grey = np.full((3, 3), 1.0 / 3.0) * (1.0 - saturation)[:, None, None]
  return ((keep + grey) * brightness[:, None, None]).astype(np.float32)


def _build_cluttered_digits(
    split: str, image_size: int, num_examples: int, seed: int, *, paste_digits: bool = True
) -> ArrayDataset:
  params = _cluttered_params(seed, split, num_examples)
  pyramid = _background_pyramid(image_size)
  boxes = _digit_boxes(params, image_size)
  colours = _hsv_to_rgb(params["hue"], params["digit_saturation"])  # (N, 3)
  # (N, 3, 3) colour transforms that also take the uint8 photos to [0, 1].
  colour_matrices = _colour_matrices(params["brightness"], params["saturation"]) / np.float32(255)
  digits8, targets = _source_digits()
  source = params["source"].astype(np.int32)
  sides = np.unique(boxes[:, 2]).tolist()
  upsample = {side: _interp_matrix(_centres(side, 8), 8) for side in sides}  # (d, 8) each
  images = np.empty((num_examples, image_size, image_size, 3), np.float32)
  for i in range(num_examples):
    photo = pyramid[params["background"][i]][params["level"][i]]
    y = _window_start(params["crop_y"][i], photo.shape[0] - image_size + 1)
    x = _window_start(params["crop_x"][i], photo.shape[1] - image_size + 1)
    crop = photo[y:y + image_size, x:x + image_size]
    if params["flip"][i]:
      crop = crop[:, ::-1]
    np.matmul(crop, colour_matrices[i], out=images[i])
    if paste_digits:
      top, left, side, _ = boxes[i].tolist()
      alpha = (upsample[side] @ digits8[source[i]] @ upsample[side].T)[..., None]  # (d, d, 1)
      region = images[i, top:top + side, left:left + side]
      region += alpha * (colours[i] - region)
      np.clip(region, 0.0, 1.0, out=region)
  return ArrayDataset(
      images=images, labels=targets[source], num_classes=NUM_CLASSES, name="cluttered_digits",
      split=split, source_index=source, boxes=boxes)


# --- photo crops ------------------------------------------------------------------------------


def _build_photo_crops(split: str, image_size: int, num_examples: int, seed: int) -> ArrayDataset:
  """Crops of the split's photos; example i is a pure function of (seed, split, i), as cluttered digits."""
  photos = np.asarray([BACKGROUNDS.index(name) for name in PHOTO_SPLITS[split]])
  pyramid = _background_pyramid(image_size)
  images = np.empty((num_examples, image_size, image_size, 3), np.float32)
  labels = np.empty((num_examples,), np.int32)
  for block in range(-(-num_examples // _PARAM_BLOCK)):
    rng = np.random.default_rng((_DATASET_SALT["photo_crops"], seed, _SPLIT_ID[split], block))
    n = _PARAM_BLOCK
    photo = photos[rng.integers(len(photos), size=n)]
    level = rng.integers(_CROP_LEVELS, size=n)
    crop_y, crop_x = rng.uniform(size=n), rng.uniform(size=n)
    flip = rng.integers(2, size=n).astype(bool)
    for j in range(min(n, num_examples - block * n)):
      i = block * n + j
      source = pyramid[photo[j]][level[j]]
      y = _window_start(crop_y[j], source.shape[0] - image_size + 1)
      x = _window_start(crop_x[j], source.shape[1] - image_size + 1)
      crop = source[y:y + image_size, x:x + image_size]
      images[i] = (crop[:, ::-1] if flip[j] else crop) / np.float32(255)
      labels[i] = photo[j]
  return ArrayDataset(images=images, labels=labels, num_classes=len(BACKGROUNDS), name="photo_crops", split=split)


def bundled_image(name: str) -> np.ndarray:
  """One of scikit-image's bundled images (BACKGROUNDS) at full resolution: (H, W, 3) float32 in [0, 1]."""
  _check_choice("name", name, BACKGROUNDS)
  return _as_rgb01(_background_loaders()[name]())
