"""Glyphs: an embedded classification dataset of unbounded size, rendered from installed fonts.

Each example is one character (CLASSES: digits and upper-case letters without the confusable ones,
DROPPED says why each is out) rendered with PIL from a TrueType font that ships with matplotlib
(FONT_FILES: DejaVu Sans / Sans Mono / Serif in four weights and slants, STIX General in four,
Computer Modern roman, sans, typewriter, bold and italic), then warped and pasted on a random crop
of one of scikit-image's bundled photos and textures (tokax.data.offline.BACKGROUNDS, the crops
and colour jitter of ``cluttered_digits``). The draws of one example:

- class (uniform), font, stroke width (PIL stroke_width: 0-4% of the font size), side (the
  glyph's longer side is 25-45% of the image's, so most patch tokens are background), rotation
  (+-20 deg: small enough that 6/9, M/W and N/Z stay apart), horizontal shear (+-0.25), position;
- colour: either a bright glyph (value 0.85-1) on a background dimmed to 35-65% brightness or a
  dark glyph (value 0-0.2) on a background lifted into 45-100% (gain 30-55%), hue uniform, glyph saturation
  0.3-0.7, opacity 0.85-1;
- background: photo, crop scale (one of 6, 40-90% of the photo's shorter side), crop position,
  mirror, brightness and saturation (0.3-0.7);
- optional distractors (``distractors=k``: up to k per image, 0 by default): smaller (8-16%),
  fainter (opacity 0.35-0.7) characters from DISTRACTORS, which holds no class character nor
  any look-alike of one, painted under the class glyph.

Determinism: example i of split s is a pure function of (seed, s, i): its draws are the uint32
words of np.random.SeedSequence((salt, seed, split id, i)), so the streams of the splits are
disjoint (the split id is part of the entropy), any subset of indices can be built in any order
or batch, and asking for more examples never changes the earlier ones. ``image_size`` changes only
the resolution of the same scene (glyph masks are rendered once per (font, character, stroke,
size) and cached; rotation, shear and scale are one affine warp of that small mask). Pins in
tests/data/test_glyphs.py hold for the FreeType build of the pinned Pillow; another FreeType may
move edge pixels.

Fonts that fail to load (missing or corrupt file, or lacking a class or distractor character) are
skipped, never raised mid-training: ``available_fonts().skipped`` says which and why, and an
example that drew a skipped font uses the next loaded one in FONT_FILES' order.

  source = GlyphSource("train", num_examples=1_000_000, image_size=224)  # a pipeline Source
  source[7]   # {"image": (224, 224, 3) uint8, "label": int}
  images, labels = build("val", 512, image_size=112)   # (512, 112, 112, 3) uint8, (512,) int32
  pipeline.get_source("glyphs", "train", image_size=224, num_examples=...)   # the same Source
  embedded.load("glyphs", "test", image_size=64)   # an offline.ArrayDataset (float32)
"""
from __future__ import annotations

import colorsys
import dataclasses
import functools
import math
import os
from typing import Any

import numpy as np

from tokax.data import offline

# Class characters. Lower case is out entirely (c/C, k/K, o/O, p/P, s/S, u/U, v/V, w/W, x/X, z/Z
# differ only in size, and b/d/p/q, n/u are rotations of one another).
CLASSES: str = "1346789ABCDEFGHJKLMNOPQRSTUVWXYZ"
DROPPED: dict[str, str] = {
    "0": "O in most fonts (kept O)",
    "I": "1 and l in sans-serif fonts, a bare bar (kept 1)",
    "2": "Z in italic and sheared renders (kept Z)",
    "5": "S in bold and sheared renders (kept S)",
}
NUM_CLASSES = len(CLASSES)
# Distractor characters: no class, and no look-alike of one at any size (no y/Y, f/F, t/T, $/S, ...).
DISTRACTORS: str = "aehmnr#%&?@+="

# Under matplotlib.get_data_path()/fonts/ttf (an absolute path is used as is). Left out: the
# Display subsets and STIXNonUni / STIXSiz* (no letters), cmex10 / cmsy10 (symbols at ASCII code
# points), cmmi10 (old-style digits), LastResortHE (placeholder boxes).
FONT_FILES: tuple[str, ...] = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf",
    "DejaVuSansMono-BoldOblique.ttf",
    "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf",
    "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf",
    "cmr10.ttf", "cmss10.ttf", "cmtt10.ttf", "cmb10.ttf", "cmti10.ttf",
)

SPLITS: tuple[str, ...] = offline.SPLITS
DEFAULT_IMAGE_SIZE = 224
DEFAULT_NUM_EXAMPLES: dict[str, int] = dict(offline.DEFAULT_NUM_EXAMPLES)
MAX_INDEX = 2 ** 31  # indices and seeds are in [0, MAX_INDEX)
MAX_DISTRACTORS = 4

_SALT = 0x474C5950
_SPLIT_ID = {split: i for i, split in enumerate(SPLITS)}
_SIDE = (0.25, 0.45)  # glyph's longer side, of the image side
_DISTRACTOR_SIDE = (0.08, 0.16)
_ROTATION_DEG = 20.0
_SHEAR = 0.25
_STROKE_FRACTIONS = (0.0, 0.013, 0.026, 0.04)  # of the font size
_EM_PER_SIDE = 1.4  # font size / rendered glyph side (cap height is ~0.72 em)
_BRIGHT_GLYPH_PROBABILITY = 0.6
_BRIGHT_GLYPH_GAIN = (0.35, 0.65)  # background brightness under a bright glyph
_DARK_GLYPH_GAIN = (0.3, 0.55)  # ... under a dark glyph, on top of _DARK_LIFT (at most full scale)
_BACKGROUND_SATURATION = (0.3, 0.7)
_DARK_LIFT = 0.45  # of full scale, added to the background under a dark glyph
_GLYPH_SATURATION = (0.3, 0.7)  # capped so that blue and purple glyphs stay bright
_BRIGHT_VALUE, _DARK_VALUE = (0.85, 1.0), (0.0, 0.2)
_OPACITY, _DISTRACTOR_OPACITY = (0.85, 1.0), (0.35, 0.7)

# Positions of the uniform draws in an example's word vector.
(_LABEL, _FONT, _STROKE, _SIDE_U, _ROTATION, _SHEAR_U, _Y, _X, _HUE, _SATURATION, _POLARITY, _VALUE,
 _OPACITY_U, _PHOTO, _LEVEL, _CROP_Y, _CROP_X, _FLIP, _BRIGHTNESS, _BG_SATURATION, _COUNT) = range(21)
_DISTRACTOR_FIELDS = 7  # char, font, side, y, x, rotation, opacity
_NUM_DRAWS = 21 + MAX_DISTRACTORS * _DISTRACTOR_FIELDS


# --- argument checks --------------------------------------------------------------------------


def _check_int(field: str, value: object, lo: int, hi: int) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value < hi:
    raise ValueError(f"glyphs: {field} must be an int in [{lo}, {hi}), got {value!r}")
  return int(value)


def _check_split(split: object) -> str:
  if not isinstance(split, str) or split not in _SPLIT_ID:
    raise ValueError(f"glyphs: split must be one of {SPLITS}, got {split!r}")
  return split


def _check_indices(indices: Any) -> np.ndarray:
  """(N,) int64 from a sequence of ints, each in [0, MAX_INDEX)."""
  array = np.asarray(indices)
  if array.ndim != 1 or (array.size and not np.issubdtype(array.dtype, np.integer)):
    raise ValueError(f"glyphs: index must be a 1-D sequence of ints, got {indices!r:.80}")
  if array.size and (array.min() < 0 or array.max() >= MAX_INDEX):
    bad = array[(array < 0) | (array >= MAX_INDEX)][0]
    raise ValueError(f"glyphs: index must be in [0, {MAX_INDEX}), got {int(bad)}")
  return array.astype(np.int64)


# --- fonts and glyph masks --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FontSet:
  """The fonts of FONT_FILES that load on this machine.

  Attributes:
    paths: FONT_FILES resolved; paths[f] for every f.
    fallback: (len(FONT_FILES),) font used for each FONT_FILES slot: itself when it loaded, else
      the next loaded one (cyclically).
    loaded: names (FONT_FILES entries) that loaded.
    skipped: {name: reason} of those that did not.
  """

  paths: tuple[str, ...]
  fallback: tuple[int, ...]
  loaded: tuple[str, ...]
  skipped: dict[str, str]


def font_dir() -> str:
  """matplotlib's bundled TrueType fonts folder."""
  import matplotlib  # noqa: PLC0415

  return os.path.join(matplotlib.get_data_path(), "fonts", "ttf")


def _font_problem(path: str) -> str | None:
  """Why the font at `path` cannot serve (None if it can): load failure or missing characters."""
  from PIL import ImageFont  # noqa: PLC0415

  try:
    font = ImageFont.truetype(path, 24)
    from matplotlib import ft2font  # noqa: PLC0415

    charmap = ft2font.FT2Font(path).get_charmap()
  except Exception as e:  # noqa: BLE001 (any failure to load skips the font)
    return f"{type(e).__name__}: {e}"
  missing = "".join(c for c in CLASSES + DISTRACTORS if ord(c) not in charmap)
  if missing:
    return f"lacks characters {missing!r}"
  if font.getbbox(CLASSES[0])[2] <= 0:
    return "renders empty glyphs"
  return None


@functools.lru_cache(maxsize=8)
def _load_fonts(directory: str, files: tuple[str, ...]) -> FontSet:
  paths = tuple(os.path.join(directory, name) for name in files)
  problems = {name: _font_problem(path) for name, path in zip(files, paths)}
  ok = [f for f, name in enumerate(files) if problems[name] is None]
  if not ok:
    raise ValueError(f"glyphs: no font of FONT_FILES loads from {directory!r}: {problems}")
  fallback = tuple(f if f in ok else next((g for g in ok if g > f), ok[0]) for f in range(len(files)))
  return FontSet(paths=paths, fallback=fallback, loaded=tuple(files[f] for f in ok),
                 skipped={name: why for name, why in problems.items() if why is not None})


def available_fonts() -> FontSet:
  """The FontSet of FONT_FILES on this machine (loaded once per process)."""
  return _load_fonts(font_dir(), FONT_FILES)


@functools.lru_cache(maxsize=256)
def _truetype(path: str, size: int):
  from PIL import ImageFont  # noqa: PLC0415

  return ImageFont.truetype(path, size)


@functools.lru_cache(maxsize=16384)
def glyph_mask(path: str, char: str, font_size: int, stroke: int) -> np.ndarray:
  """(h, w) uint8 coverage of `char` in the font at `path`, cropped to its ink; read-only."""
  from PIL import Image, ImageDraw  # noqa: PLC0415

  font = _truetype(path, font_size)
  left, top, right, bottom = font.getbbox(char, stroke_width=stroke)
  pad = 2
  canvas = Image.new("L", (right - left + 2 * pad, bottom - top + 2 * pad), 0)
  ImageDraw.Draw(canvas).text((pad - left, pad - top), char, fill=255, font=font, stroke_width=stroke,
                              stroke_fill=255)
  mask = np.asarray(canvas)
  rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
  if rows.size == 0:
    mask = np.zeros((1, 1), np.uint8)
  else:
    mask = np.ascontiguousarray(mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1])
  mask.setflags(write=False)
  return mask


def warp_mask(mask: np.ndarray, side: float, rotation_deg: float, shear: float) -> np.ndarray:
  """(h, w) uint8 mask -> (H, W) uint8: scaled so its longer side is `side` px, sheared, rotated.

  One bilinear affine warp (PIL); the output is the bounding box of the warped mask.
  """
  from PIL import Image  # noqa: PLC0415

  h, w = mask.shape
  scale = side / max(h, w)
  theta = math.radians(rotation_deg)
  cos, sin = math.cos(theta), math.sin(theta)
  # forward (centred coordinates): scale * rotation @ [[1, shear], [0, 1]]; its bounding box
  out_w = int(math.ceil(scale * (abs(cos) * w + abs(cos * shear - sin) * h))) + 2
  out_h = int(math.ceil(scale * (abs(sin) * w + abs(sin * shear + cos) * h))) + 2
  # inverse: [[1, -shear], [0, 1]] @ rotation(-theta) / scale, output centre -> input centre
  a, b = (cos + shear * sin) / scale, (sin - shear * cos) / scale
  d, e = -sin / scale, cos / scale
  data = (a, b, w / 2.0 - a * out_w / 2.0 - b * out_h / 2.0, d, e, h / 2.0 - d * out_w / 2.0 - e * out_h / 2.0)
  return np.asarray(Image.fromarray(mask).transform((out_w, out_h), Image.AFFINE, data, resample=Image.BILINEAR))


# --- draws ------------------------------------------------------------------------------------


def example_draws(seed: int, split: str, index: int) -> np.ndarray:
  """(_NUM_DRAWS,) float64 uniforms in [0, 1): every random choice of one example."""
  words = np.random.SeedSequence((_SALT, seed, _SPLIT_ID[split], index)).generate_state(_NUM_DRAWS)
  return words.astype(np.float64) / 2.0 ** 32


def _between(u: float, bounds: tuple[float, float]) -> float:
  return bounds[0] + u * (bounds[1] - bounds[0])


def _pick(u: float, n: int) -> int:
  return min(int(u * n), n - 1)


def label_of(draws: np.ndarray) -> int:
  """The class index of an example from its draws."""
  return _pick(draws[_LABEL], NUM_CLASSES)


# --- rendering --------------------------------------------------------------------------------


def _font_sizes(image_size: int) -> tuple[int, int]:
  """Font sizes (class, distractor) at which masks are rendered for one image size."""
  return (max(8, round(_SIDE[1] * image_size * _EM_PER_SIDE)),
          max(8, round(_DISTRACTOR_SIDE[1] * image_size * _EM_PER_SIDE)))


def _paste(canvas: np.ndarray, alpha: np.ndarray, y_u: float, x_u: float, colour: np.ndarray) -> tuple[int, ...]:
  """Blends colour into canvas (S, S, 3) float32 with alpha (h, w) float32; returns the box (top, left, h, w)."""
  size = canvas.shape[0]
  h, w = min(alpha.shape[0], size), min(alpha.shape[1], size)
  top, left = _pick(y_u, size - h + 1), _pick(x_u, size - w + 1)
  alpha = alpha[:h, :w]
  for c in range(3):  # per channel: broadcasting alpha over a last axis of 3 is several times slower
    region = canvas[top:top + h, left:left + w, c]
    region += alpha * (colour[c] - region)
  return top, left, h, w


def _glyph_colour(draws: np.ndarray, bright: bool) -> np.ndarray:
  """(3,) float32 glyph colour on the 0..255 scale."""
  value = _between(draws[_VALUE], _BRIGHT_VALUE if bright else _DARK_VALUE)
  rgb = colorsys.hsv_to_rgb(draws[_HUE], _between(draws[_SATURATION], _GLYPH_SATURATION), value)
  return np.array(rgb, np.float32) * np.float32(255.0)


@functools.lru_cache(maxsize=2)
def _pyramids(image_size: int) -> tuple[tuple[tuple[tuple[np.ndarray, np.ndarray], ...], ...], ...]:
  """offline's background pyramid and its mirror image: [flip][photo][level] -> (rgb, grey).

  rgb (H, W, 3) uint8 is the photo at that crop scale, grey (H, W, 3) uint8 its channel mean
  (rounded) in all three channels, for the saturation jitter. Both made once here: casting a
  mirrored (negative-stride) crop, or broadcasting an (H, W) grey over channels, costs several
  times the whole jitter.
  """
  pyramid = offline._background_pyramid(image_size)
  result = []
  for flip in (False, True):
    photos = []
    for levels in pyramid:
      pairs = []
      for level in levels:
        rgb = np.ascontiguousarray(level[:, ::-1]) if flip else level
        mean = (rgb.sum(axis=-1, dtype=np.uint16) + 1) // 3
        grey = np.repeat(mean.astype(np.uint8)[..., None], 3, axis=-1)
        rgb.setflags(write=False)
        grey.setflags(write=False)
        pairs.append((rgb, grey))
      photos.append(tuple(pairs))
    result.append(tuple(photos))
  return tuple(result)


def _background(draws: np.ndarray, image_size: int, bright: bool) -> np.ndarray:
  """(S, S, 3) float32 on the 0..255 scale, +0.5 (rounding by truncation): a jittered photo crop.

  gain * (grey + saturation * (rgb - grey)) + lift, grey the channel mean; values stay in
  [0.5, 255.5], elementwise float32 only (the bytes do not depend on a BLAS).
  """
  pyramid = _pyramids(image_size)[int(draws[_FLIP] >= 0.5)]
  rgb, grey = pyramid[_pick(draws[_PHOTO], len(pyramid))][_pick(draws[_LEVEL], len(pyramid[0]))]
  y = _pick(draws[_CROP_Y], rgb.shape[0] - image_size + 1)
  x = _pick(draws[_CROP_X], rgb.shape[1] - image_size + 1)
  gain = _between(draws[_BRIGHTNESS], _BRIGHT_GLYPH_GAIN if bright else _DARK_GLYPH_GAIN)
  saturation = _between(draws[_BG_SATURATION], _BACKGROUND_SATURATION)
  lift = 0.0 if bright else _DARK_LIFT * 255.0
  canvas = rgb[y:y + image_size, x:x + image_size].astype(np.float32)
  canvas *= np.float32(gain * saturation)
  mixed = grey[y:y + image_size, x:x + image_size].astype(np.float32)
  mixed *= np.float32(gain * (1.0 - saturation))
  mixed += np.float32(lift + 0.5)
  canvas += mixed
  return canvas


def render(draws: np.ndarray, image_size: int, *, distractors: int = 0,
           fonts: FontSet | None = None) -> tuple[np.ndarray, int, tuple[int, ...]]:
  """One example from its draws.

  Returns:
    image (S, S, 3) uint8, label, and the class glyph's box (top, left, height, width) in pixels.
  """
  fonts = fonts or available_fonts()
  font_size, distractor_font_size = _font_sizes(image_size)
  bright = draws[_POLARITY] < _BRIGHT_GLYPH_PROBABILITY
  canvas = _background(draws, image_size, bright)
  colour = _glyph_colour(draws, bright) + np.float32(0.5)
  for d in range(min(_pick(draws[_COUNT], distractors + 1), MAX_DISTRACTORS)):
    c, f, side, y, x, rotation, opacity = draws[21 + d * _DISTRACTOR_FIELDS:21 + (d + 1) * _DISTRACTOR_FIELDS]
    path = fonts.paths[fonts.fallback[_pick(f, len(fonts.paths))]]
    mask = glyph_mask(path, DISTRACTORS[_pick(c, len(DISTRACTORS))], distractor_font_size, 0)
    warped = warp_mask(mask, _between(side, _DISTRACTOR_SIDE) * image_size, (2 * rotation - 1) * _ROTATION_DEG, 0.0)
    alpha = warped.astype(np.float32) * np.float32(_between(opacity, _DISTRACTOR_OPACITY) / 255.0)
    _paste(canvas, alpha, y, x, colour)
  label = label_of(draws)
  path = fonts.paths[fonts.fallback[_pick(draws[_FONT], len(fonts.paths))]]
  stroke = round(_STROKE_FRACTIONS[_pick(draws[_STROKE], len(_STROKE_FRACTIONS))] * font_size)
  warped = warp_mask(glyph_mask(path, CLASSES[label], font_size, stroke),
                     _between(draws[_SIDE_U], _SIDE) * image_size,
                     (2 * draws[_ROTATION] - 1) * _ROTATION_DEG, (2 * draws[_SHEAR_U] - 1) * _SHEAR)
  alpha = warped.astype(np.float32) * np.float32(_between(draws[_OPACITY_U], _OPACITY) / 255.0)
  box = _paste(canvas, alpha, draws[_Y], draws[_X], colour)
  return canvas.astype(np.uint8), label, box  # convex blends of [0.5, 255.5]: truncation rounds


# --- datasets ---------------------------------------------------------------------------------


def generate(split: str, indices: Any, *, image_size: int = DEFAULT_IMAGE_SIZE, seed: int = 0,
             distractors: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The examples `indices` of a split.

  Args:
    split: one of SPLITS.
    indices: (N,) ints in [0, 2**31), any order, repeats allowed.
    image_size: side S, >= 8.
    seed: int in [0, 2**31).
    distractors: at most this many distractor glyphs per image, 0..MAX_DISTRACTORS.

  Returns:
    images (N, S, S, 3) uint8, labels (N,) int32, boxes (N, 4) int32 (top, left, height, width)
    of each class glyph.
  """
  split = _check_split(split)
  indices = _check_indices(indices)
  _check_int("image_size", image_size, offline.MIN_IMAGE_SIZE, 1 << 16)
  seed = _check_int("seed", seed, 0, MAX_INDEX)
  _check_int("distractors", distractors, 0, MAX_DISTRACTORS + 1)
  fonts = available_fonts()
  images = np.empty((len(indices), image_size, image_size, 3), np.uint8)
  labels = np.empty((len(indices),), np.int32)
  boxes = np.empty((len(indices), 4), np.int32)
  for i, index in enumerate(indices.tolist()):
    images[i], labels[i], boxes[i] = render(example_draws(seed, split, index), image_size,
                                            distractors=distractors, fonts=fonts)
  return images, labels, boxes


def build(split: str, num_examples: int, *, image_size: int = DEFAULT_IMAGE_SIZE, seed: int = 0,
          distractors: int = 0, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Examples start..start+N-1 of a split: images (N, S, S, 3) uint8 and labels (N,) int32."""
  _check_int("num_examples", num_examples, 1, MAX_INDEX)
  _check_int("start", start, 0, MAX_INDEX - num_examples + 1)
  images, labels, _ = generate(split, np.arange(start, start + num_examples), image_size=image_size, seed=seed,
                               distractors=distractors)
  return images, labels


class GlyphSource:
  """Examples 0..N-1 of a split, rendered on access: a tokax.data.pipeline Source.

  [i] -> {"image": (S, S, 3) uint8, "label": int}. Pickles without its caches (worker processes).

  Attributes:
    num_classes: NUM_CLASSES.
    info: what the source is: classes, fonts loaded and skipped, split, seed, size, distractors.
    skipped_fonts: {font file: reason} of FONT_FILES that did not load here.
  """

  def __init__(self, split: str = "train", *, num_examples: int | None = None,
               image_size: int | None = None, seed: int = 0, distractors: int = 0):
    self.split = _check_split(split)
    self.num_examples = DEFAULT_NUM_EXAMPLES[split] if num_examples is None else num_examples
    _check_int("num_examples", self.num_examples, 1, MAX_INDEX + 1)
    self.image_size = DEFAULT_IMAGE_SIZE if image_size is None else image_size
    _check_int("image_size", self.image_size, offline.MIN_IMAGE_SIZE, 1 << 16)
    self.seed = _check_int("seed", seed, 0, MAX_INDEX)
    self.distractors = _check_int("distractors", distractors, 0, MAX_DISTRACTORS + 1)
    self.num_classes = NUM_CLASSES
    fonts = available_fonts()
    self.skipped_fonts = dict(fonts.skipped)
    self.info = dict(name="glyphs", split=split, classes=CLASSES, num_examples=self.num_examples,
                     image_size=self.image_size, seed=seed, distractors=distractors, fonts=fonts.loaded,
                     skipped_fonts=self.skipped_fonts)

  def __len__(self) -> int:
    return self.num_examples

  def __getitem__(self, index: int) -> dict[str, Any]:
    index = _check_int("index", index, 0, self.num_examples)
    image, label, _ = render(example_draws(self.seed, self.split, index), self.image_size,
                             distractors=self.distractors)
    return {"image": image, "label": label}


def source(name: str, split: str, **kwargs: Any) -> GlyphSource:
  """GlyphSource from a data name "glyphs" or "glyphs:distractors=<k>" (kwargs as GlyphSource's)."""
  base, _, option = name.partition(":")
  if base != "glyphs" or (option and not option.startswith("distractors=")):
    raise ValueError(f"data.name: expected 'glyphs' or 'glyphs:distractors=<k>', got {name!r}")
  if option:
    try:
      kwargs["distractors"] = int(option.removeprefix("distractors="))
    except ValueError as e:
      raise ValueError(f"data.name: distractors must be an int in {name!r}") from e
  return GlyphSource(split, **kwargs)


def load(name: str, split: str, *, image_size: int | None = None, num_examples: int | None = None,
         seed: int = 0) -> offline.ArrayDataset:
  """The offline.load view: examples 0..N-1 as an ArrayDataset, (N, S, S, 3) float32 in [0, 1].

  name: "glyphs" or "glyphs:distractors=<k>"; N defaults to DEFAULT_NUM_EXAMPLES[split], S to 224.
  """
  src = source(name, split, image_size=image_size, num_examples=num_examples, seed=seed)
  images, labels, boxes = generate(split, np.arange(len(src)), image_size=src.image_size, seed=seed,
                                   distractors=src.distractors)
  return offline.ArrayDataset(images=images.astype(np.float32) / np.float32(255.0), labels=labels,
                              num_classes=NUM_CLASSES, name="glyphs", split=split, boxes=boxes)
