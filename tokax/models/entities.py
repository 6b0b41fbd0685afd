"""Entities of next-X prediction (xAR): how a G x G grid of latent tokens is cut into AR steps.

An entity is the unit one autoregressive step generates. Every kind is described by the same
numbers, from which the model derives everything else:

  order      (L,) int: the source token of each sequence position. For the permutation kinds it
             indexes the raster-flattened G x G grid (a bijection); for "scale" it indexes the
             concatenation of the raster-flattened scales (the identity).
  entity_id  (L,) int, non-decreasing: the AR step of each sequence position.
  positions  (L, 2) float: (row, col) of each position in grid units, for the 2-D RoPE.

Kinds (L = G * G except for "scale"):
  patch      one token per step, raster order: G * G steps.
  cell       k x k blocks of neighbouring tokens, cells in raster order and tokens raster-ordered
             inside a cell (the official xAR `clusterify`): (G / k)^2 steps.
  subsample  s x s strided sub-grids: step (a, b) holds the tokens (i, j) with i % s == a and
             j % s == b, raster-ordered; s^2 steps, each spread over the whole image.
  scale      coarse-to-fine: step r holds the whole grid area-downsampled to `scales[r]`^2 tokens
             (the last scale is G, the full latent); L = sum(scales^2). Each scale is the image at
             that resolution, not a VAR-style residual (the paper's exact definition was not
             checked; generative.md 2.2 marks it as recalled). A coarse token sits at the centre of
             the area it averages.
  image      all G * G tokens in one step (plain flow matching).
"""
from __future__ import annotations

import dataclasses
import functools

import numpy as np

KINDS = ("patch", "cell", "subsample", "scale", "image")


@dataclasses.dataclass(frozen=True, eq=False)
class Entities:
  """One grouping of a G x G token grid into AR steps; see the module docstring.

  Attributes:
    kind: one of KINDS.
    grid: G.
    size: k for "cell", s for "subsample", 0 otherwise.
    scales: the resolutions of "scale" (increasing, last == G), () otherwise.
    order: (L,) int32 source index of each sequence position.
    entity_id: (L,) int32 AR step of each sequence position (non-decreasing).
    positions: (L, 2) float32 (row, col) in grid units.
  """
  kind: str
  grid: int
  size: int
  scales: tuple[int, ...]
  order: np.ndarray
  entity_id: np.ndarray
  positions: np.ndarray

  def __post_init__(self):
    for array in (self.order, self.entity_id, self.positions):
      array.setflags(write=False)

  @property
  def seq_len(self) -> int:
    return int(self.order.shape[0])

  @property
  def num_entities(self) -> int:
    return int(self.entity_id[-1]) + 1

  @property
  def sizes(self) -> np.ndarray:
    """(E,) number of tokens of each entity."""
    return np.bincount(self.entity_id, minlength=self.num_entities)

  @property
  def offsets(self) -> np.ndarray:
    """(E + 1,) first sequence position of each entity, then L."""
    return np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int32)

  @property
  def uniform_size(self) -> int | None:
    """The common entity size, or None when sizes differ ("scale")."""
    sizes = self.sizes
    return int(sizes[0]) if np.all(sizes == sizes[0]) else None

  @property
  def is_permutation(self) -> bool:
    return self.kind != "scale"

  def block_causal_mask(self) -> np.ndarray:
    """(L, L) bool: position i attends to j iff entity_id[j] <= entity_id[i]."""
    return self.entity_id[None, :] <= self.entity_id[:, None]

  def to_sequence(self, latent):
    """(B, G, G, C) latent grid -> (B, L, C) tokens in entity order (numpy or jax arrays)."""
    b, g, _, c = latent.shape
    if g != self.grid or latent.shape[2] != self.grid:
      raise ValueError(f"Entities.to_sequence: latent grid {latent.shape[1:3]} != entities grid {(self.grid,) * 2}")
    if self.kind == "scale":
      parts = []
      for r in self.scales:
        f = g // r
        parts.append(latent.reshape(b, r, f, r, f, c).mean(axis=(2, 4)).reshape(b, r * r, c))
      xp = _array_module(latent)
      return xp.concatenate(parts, axis=1)
    return latent.reshape(b, g * g, c)[:, self.order]

  def from_sequence(self, seq):
    """(B, L, C) tokens in entity order -> (B, G, G, C) latent grid (the finest scale for "scale")."""
    b, _, c = seq.shape
    g = self.grid
    if self.kind == "scale":
      return seq[:, -g * g:].reshape(b, g, g, c)
    return seq[:, np.argsort(self.order)].reshape(b, g, g, c)


def _array_module(x):
  if isinstance(x, np.ndarray):
    return np
  import jax.numpy as jnp  # only when given jax arrays
  return jnp


def _check(kind: str, grid: int, size: int, scales: tuple[int, ...]) -> None:
  if kind not in KINDS:
    raise ValueError(f"entities: unknown kind {kind!r}; expected one of {KINDS}")
  if not isinstance(grid, (int, np.integer)) or grid < 1:
    raise ValueError(f"entities: grid must be a positive int; got {grid!r}")
  if kind in ("cell", "subsample"):
    if size < 1 or grid % size:
      raise ValueError(f"entities: {kind} size must be a positive divisor of grid={grid}; got size={size}")
  if kind == "scale":
    if not scales or list(scales) != sorted(set(scales)) or scales[-1] != grid or any(grid % r for r in scales):
      raise ValueError(
          f"entities: scales must be increasing divisors of grid={grid} ending at {grid}; got {scales}")


@functools.lru_cache(maxsize=64)
def make_entities(kind: str, grid: int, size: int = 0, scales: tuple[int, ...] = ()) -> Entities:
  """The Entities of `kind` on a `grid` x `grid` token grid.

  Args:
    kind: one of KINDS.
    grid: G, the side of the latent token grid.
    size: cell side k ("cell"), or sub-grid stride s ("subsample"); must divide G.
    scales: resolutions for "scale"; () gives the doubling chain (G/4, G/2, G) clipped at 1.

  Returns:
    the Entities (cached: the same arguments return the same object).
  """
  scales = tuple(int(r) for r in scales)
  if kind == "scale" and not scales:
    scales = tuple(sorted({max(1, grid // 4), max(1, grid // 2), grid}))
  _check(kind, grid, size, scales)
  rows, cols = np.divmod(np.arange(grid * grid), grid)
  if kind == "patch":
    order = np.arange(grid * grid)
    entity = order.copy()
  elif kind == "image":
    order = np.arange(grid * grid)
    entity = np.zeros_like(order)
  elif kind == "cell":
    cell = (rows // size) * (grid // size) + cols // size
    within = (rows % size) * size + cols % size
    order = np.lexsort((within, cell))
    entity = cell[order]
  elif kind == "subsample":
    group = (rows % size) * size + cols % size
    within = (rows // size) * (grid // size) + cols // size
    order = np.lexsort((within, group))
    entity = group[order]
  else:  # scale
    positions, entity = [], []
    for e, r in enumerate(scales):
      f = grid / r
      rr, cc = np.divmod(np.arange(r * r), r)
      positions.append(np.stack([(rr + 0.5) * f - 0.5, (cc + 0.5) * f - 0.5], -1))
      entity.append(np.full(r * r, e))
    positions = np.concatenate(positions).astype(np.float32)
    entity = np.concatenate(entity)
    order = np.arange(entity.shape[0])
    return Entities(kind, grid, 0, scales, order.astype(np.int32), entity.astype(np.int32), positions)
  positions = np.stack([rows[order], cols[order]], -1).astype(np.float32)
  return Entities(kind, grid, int(size) if kind in ("cell", "subsample") else 0, (),
                  order.astype(np.int32), entity.astype(np.int32), positions)
