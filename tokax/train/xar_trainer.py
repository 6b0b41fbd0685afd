"""The xAR trainer (config.task = "xar"): flow matching on latent tokens with Noisy Context Learning.

train_xar(config, workdir) writes, like the classifier trainer (the same loop.py: mesh and sharding
rules from config.mesh / config.sharding, the restorable batch stream, SIGTERM saves, process-0
files): config.json, metrics.jsonl and orbax checkpoints of XarTrainState (params, EMA params,
optimizer state, RNG) with the data position. tokax.sample reads the same workdir.
"""
from __future__ import annotations

import functools
import os
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging

from tokax.data import offline
from tokax.models.latent import Latent, build_latent
from tokax.models.xar import XAR, xar_loss
from tokax.train import logging as metric_logging
from tokax.train import loop
from tokax.train.config_utils import steps


@flax.struct.dataclass
class XarTrainState:
  """step () int32; params / ema_params the XAR variables; opt_state of the AdamW chain; rng (2,) uint32
  raw key data of the run's base key (step s folds in s, so a restored run draws the same noise)."""
  step: jax.Array
  params: Any
  ema_params: Any
  opt_state: Any
  rng: jax.Array


def model_from_config(config: ml_collections.ConfigDict, num_classes: int) -> XAR:
  m, latent = config.model, latent_from_config(config)
  return XAR(token_dim=latent.channels, grid_size=latent.grid, entity=m.entity, entity_size=m.entity_size,
             scales=tuple(m.scales), width=m.width, encoder_depth=m.encoder_depth, decoder_depth=m.decoder_depth,
             num_heads=m.num_heads, mlp_ratio=m.mlp_ratio, num_classes=num_classes, dropout=m.dropout,
             attn_dropout=m.attn_dropout, dtype=jnp.dtype(m.dtype))


def latent_from_config(config: ml_collections.ConfigDict) -> Latent:
  return build_latent(config.latent.name, image_size=config.data.image_size, patch=config.latent.patch)


def lr_schedule(*, peak_lr: float, total_steps: int, warmup_steps: int, decay_steps: int,
                end_lr: float) -> optax.Schedule:
  """Linear warmup, constant, then a cosine to end_lr over the last `decay_steps` of `total_steps`.

  The official schedule's shape (warmup 100 / constant to 600 / cosine to 800 epochs), but driven
  by the configured length instead of hard-coded epochs.
  """
  if not 0 <= warmup_steps + decay_steps <= total_steps:
    raise ValueError(f"xar lr schedule: need warmup_steps + decay_steps <= total_steps; got "
                     f"{warmup_steps} + {decay_steps} > {total_steps}")
  constant_steps = total_steps - warmup_steps - decay_steps
  return optax.join_schedules(
      [optax.linear_schedule(0.0, peak_lr, max(warmup_steps, 1)), optax.constant_schedule(peak_lr),
       optax.cosine_decay_schedule(peak_lr, max(decay_steps, 1), alpha=end_lr / peak_lr if peak_lr else 0.0)],
      boundaries=[warmup_steps, warmup_steps + constant_steps])


def weight_decay_mask(params):
  """Decay every parameter with >= 2 dims (the official add_weight_decay skips 1-D params and biases)."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(config: ml_collections.ConfigDict, schedule: optax.Schedule) -> optax.GradientTransformation:
  clip = [optax.clip_by_global_norm(config.grad_clip_norm)] if config.grad_clip_norm else []
  return optax.chain(*clip, optax.adamw(schedule, b1=config.b1, b2=config.b2, weight_decay=config.weight_decay,
                                        mask=weight_decay_mask))


def init_state(model: XAR, tx: optax.GradientTransformation, rng: jax.Array,
               step_rng: jax.Array | None = None) -> XarTrainState:
  """`rng` initialises the parameters; `step_rng` (default: fold_in(rng, 1)) is the base key of the steps."""
  ents = model.entities
  params = model.init(rng, jnp.zeros((1, ents.seq_len, model.token_dim)), jnp.zeros((1,), jnp.int32),
                      jnp.zeros((1, ents.num_entities)))
  step_rng = jax.random.fold_in(rng, 1) if step_rng is None else step_rng
  return XarTrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=params, opt_state=tx.init(params),
                       rng=jax.random.key_data(step_rng))


def train_step(state: XarTrainState, batch: dict, *, model: XAR, latent: Latent,
               tx: optax.GradientTransformation, schedule: optax.Schedule, label_drop: float,
               teacher_forcing: bool, ema_decay: float) -> tuple[XarTrainState, dict]:
  """One AdamW update of the xAR loss on {"image": (B, H, W, 3) in [0, 1], "label": (B,)}; EMA after."""
  rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
  tokens = model.entities.to_sequence(latent.encode(batch["image"]))

  def loss_fn(params):
    return xar_loss(model, params, tokens, batch["label"], rng, label_drop=label_drop,
                    teacher_forcing=teacher_forcing, train=True)

  (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema = jax.tree.map(lambda e, p: ema_decay * e + (1 - ema_decay) * p, state.ema_params, params)
  metrics = {"loss": loss, **aux, "grad_norm": optax.tree.norm(grads), "lr": schedule(state.step)}
  return state.replace(step=state.step + 1, params=params, ema_params=ema, opt_state=opt_state), metrics


def build(config: ml_collections.ConfigDict, num_classes: int, num_train: int):
  """(model, latent, tx, schedule, total_steps) of a config."""
  total_steps = steps("total", config, num_train, config.batch_size)
  warmup = int(round(config.warmup_fraction * total_steps))
  decay = int(round(config.decay_fraction * total_steps))
  schedule = lr_schedule(peak_lr=config.lr, total_steps=total_steps, warmup_steps=warmup, decay_steps=decay,
                         end_lr=config.end_lr)
  return model_from_config(config, num_classes), latent_from_config(config), make_optimizer(config, schedule), \
      schedule, total_steps


def restore_state(config: ml_collections.ConfigDict, workdir: str, num_classes: int, num_train: int):
  """(model, latent, state) from the latest checkpoint of `workdir`, on the first device; state None if none."""
  model, latent, tx, _, _ = build(config, num_classes, num_train)
  shapes = jax.eval_shape(functools.partial(init_state, model, tx), jax.random.key(0))
  restored = loop.restore_for_inference(workdir, shapes, config.keep_checkpoints)
  return model, latent, None if restored is None else restored[0]


def train_xar(config: ml_collections.ConfigDict, workdir: str):
  """Trains (or resumes) the xAR of `config` in `workdir`; returns trainer.TrainResult (params: the EMA ones)."""
  from tokax.train import trainer  # TrainResult; trainer imports this module lazily
  os.makedirs(workdir, exist_ok=True)
  d = config.data
  train_ds = offline.load(d.name, "train", image_size=d.image_size, num_examples=d.num_train, seed=d.seed)
  model, latent, tx, schedule, total_steps = build(config, train_ds.num_classes, len(train_ds))
  durations = loop.durations_from_config(config, len(train_ds), config.batch_size, total=total_steps)
  loop.save_config(config, workdir, total_steps=total_steps, num_classes=train_ds.num_classes,
                   num_train=len(train_ds))

  init_rng, step_rng = jax.random.split(jax.random.key(config.seed))
  init_fn = functools.partial(init_state, model, tx, step_rng=step_rng)
  state_shapes = jax.eval_shape(init_fn, init_rng)
  run = loop.setup(config, workdir, state_shapes=state_shapes, train_ds=train_ds)
  with jax.set_mesh(run.mesh):
    try:
      state = loop.restore_or_init(run, init_fn, init_rng, state_shapes)
      logging.info("training xAR (%s entities, %d steps of %d tokens) from step %d to %d", model.entity,
                   model.entities.num_entities, model.entities.seq_len, int(state.step), total_steps)
      step_fn = loop.jit_train_step(
          functools.partial(train_step, model=model, latent=latent, tx=tx, schedule=schedule,
                            label_drop=config.label_drop, teacher_forcing=config.teacher_forcing,
                            ema_decay=config.ema_decay), run.mesh, run.state_shardings)
      with metric_logging.MetricWriter(os.path.join(workdir, "metrics.jsonl")) as writer:
        result = loop.run_steps(step_fn, state, run, durations, writer, batch_keys=("image", "label"),
                                progress_bar=config.progress_bar)
    finally:
      run.manager.wait_until_finished()
      run.manager.close()
  final = {} if result.preempted or not result.last_metrics else {"train/final_loss": result.last_metrics["loss"]}
  return trainer.TrainResult(model=model, params=result.state.ema_params, step=result.step, metrics=final,
                             preempted=result.preempted)
