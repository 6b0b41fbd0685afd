"""Classification accuracy of a model over a whole in-memory dataset."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tokax.data import offline
from tokax.train import losses
from tokax.train.model import normalize_images

EvalStep = Callable[[Any, jax.Array, jax.Array, jax.Array], dict[str, jax.Array]]


def eval_step(params: Any, images: jax.Array, labels: jax.Array, mask: jax.Array, *, model: nn.Module) -> dict[str, jax.Array]:
  """Sums over the valid examples of one batch.

  Args:
    params: model variables.
    images: (B, H, W, 3) float32 in [0, 1].
    labels: (B,) int32.
    mask: (B,) bool, False for padding.

  Returns:
    {"correct", "loss", "count"}: () float32 sums over the valid examples.
  """
  logits = model.apply(params, normalize_images(images))
  weight = mask.astype(jnp.float32)
  correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  loss = losses.softmax_cross_entropy(logits, labels)
  return {"correct": jnp.sum(correct * weight), "loss": jnp.sum(loss * weight), "count": jnp.sum(weight)}


def make_eval_step(model: nn.Module, *, out_sharding: jax.sharding.Sharding | None = None) -> EvalStep:
  """A jitted eval_step for `model` (one compilation per model, e.g. per reduction schedule).

  out_sharding: where the sums go (a replicated sharding, for several processes to read them).
  """
  fn = lambda params, images, labels, mask: eval_step(params, images, labels, mask, model=model)
  return jax.jit(fn) if out_sharding is None else jax.jit(fn, out_shardings=out_sharding)


def evaluate(step_fn: EvalStep, params: Any, dataset: offline.ArrayDataset, batch_size: int, *,
             sharding: jax.sharding.Sharding | None = None) -> dict[str, float]:
  """Top-1 accuracy and mean loss over every example of `dataset` (the last batch is padded).

  Sums stay on the device until the end, so the loop never waits on a batch. With `sharding` (e.g.
  replicated over a multi-process mesh), every process passes the whole batch and the batches become
  global arrays on it.

  Returns:
    {"accuracy", "loss", "num_examples"}.
  """
  batches = offline.iterate_batches(dataset, batch_size, shuffle=False, drop_remainder=False, num_epochs=1)
  return evaluate_batches(step_fn, params, batches, sharding=sharding)


def evaluate_batches(step_fn: EvalStep, params: Any, batches: Iterable[dict[str, np.ndarray]], *,
                     sharding: jax.sharding.Sharding | None = None) -> dict[str, float]:
  """evaluate() over given batches {"image": (B, H, W, 3), "label": (B,), "mask": (B,) bool} (one pass).

  The input pipeline's eval iterator (drop_remainder=False, so padded and masked) feeds this.
  """
  totals = None
  for batch in batches:
    batch = {k: batch[k] for k in ("image", "label", "mask")}
    if sharding is not None:
      batch = {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}
    sums = step_fn(params, batch["image"], batch["label"], batch["mask"])
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = jax.device_get(totals)
  count = float(totals["count"])
  return {"accuracy": float(totals["correct"]) / count, "loss": float(totals["loss"]) / count,
          "num_examples": int(count)}


def make_predict_fn(model: nn.Module) -> Callable[[Any, jax.Array], jax.Array]:
  """Jitted (params, images (B, H, W, 3) in [0, 1]) -> (B,) int32 predicted classes."""
  return jax.jit(lambda params, images: jnp.argmax(model.apply(params, normalize_images(images)), -1))


def predict(predict_fn: Callable[[Any, jax.Array], jax.Array], params: Any, dataset: offline.ArrayDataset,
            batch_size: int) -> np.ndarray:
  """(N,) int32 predicted class of every example of `dataset`, in order."""
  batches = offline.iterate_batches(dataset, batch_size, shuffle=False, drop_remainder=False, num_epochs=1)
  outputs = [predict_fn(params, batch["image"]) for batch in batches]  # dispatched before any is read
  return np.concatenate([np.asarray(out) for out in outputs])[:len(dataset)]
