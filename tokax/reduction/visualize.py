"""Draw which original patches share a token (merging) and which were dropped (pruning).

Pure numpy: give it an image and the `assign` map that every tokax model returns with
`return_intermediates=True`.
"""
from __future__ import annotations

import numpy as np


def patch_groups(assign: np.ndarray, num_prefix: int, grid: tuple[int, int]) -> np.ndarray:
  """Group id of every image patch.

  Args:
    assign: (N0,) int, the token each original token lives in (-1 when pruned); the first
      num_prefix entries are the protected tokens ([CLS], distillation).
    num_prefix: protected leading tokens to skip.
    grid: (gh, gw) patch grid, gh * gw == N0 - num_prefix.

  Returns:
    (gh, gw) int array of group ids, -1 where the patch was pruned.
  """
  patches = np.asarray(assign)[num_prefix:]
  if patches.size != grid[0] * grid[1]:
    raise ValueError(f"patch_groups: assign has {patches.size} patch entries after {num_prefix} prefix tokens; "
                     f"grid {grid} needs {grid[0] * grid[1]}")
  return patches.reshape(grid)


def draw_merges(image: np.ndarray, assign: np.ndarray, patch_size: int, num_prefix: int = 1,
                *, boundary: float = 0.35) -> np.ndarray:
  """Paint every token's patches with their mean colour and outline the groups (as ToMe's figures).

  Args:
    image: (H, W, 3) float in [0, 1] or uint8.
    assign: (N0,) int, from a model's intermediates ("assign"[b]).
    patch_size: pixels per patch side.
    num_prefix: protected leading tokens in assign.
    boundary: how much to darken pixels on group borders (0 disables the outline).

  Returns:
    (H, W, 3) uint8 picture; pruned patches are drawn dark grey.
  """
  img = np.asarray(image, np.float64)
  if img.ndim != 3 or img.shape[-1] != 3:
    raise ValueError(f"draw_merges: image must be (H, W, 3); got {img.shape}")
  if img.max() > 1.0:
    img = img / 255.0
  h, w = img.shape[:2]
  if h % patch_size or w % patch_size:
    raise ValueError(f"draw_merges: image {h}x{w} is not a multiple of patch_size {patch_size}")
  groups = patch_groups(assign, num_prefix, (h // patch_size, w // patch_size))
  pixel_groups = np.kron(groups, np.ones((patch_size, patch_size), int))
  out = np.empty_like(img)
  flat_groups = pixel_groups.ravel()
  valid = flat_groups >= 0
  ids, inverse = np.unique(flat_groups[valid], return_inverse=True)
  sums = np.zeros((ids.size, 3))
  np.add.at(sums, inverse, img.reshape(-1, 3)[valid])
  counts = np.bincount(inverse, minlength=ids.size)[:, None]
  flat_out = out.reshape(-1, 3)
  flat_out[valid] = (sums / counts)[inverse]
  flat_out[~valid] = 0.2
  if boundary:
    edge = np.zeros((h, w), bool)
    edge[:-1] |= pixel_groups[:-1] != pixel_groups[1:]
    edge[:, :-1] |= pixel_groups[:, :-1] != pixel_groups[:, 1:]
    out[edge] *= 1.0 - boundary
  return np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8)
