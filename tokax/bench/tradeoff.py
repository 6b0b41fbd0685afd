"""Accuracy against cost for one trained model, dense and with token reduction.

For each reduction (one tokax.bench.measure.reduction_row each): tokens after the last block, GFLOPs
per image (XLA's count of the forward lowered for the CPU), images/s on the current device, top-1
accuracy on a dataset. Plus the plot of accuracy against GFLOPs and a merge visualisation, as in the ToMe paper's figures.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from tokax.bench import measure
from tokax.data import offline
from tokax.reduction import visualize
from tokax.train.model import normalize_images


def reduction_table(model: Any, params: Any, dataset: offline.ArrayDataset, reductions: Mapping[str, Any], *,
                    eval_batch_size: int = 250, bench_batch_size: int = 64, warmup: int = 2,
                    repeats: int = 5) -> list[dict[str, Any]]:
  """One row per reduction of `model` (a trained ViT; its own reduction is replaced).

  Args:
    model, params: the ViT and its variables.
    dataset: images in [0, 1] to measure top-1 accuracy on.
    reductions: method name -> reduction (None: dense), in table order.
    eval_batch_size: batch of the accuracy pass.
    bench_batch_size, warmup, repeats: throughput timing (see tokax.bench.measure.measure).

  Returns:
    rows {"method", "tokens", "gflops_per_image", "images_per_s", "top1", "same_as_first"}, where
    same_as_first is the fraction of examples predicted as the first row's method predicts them.
  """
  rows, first = [], None
  for name, reduction in reductions.items():
    row = measure.reduction_row(model, params, reduction, dataset, first, method=name, eval_batch_size=eval_batch_size,
                                bench_batch_size=bench_batch_size, warmup=warmup, repeats=repeats)
    first = row["predictions"] if first is None else first
    rows.append({"method": name, "tokens": row["tokens"], "gflops_per_image": row["gflops_per_image"],
                 "images_per_s": row["images_per_s"], "top1": row["top1"], "same_as_first": row["agreement"]})
  return rows


def to_markdown(rows: list[dict[str, Any]]) -> str:
  """reduction_table rows as a markdown table."""
  first = rows[0]["method"] if rows else ""
  lines = [f"| method | tokens (last layer) | GFLOPs/img | images/s | top-1 | same prediction as {first} |",
           "|---|---|---|---|---|---|"]
  for row in rows:
    lines.append(f"| {row['method']} | {row['tokens']} | {row['gflops_per_image']:.3f} | "
                 f"{row['images_per_s']:.1f} | {100 * row['top1']:.1f}% | {100 * row['same_as_first']:.1f}% |")
  return "\n".join(lines)


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


def merge_figure(model: Any, params: Any, images: np.ndarray, reduction: Any, patch_size: int) -> np.ndarray:
  """The images (top row) above their final ToMe groups (bottom row).

  Args:
    model, params: a ViT and its variables.
    images: (K, H, W, 3) float in [0, 1].
    reduction: the reduction to draw (e.g. ToMe(r=...)).
    patch_size: the model's patch size.

  Returns:
    (2H, K*W, 3) uint8 picture.
  """
  reduced = model.clone(reduction=reduction)
  forward = jax.jit(lambda p, x: reduced.apply(p, normalize_images(x), return_intermediates=True))
  _, inter = forward(params, jnp.asarray(images))
  assign = np.asarray(inter["assign"])
  num_prefix = assign.shape[1] - (images.shape[1] // patch_size) * (images.shape[2] // patch_size)
  originals = [np.clip(np.asarray(image) * 255.0 + 0.5, 0, 255).astype(np.uint8) for image in images]
  merged = [visualize.draw_merges(image, a, patch_size, num_prefix) for image, a in zip(images, assign)]
  return np.concatenate([np.concatenate(originals, axis=1), np.concatenate(merged, axis=1)], axis=0)
