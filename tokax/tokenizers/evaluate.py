r"""VTBench-style tokenizer evaluation, offline: reconstruction, detail and text preservation, code usage.

The metrics and suites, for any tokenizer module and its variables; the command line over training
workdirs is tokax.train.evaluate_tokenizer:

  python -m tokax.train.evaluate_tokenizer --workdir /tmp/tok_fsq --workdir /tmp/tok_kl --out /tmp/tok_eval

Suites (all held out from training; images in [0, 1]):
  digits    scikit-learn digits, the test split (32x32)
  photos    crops of the held-out test photos (astronaut, chelsea) at the model's image size
  textures  brick, grass and gravel at native resolution, cut into image_size tiles
  text      scikit-image page() and text() at native resolution, cut into tiles; PSNR and SSIM
            restricted to the text regions (TEXT_MASK below)
Metrics: PSNR (-10 log10 MSE of the clipped reconstruction, per image then averaged; for text,
over the pooled text pixels), SSIM (skimage's default: 7x7 uniform window, K1 0.01, K2 0.03,
sample covariance, data range 1, mean over channels and the window-valid pixels), and for
discrete tokenizers the codebook usage (fraction of codes with bincount > 0 over the whole
suite), the perplexity of that histogram, and bits per image (tokens x bits per token).

TEXT_MASK: pixels on the minority side of the Otsu threshold of the grey image (the glyphs),
dilated by TEXT_DILATION pixels (a square), so strokes and their immediate surround count.

format_table gives one markdown table (a row per tokenizer and suite); image_grid a PNG grid per
tokenizer (rows of originals over reconstructions, one block per suite).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tokax.data import offline
from tokax.tokenizers.tokenizer import Tokenizer, check_images, to_image_range

Array = jax.Array
SSIM_WINDOW = 7
SSIM_K1, SSIM_K2 = 0.01, 0.03
TEXT_DILATION = 2
SUITES: tuple[str, ...] = ("digits", "photos", "textures", "text")

ReconstructFn = Callable[[Any, Array], tuple[Array, Array]]


# --- metrics ----------------------------------------------------------------------------------


def psnr(images: Array, reconstructions: Array) -> Array:
  """(B,) PSNR in dB of (B, H, W, C) images in [0, 1] (data range 1): -10 log10 mean((x - y)^2)."""
  mse = jnp.mean(jnp.square(jnp.asarray(images, jnp.float32) - jnp.asarray(reconstructions, jnp.float32)),
                 axis=(1, 2, 3))
  return -10.0 * jnp.log10(jnp.maximum(mse, 1e-20))


def _box_mean(x: Array, size: int) -> Array:
  """(B, H, W, C) -> (B, H-size+1, W-size+1, C) mean over each size x size window (valid)."""
  total = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, size, size, 1), (1, 1, 1, 1), "VALID")
  return total / (size * size)


def ssim_map(images: Array, reconstructions: Array, *, data_range: float = 1.0) -> Array:
  """SSIM at every window-valid pixel: (B, H, W, C) pairs -> (B, H-6, W-6, C) float32.

  Equals skimage.metrics.structural_similarity(channel_axis=-1, data_range=...) defaults: its
  map is cropped by (win_size - 1) / 2 on each side before averaging, which is this valid map.
  """
  x = jnp.asarray(images, jnp.float32)
  y = jnp.asarray(reconstructions, jnp.float32)
  n = SSIM_WINDOW * SSIM_WINDOW
  cov_norm = n / (n - 1.0)
  ux, uy = _box_mean(x, SSIM_WINDOW), _box_mean(y, SSIM_WINDOW)
  vx = cov_norm * (_box_mean(x * x, SSIM_WINDOW) - ux * ux)
  vy = cov_norm * (_box_mean(y * y, SSIM_WINDOW) - uy * uy)
  vxy = cov_norm * (_box_mean(x * y, SSIM_WINDOW) - ux * uy)
  c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
  return ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))


def ssim(images: Array, reconstructions: Array) -> Array:
  """(B,) mean SSIM of (B, H, W, C) images in [0, 1] (skimage's default definition)."""
  return jnp.mean(ssim_map(images, reconstructions), axis=(1, 2, 3))


def masked_psnr(images: np.ndarray, reconstructions: np.ndarray, mask: np.ndarray) -> float:
  """PSNR over the pooled pixels where mask (B, H, W) is True."""
  err = np.square(np.asarray(images, np.float64) - np.asarray(reconstructions, np.float64)).mean(-1)
  return float(-10.0 * np.log10(max(err[mask].mean(), 1e-20)))


def masked_ssim(images: np.ndarray, reconstructions: np.ndarray, mask: np.ndarray) -> float:
  """Mean SSIM map (averaged over channels) over the pooled window-valid pixels where mask (B, H, W) is True."""
  pad = (SSIM_WINDOW - 1) // 2
  values = np.asarray(ssim_map(images, reconstructions)).mean(-1)
  inner = mask[:, pad:mask.shape[1] - pad, pad:mask.shape[2] - pad]
  return float(values[inner].mean())


def text_mask(grey: np.ndarray, *, dilation: int = TEXT_DILATION) -> np.ndarray:
  """(H, W) bool text regions of a grey image: the minority side of its Otsu threshold, dilated."""
  import scipy.ndimage
  import skimage.filters

  dark = grey < skimage.filters.threshold_otsu(grey)
  glyphs = dark if dark.mean() <= 0.5 else ~dark
  if dilation:
    glyphs = scipy.ndimage.binary_dilation(glyphs, structure=np.ones((2 * dilation + 1,) * 2, bool))
  return glyphs


def codebook_stats(codes: np.ndarray, codebook_size: int) -> dict[str, float]:
  """Usage (fraction of the codebook with bincount > 0) and perplexity exp(H) of the code histogram."""
  codes = np.asarray(codes).reshape(-1)
  if codes.size and (codes.min() < 0 or codes.max() >= codebook_size):
    raise ValueError(f"codebook_stats: codes must lie in [0, {codebook_size}); got [{codes.min()}, {codes.max()}]")
  counts = np.bincount(codes, minlength=codebook_size).astype(np.float64)
  probs = counts / max(counts.sum(), 1.0)
  nonzero = probs[probs > 0]
  return {"usage": float(np.mean(counts > 0)), "perplexity": float(np.exp(-np.sum(nonzero * np.log(nonzero))))}


def tiles(image: np.ndarray, size: int) -> np.ndarray:
  """(H, W, C) -> (N, size, size, C): the non-overlapping tiles from the top-left corner (remainders dropped)."""
  rows, cols = image.shape[0] // size, image.shape[1] // size
  if rows == 0 or cols == 0:
    raise ValueError(f"tiles: image {image.shape[:2]} is smaller than the tile size {size}")
  cut = image[:rows * size, :cols * size]
  return cut.reshape(rows, size, cols, size, -1).transpose(0, 2, 1, 3, 4).reshape(rows * cols, size, size, -1)


# --- running a tokenizer ----------------------------------------------------------------------


def codebook_size(model: nn.Module) -> int | None:
  """The quantizer's codebook size, or None for a continuous tokenizer."""
  return int(model.quantizer.codebook_size) if isinstance(model, Tokenizer) else None


def bits_per_token(model: nn.Module) -> float | None:
  return float(model.quantizer.bits_per_token) if isinstance(model, Tokenizer) else None


def make_reconstruct_fn(model: nn.Module) -> ReconstructFn:
  """Jitted (variables, images (B, H, W, 3) in [0, 1]) -> (reconstructions in [0, 1] clipped, codes int32 or (B,) zeros)."""

  def reconstruct(variables, images):
    out = model.apply(variables, images, train=False)
    codes = out.codes if out.codes is not None else jnp.zeros((images.shape[0],), jnp.int32)
    return jnp.clip(to_image_range(out.reconstruction), 0.0, 1.0), codes

  return jax.jit(reconstruct)


@dataclasses.dataclass(frozen=True)
class SuiteResult:
  """Reconstructions of one image set and its metrics (psnr, ssim, [usage, perplexity, bits_per_image])."""
  images: np.ndarray
  reconstructions: np.ndarray
  codes: np.ndarray | None
  metrics: dict[str, float]


def evaluate_images(reconstruct_fn: ReconstructFn, variables: Any, images: np.ndarray, batch_size: int, *,
                    codebook_size: int | None = None, bits_per_token: float | None = None,
                    mask: np.ndarray | None = None) -> SuiteResult:
  """Reconstructs every image (the last batch padded) and measures it.

  Args:
    reconstruct_fn: from make_reconstruct_fn.
    variables: the model's variables.
    images: (N, H, W, 3) float32 in [0, 1].
    batch_size: images per call.
    codebook_size: for usage and perplexity (None: continuous, no code metrics).
    bits_per_token: for bits_per_image.
    mask: (N, H, W) bool; when given, PSNR and SSIM are over the masked pixels only.
  """
  check_images(images, "evaluate")
  n = len(images)
  outputs = []
  for start in range(0, n, batch_size):
    chunk = images[start:start + batch_size]
    padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - len(chunk), 0)]) if len(chunk) < batch_size else chunk
    outputs.append((len(chunk), reconstruct_fn(variables, jnp.asarray(padded))))
  recons = np.concatenate([np.asarray(r)[:k] for k, (r, _) in outputs])
  codes = np.concatenate([np.asarray(c)[:k] for k, (_, c) in outputs])
  if mask is None:
    metrics = {"psnr": float(np.mean(np.asarray(psnr(images, recons)))),
               "ssim": float(np.mean(np.asarray(ssim(images, recons))))}
  else:
    metrics = {"psnr": masked_psnr(images, recons, mask), "ssim": masked_ssim(images, recons, mask)}
  if codebook_size is None:
    return SuiteResult(images, recons, None, metrics)
  metrics.update(codebook_stats(codes, codebook_size))
  if bits_per_token is not None:
    metrics["bits_per_image"] = float(np.prod(codes.shape[1:3]) * bits_per_token)
  return SuiteResult(images, recons, codes, metrics)


def suite_images(name: str, image_size: int, *, num_examples: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
  """(images (N, S, S, 3) in [0, 1], text mask (N, S, S) or None) of one suite; S = 32 for digits."""
  if name == "digits":
    return offline.load("digits", "test", image_size=32, num_examples=num_examples).images, None
  if name == "photos":
    return offline.load("photo_crops", "test", image_size=image_size, num_examples=num_examples or 256).images, None
  if name == "textures":
    images = np.concatenate([tiles(offline.bundled_image(t), image_size) for t in offline.TEXTURES])
    return images[:num_examples], None
  if name == "text":
    images, masks = [], []
    for t in offline.TEXT_IMAGES:
      image = offline.bundled_image(t)
      images.append(tiles(image, image_size))
      masks.append(tiles(text_mask(image.mean(-1))[..., None], image_size)[..., 0])
    return np.concatenate(images)[:num_examples], np.concatenate(masks)[:num_examples]
  raise ValueError(f"evaluate: unknown suite {name!r}; expected some of {SUITES}")


def evaluate_tokenizer(model: nn.Module, variables: Any, *, image_size: int, batch_size: int = 64,
                       suites: tuple[str, ...] = SUITES, num_examples: int | None = None) -> dict[str, SuiteResult]:
  """Every suite's SuiteResult, plus "all": code usage and perplexity over all suites' codes together."""
  factor = model.downsample_factor
  reconstruct_fn = make_reconstruct_fn(model)
  results = {}
  all_codes = []
  for name in suites:
    images, mask = suite_images(name, image_size, num_examples=num_examples)
    if images.shape[1] % factor:
      raise ValueError(f"evaluate: suite {name!r} has {images.shape[1]}px images, not a multiple of the "
                       f"tokenizer's downsampling factor {factor}")
    results[name] = evaluate_images(reconstruct_fn, variables, images, batch_size, codebook_size=codebook_size(model),
                                    bits_per_token=bits_per_token(model), mask=mask)
    if results[name].codes is not None:
      all_codes.append(results[name].codes.reshape(-1))
  if all_codes:
    stats = codebook_stats(np.concatenate(all_codes), codebook_size(model))
    results["all"] = SuiteResult(np.zeros((0,)), np.zeros((0,)), None, stats)
  return results


def image_grid(results: dict[str, SuiteResult], *, per_suite: int = 8, pad: int = 2) -> np.ndarray:
  """(H, W, 3) float32 grid: for each suite a row of originals above a row of reconstructions.

  Images of different sizes are placed top-left in cells as large as the largest; padding is white.
  """
  rows = [(r.images[:per_suite], r.reconstructions[:per_suite]) for r in results.values() if len(r.images)]
  cell = max(max(a.shape[1] for a, _ in rows), max(a.shape[2] for a, _ in rows)) + pad
  width = per_suite * cell + pad
  grid = np.ones((2 * len(rows) * cell + pad, width, 3), np.float32)
  for r, (originals, recons) in enumerate(rows):
    for line, images in enumerate((originals, recons)):
      for c, image in enumerate(images):
        top, left = (2 * r + line) * cell + pad, c * cell + pad
        grid[top:top + image.shape[0], left:left + image.shape[1]] = np.clip(image, 0.0, 1.0)
  return grid


def format_table(rows: list[dict[str, Any]]) -> str:
  """A markdown table of evaluation rows ({"tokenizer", "suite", metrics...}); '-' where a metric is absent."""
  columns = ["tokenizer", "suite", "psnr", "ssim", "usage", "perplexity", "bits_per_image"]
  fmt = lambda v: "-" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))
  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(fmt(row.get(c)) for c in columns) + " |" for row in rows]
  return "\n".join(lines)
