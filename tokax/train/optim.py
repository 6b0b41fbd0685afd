"""Learning-rate schedule and optimizer: AdamW, linear warmup then cosine decay, global-norm clip."""
from __future__ import annotations

import jax
import optax


def lr_schedule(*, peak_lr: float, warmup_steps: int, total_steps: int, end_lr: float = 0.0) -> optax.Schedule:
  """Linear warmup from 0 to `peak_lr` over `warmup_steps`, then cosine decay to `end_lr` at `total_steps`.

  lr(s) = peak_lr * s / warmup_steps for s < warmup_steps, and
  lr(s) = end_lr + (peak_lr - end_lr) * (1 + cos(pi * (s - warmup_steps) / (total_steps - warmup_steps))) / 2
  after; constant at end_lr from total_steps on.
  """
  if not 0 <= warmup_steps <= total_steps:
    raise ValueError(f"lr_schedule: need 0 <= warmup_steps <= total_steps; got {warmup_steps}, {total_steps}")
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak_lr, warmup_steps=warmup_steps,
      decay_steps=max(total_steps, warmup_steps + 1), end_value=end_lr)


def decay_mask(params):
  """True for the leaves that get weight decay: the matmul and conv kernels (big_vision's default)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[-1], "key", None) == "kernel", params)


def adamw(schedule: optax.Schedule, *, weight_decay: float, grad_clip_norm: float | None,
          b1: float = 0.9, b2: float = 0.999) -> optax.GradientTransformation:
  """AdamW with decoupled weight decay on kernels only, after clipping the global gradient norm."""
  clip = [optax.clip_by_global_norm(grad_clip_norm)] if grad_clip_norm else []
  return optax.chain(
      *clip, optax.adamw(schedule, b1=b1, b2=b2, weight_decay=weight_decay, mask=decay_mask))
