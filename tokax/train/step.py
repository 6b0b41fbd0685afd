"""The train state and the (un-jitted) train step; trainer.py jits it with shardings and donation."""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from tokax.train import augment, losses
from tokax.train.model import normalize_images

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
  """Everything a step updates; a plain pytree, so it shards, donates and checkpoints as one.

  Attributes:
    step: () int32, number of updates applied.
    params: the model variables ({"params": ...}).
    opt_state: the optimizer state.
  """
  step: jax.Array
  params: Any
  opt_state: Any


def init_state(model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array, image_shape: tuple[int, ...]) -> TrainState:
  """Initial state for images of shape (H, W, 3); jit it with out_shardings to create it in place."""
  params = model.init(rng, jnp.zeros((1, *image_shape), jnp.float32))
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def train_step(state: TrainState, batch: Batch, rng: jax.Array, *, model: nn.Module,
               tx: optax.GradientTransformation, schedule: optax.Schedule, label_smoothing: float = 0.0,
               max_shift: int = 0) -> tuple[TrainState, Metrics]:
  """One AdamW update on a batch.

  Args:
    state: the current state.
    batch: {"image": (B, H, W, 3) float32 in [0, 1], "label": (B,) int32}.
    rng: base key; the step folds in state.step, so a resumed run draws the same randomness.
    model, tx, schedule: the ViT, its optimizer and that optimizer's lr schedule (for logging).
    label_smoothing: epsilon of the cross-entropy targets.
    max_shift: random translation in pixels (0: no augmentation).

  Returns:
    the new state and scalar metrics: loss, accuracy (train batch), grad_norm, lr (of this step).
  """
  rng = jax.random.fold_in(rng, state.step)
  augment_rng, dropout_rng = jax.random.split(rng)
  images = normalize_images(augment.random_translate(batch["image"], augment_rng, max_shift))

  def loss_fn(params):
    logits = model.apply(params, images, train=True, rngs={"dropout": dropout_rng})
    loss = losses.softmax_cross_entropy(logits, batch["label"], label_smoothing=label_smoothing).mean()
    return loss, logits

  (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {
      "loss": loss,
      "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
      "grad_norm": optax.tree.norm(grads),
      "lr": schedule(state.step),
  }
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def make_train_step(**kwargs: Any) -> Callable[[TrainState, Batch, jax.Array], tuple[TrainState, Metrics]]:
  """train_step with its static arguments (model, tx, schedule, ...) bound, ready for jax.jit."""
  return lambda state, batch, rng: train_step(state, batch, rng, **kwargs)
