"""The xAR task (config.task = "xar"): flow matching on latent tokens with Noisy Context Learning.

The state is XarTrainState (params, EMA params, optimizer state, RNG); config.json records
num_classes and num_train beside the config; the final metrics are {"train/final_loss"}; a restored
run's variables are the EMA params (ema=False: the raw ones). tokax.sample samples a workdir.
The model is config data: XAR(**config.model) with token_dim and grid_size from config.latent and
num_classes from the data.
"""
from __future__ import annotations

import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax

from tokax.data import offline, pipeline
from tokax.models.latent import Latent, build_latent
from tokax.models.xar import XAR, xar_loss
from tokax.train.config_utils import durations_from_config, steps
from tokax.train.model import from_fields
from tokax.train.tasks import base

NAME = "xar"


@flax.struct.dataclass
class XarTrainState:
  """step () int32; params / ema_params the XAR variables; opt_state of the AdamW chain; rng (2,) uint32
  raw key data of the run's base key (step s folds in s, so a restored run draws the same noise)."""
  step: jax.Array
  params: Any
  ema_params: Any
  opt_state: Any
  rng: jax.Array


def latent_from_config(config: ml_collections.ConfigDict) -> Latent:
  return build_latent(config.latent.name, image_size=config.data.image_size, patch=config.latent.patch)


def model_from_config(config: ml_collections.ConfigDict, num_classes: int) -> XAR:
  """XAR(**config.model) over the latent of config.latent, with num_classes outputs of the label embedding."""
  latent = latent_from_config(config)
  return from_fields(XAR, {**config.model, "token_dim": latent.channels, "grid_size": latent.grid,
                          "num_classes": num_classes})


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


def schedule_from_config(config: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """lr_schedule with warmup and decay as config.warmup_fraction / decay_fraction of total_steps."""
  return lr_schedule(peak_lr=config.lr, total_steps=total_steps,
                     warmup_steps=int(round(config.warmup_fraction * total_steps)),
                     decay_steps=int(round(config.decay_fraction * total_steps)), end_lr=config.end_lr)


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


def load_split(config: ml_collections.ConfigDict, split: str = "train") -> offline.ArrayDataset:
  d = config.data
  return offline.load(d.name, split, image_size=d.image_size, num_examples=d.get(f"num_{split}"), seed=d.seed)


def build(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> base.Plan:
  """The xAR run of `config` (see the module docstring)."""
  del mesh
  train_ds = load_split(config)
  num_classes, num_train = train_ds.num_classes, len(train_ds)
  total_steps = steps("total", config, num_train, config.batch_size)
  durations = durations_from_config(config, num_train, config.batch_size, total=total_steps)
  model, latent = model_from_config(config, num_classes), latent_from_config(config)
  schedule = schedule_from_config(config, total_steps)
  tx = make_optimizer(config, schedule)
  init_rng, step_rng = jax.random.split(jax.random.key(config.seed))
  step_fn = functools.partial(train_step, model=model, latent=latent, tx=tx, schedule=schedule,
                              label_drop=config.label_drop, teacher_forcing=config.teacher_forcing,
                              ema_decay=config.ema_decay)
  final = lambda _, last: {"train/final_loss": last["loss"]} if last else {}
  return base.Plan(
      model=model, data=base.TrainData(source=pipeline.ArraySource(train_ds)), batch_keys=("image", "label"),
      durations=durations, init_fn=functools.partial(init_state, model, tx, step_rng=step_rng), init_rng=init_rng,
      step_fn=step_fn, finalize=final, result_params=lambda state: state.ema_params,
      resolved={"total_steps": total_steps, "num_classes": num_classes, "num_train": num_train},
      description=(f"xAR ({model.entity} entities, {model.entities.num_entities} steps of "
                   f"{model.entities.seq_len} tokens)"))


def target(config: ml_collections.ConfigDict) -> base.Target:
  """The model and train state of a saved xAR run (num_classes and num_train from its config.json)."""
  model = model_from_config(config, config.num_classes)
  tx = make_optimizer(config, schedule_from_config(config, config.total_steps))
  return base.Target(model=model, init_fn=functools.partial(init_state, model, tx), init_rng=jax.random.key(0))


def variables(state: XarTrainState, *, ema: bool = True) -> Any:
  """The EMA (or raw) XAR variables."""
  return state.ema_params if ema else state.params


TASK = base.Task(name=NAME, build=build, target=target, variables=variables)
