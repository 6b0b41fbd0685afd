"""Fourier-VLM's DCT compressor: keep the low-frequency block of the token grid (Wang et al., 2025).

Equal to whyisverysmart/Fourier-Compressor `fourier_compressor.compress(features, H, W, rh, rw)`
on the same features: the (H, W) token grid
(row-major: token n = h * W + w) of every channel goes through an orthonormal 2-D DCT-II, the
low-frequency (rh, rw) block is kept, and an orthonormal inverse DCT *of the smaller size*
(rh, rw) brings it back to a (rh, rw) grid, flattened row-major. With C_n the orthonormal DCT-II
matrix and E = [I_r 0], that is the fixed token matrix

    T = (C_rh^T E_h C_H) kron (C_rw^T E_w C_W)     (rh*rw, H*W),   X' = T X,

which is not an average: a constant field comes out multiplied by sqrt(H W / (rh rw)) (2 for
LLaVA-1.5's 24x24 -> 12x12), the official code's DC gain. No renormalisation is added.

Deliberate differences, none of which changes a result on valid inputs:
- any float dtype is accepted; the official `compress` raises TypeError unless the input is fp16
  or bf16. Both compute in float32 (float64 stays float64) and cast back to the input dtype.
- tokax applies T as two small matmuls at HIGHEST precision; the official code uses FFTs
  (Makhoul's algorithm). Both are float32 evaluations of the same linear map (~1e-6 apart).
- a kept block larger than the grid is clipped to the grid (the official code raises), as every
  tokax method clips amounts to what exists; keep == grid is the identity.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from tokax.reduction.tokens import DensePlan, Tokens, apply_plan

Array = jax.Array
Pair = tuple[int, int]
_HIGHEST = jax.lax.Precision.HIGHEST


@functools.lru_cache(maxsize=None)
def dct_matrix(n: int) -> np.ndarray:
  """(n, n) float64 orthonormal DCT-II: C[k, t] = s_k cos(pi (2t + 1) k / (2n)), s_0 = sqrt(1/n), else sqrt(2/n).

  Equal to scipy.fft.dct(np.eye(n), type=2, norm="ortho", axis=0); its inverse is C.T.
  """
  k = np.arange(n)[:, None]
  t = np.arange(n)[None, :]
  c = np.cos(np.pi * (2 * t + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
  c[0] /= math.sqrt(2.0)
  c.setflags(write=False)
  return c


def axis_matrix(size: int, keep: int) -> np.ndarray:
  """(keep, size) float64: DCT-II of length size, keep the first `keep` coefficients, inverse DCT of length keep."""
  return dct_matrix(keep).T @ dct_matrix(size)[:keep]


def _pair(value: int | Pair, field: str) -> Pair:
  if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
    pair = (value, value)
  elif isinstance(value, (tuple, list)):
    pair = tuple(value)
  else:
    pair = ()
  if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in pair):
    raise ValueError(f"{field}: expected a positive int or a pair (rows, cols) of them; got {value!r}")
  return int(pair[0]), int(pair[1])


def clip_keep(grid: Pair, keep: int | Pair) -> Pair:
  """The kept low-frequency block (rh, rw), clipped to the grid (H, W)."""
  (h, w), (rh, rw) = _pair(grid, "grid"), _pair(keep, "keep")
  return min(rh, h), min(rw, w)


def keep_from_ratio(grid: Pair, ratio: float) -> Pair:
  """Fraction of each side kept, as the official Qwen2-VL integration: max(int(side * ratio), 1)."""
  if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 < float(ratio) <= 1.0:
    raise ValueError(f"ratio: the fraction of each grid side kept must be in (0, 1]; got {ratio!r}")
  h, w = _pair(grid, "grid")
  return max(int(h * ratio), 1), max(int(w * ratio), 1)


def dc_gain(grid: Pair, keep: int | Pair) -> float:
  """What a constant field is multiplied by: sqrt(H W / (rh rw))."""
  (h, w), (rh, rw) = _pair(grid, "grid"), clip_keep(grid, keep)
  return math.sqrt(h * w / (rh * rw))


def dct_token_matrix(grid: Pair, keep: int | Pair) -> np.ndarray:
  """T (rh*rw, H*W) float64 with X' = T X for row-major token grids: kron(axis_matrix(H, rh), axis_matrix(W, rw))."""
  (h, w), (rh, rw) = _pair(grid, "grid"), clip_keep(grid, keep)
  return np.kron(axis_matrix(h, rh), axis_matrix(w, rw))


def _compute_dtype(x: Array) -> jnp.dtype:
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"x: expected floating-point features; got dtype {x.dtype}. Cast to float32 first")
  return jnp.promote_types(x.dtype, jnp.float32)


def dct_compress(x: Array, grid: Pair, keep: int | Pair) -> Array:
  """Fourier-VLM compression of a row-major token grid.

  Args:
    x: (B, H*W, C) features, any float dtype (computed in float32, returned in x.dtype).
    grid: (H, W) token grid; token n sits at row n // W, column n % W.
    keep: (rh, rw) low-frequency block kept (an int for a square block), clipped to the grid.

  Returns:
    (B, rh*rw, C) in x.dtype, row-major over the (rh, rw) output grid.
  """
  (h, w), (rh, rw) = _pair(grid, "grid"), clip_keep(grid, keep)
  if x.ndim != 3 or x.shape[1] != h * w:
    raise ValueError(f"grid: x has shape {x.shape}, expected (B, H*W, C) with H*W = {h}*{w} = {h * w}")
  dtype = _compute_dtype(x)
  rows = jnp.asarray(axis_matrix(h, rh), dtype)
  cols = jnp.asarray(axis_matrix(w, rw), dtype)
  grid_x = x.astype(dtype).reshape(x.shape[0], h, w, x.shape[2])
  out = jnp.einsum("ih,bhwc->biwc", rows, grid_x, precision=_HIGHEST)
  out = jnp.einsum("jw,biwc->bijc", cols, out, precision=_HIGHEST)
  return out.reshape(x.shape[0], rh * rw, x.shape[2]).astype(x.dtype)


def dct_plan(batch: int, grid: Pair, keep: int | Pair, *, num_prefix: int = 0) -> DensePlan:
  """Fourier-VLM compression as a DensePlan over [prefix tokens, H*W grid tokens].

  Args:
    batch: B (the plan is the same for every image).
    grid: (H, W) of the grid tokens, which follow the num_prefix protected ones.
    keep: (rh, rw), clipped to the grid.
    num_prefix: leading tokens ([CLS], ...) passed through unchanged.

  Returns:
    DensePlan with float32 matrix (B, P + rh*rw, P + H*W): block-diagonal [I_P, T].
  """
  if num_prefix < 0:
    raise ValueError(f"num_prefix: must be >= 0; got {num_prefix}")
  t = dct_token_matrix(grid, keep)
  full = np.zeros((num_prefix + t.shape[0], num_prefix + t.shape[1]))
  full[:num_prefix, :num_prefix] = np.eye(num_prefix)
  full[num_prefix:, num_prefix:] = t
  return DensePlan(matrix=jnp.broadcast_to(jnp.asarray(full, jnp.float32), (batch,) + full.shape))


def _square_grid(num_tokens: int) -> Pair:
  side = math.isqrt(num_tokens)
  if side * side != num_tokens:
    raise ValueError(f"DCT.grid: {num_tokens} grid tokens are not a square; pass grid=(H, W)")
  return side, side


@dataclasses.dataclass(frozen=True)
class DCT:
  """Fourier-VLM's compressor as a post-encoder reducer: `DCT(keep=12)(tokens, metrics) -> Tokens`.

  Prefix tokens (has_cls / has_dist) pass through; the others form the row-major grid.

  Attributes:
    keep: (rh, rw) low-frequency block kept (an int for a square one), clipped to the grid; wins
      over ratio when given.
    ratio: fraction of each grid side kept, max(int(side * ratio), 1) as the official Qwen2-VL
      integration; 0.5 is LLaVA-1.5's reserve=12 on its 24x24 grid.
    grid: (H, W) of the grid tokens; None for a square grid inferred from the token count.
  """
  placement: ClassVar[str] = "post"
  scores: ClassVar[tuple[str, ...]] = ()
  strength_field: ClassVar[str] = "ratio"
  needs_calibration: ClassVar[bool] = False
  variable_tokens: ClassVar[bool] = False

  keep: int | Pair | None = None
  ratio: float = 0.5
  grid: Pair | None = None

  def __post_init__(self):
    if self.keep is not None:
      object.__setattr__(self, "keep", _pair(self.keep, "DCT.keep"))
    if self.grid is not None:
      object.__setattr__(self, "grid", _pair(self.grid, "DCT.grid"))
    if isinstance(self.ratio, bool) or not isinstance(self.ratio, (int, float)) or not 0.0 < self.ratio <= 1.0:
      raise ValueError(f"DCT.ratio: the fraction of each grid side kept must be in (0, 1]; got {self.ratio!r}")

  def _check(self, tokens: Tokens) -> None:
    if tokens.mask is not None:
      raise ValueError("DCT: tokens.mask is set (padded tokens with data-dependent counts); the grid needs every "
                       "token. Apply it to unmasked tokens")
    _compute_dtype(tokens.x)

  def resolve(self, num_grid_tokens: int) -> tuple[Pair, Pair]:
    """Static (grid, keep) for num_grid_tokens tokens after the prefix."""
    grid = self.grid or _square_grid(num_grid_tokens)
    if grid[0] * grid[1] != num_grid_tokens:
      raise ValueError(f"DCT.grid: {grid} holds {grid[0] * grid[1]} tokens, the input has {num_grid_tokens} "
                       "after the prefix")
    keep = self.keep if self.keep is not None else keep_from_ratio(grid, self.ratio)
    return grid, clip_keep(grid, keep)

  def output_tokens(self, num_tokens: int, num_prefix: int = 1) -> int:
    """Tokens out for num_tokens in: the prefix, then the rh * rw kept grid tokens."""
    _, (rh, rw) = self.resolve(num_tokens - num_prefix)
    return num_prefix + rh * rw

  def plan(self, tokens: Tokens, metrics: dict[str, Array] | None = None) -> DensePlan:
    self._check(tokens)
    grid, keep = self.resolve(tokens.num_tokens - tokens.num_prefix)
    return dct_plan(tokens.x.shape[0], grid, keep, num_prefix=tokens.num_prefix)

  def __call__(self, tokens: Tokens, metrics: dict[str, Array] | None = None) -> Tokens:
    """The compressed tokens: features from dct_compress, sizes / assignment through apply_plan."""
    self._check(tokens)
    p = tokens.num_prefix
    grid, keep = self.resolve(tokens.num_tokens - p)
    reduced = apply_plan(tokens, dct_plan(tokens.x.shape[0], grid, keep, num_prefix=p))
    x = jnp.concatenate([tokens.x[:, :p], dct_compress(tokens.x[:, p:], grid, keep)], axis=1)
    return reduced.replace(x=x)
