"""The figures of an accuracy-against-cost table (tokax.evaluate's rows, tokax.bench.measure.reduction_row):
accuracy against GFLOPs, and the token groups each method leaves on a few images, as in the ToMe paper's figures.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from tokax.reduction import visualize


def plot_accuracy_vs_gflops(rows: list[dict[str, Any]], path: str, *, title: str = "") -> None:
  """Saves top-1 accuracy against GFLOPs per image, one labelled point per row, as a PNG."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(5, 4), dpi=120)
  gflops = [row["gflops_per_image"] for row in rows]
  top1 = [100 * row["top1"] for row in rows]
  ax.plot(gflops, top1, "o-", color="tab:blue")
  for row, x, y in zip(rows, gflops, top1):
    ax.annotate(row["method"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
  ax.set_xlabel("GFLOPs per image (XLA cost analysis)")
  ax.set_ylabel("top-1 accuracy (%)")
  ax.set_title(title)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def plot_merge_maps(images: np.ndarray, assigns: Mapping[str, np.ndarray], patch_size: int, path: str) -> None:
  """Saves the token groups each method leaves on `images` as a PNG grid (as ToMe's figures): one panel per
  image and method, each token's patches painted with their mean colour, pruned patches dark grey.

  Args:
    images: (K, H, W, 3) in [0, 1] (or uint8).
    assigns: method -> (K, N0) token assignment after the last block (reduction_row's "assign").
    patch_size: the model's patch size.
    path: the PNG to write.
  """
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  images = np.asarray(images)
  patches = (images.shape[1] // patch_size) * (images.shape[2] // patch_size)
  panels = [("image", image) for image in images]
  for method, assign in assigns.items():
    assign = np.asarray(assign)
    panels += [(method, visualize.draw_merges(image, a, patch_size, assign.shape[1] - patches))
               for image, a in zip(images, assign)]
  cols = len(images) if len(images) > 1 else min(6, len(panels))
  rows = -(-len(panels) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 2.0 * rows), dpi=100, squeeze=False)
  for ax in axes.ravel():
    ax.axis("off")
  for ax, (title, picture) in zip(axes.ravel(), panels):
    ax.imshow(picture)
    ax.set_title(title, fontsize=8)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
