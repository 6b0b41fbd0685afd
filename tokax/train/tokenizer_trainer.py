"""The tokenizer task of the trainer (config.task = "tokenizer"): train a Tokenizer or KLAutoencoder.

The same loop as the classifier trainer (loop.py: mesh and sharding rules from config.mesh /
config.sharding, the restorable batch stream, SIGTERM saves, process-0 files), so the same workdir:
  config.json    the resolved config
  metrics.jsonl  train/* every log step; val/psnr, val/ssim, val/usage ... at eval steps and the end
  checkpoints/   orbax checkpoints of the TokenizerState and the data position (keep-last-N)
Evaluation uses the EMA weights. For the KL autoencoder the final checkpoint also stores the
latent scale (1 / std of the EMA model's latents over a training batch) in model_state["stats"].
"""
from __future__ import annotations

import functools
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging

from tokax.data import offline
from tokax.tokenizers import evaluate as tok_eval
from tokax.tokenizers import losses
from tokax.tokenizers.tokenizer import Tokenizer, build_quantizer, check_images
from tokax.tokenizers.vae import KLAutoencoder, with_latent_scale
from tokax.train import logging as metric_logging
from tokax.train import loop, optim
from tokax.train import trainer as classifier_trainer
from tokax.train.config_utils import steps
from tokax.train.tokenizer_step import LossConfig, TokenizerState, init_state, make_train_step

LATENT_SCALE_EXAMPLES = 256


def model_from_config(config: ml_collections.ConfigDict) -> nn.Module:
  """A KLAutoencoder (config.quantizer.name == "kl") or a Tokenizer with the named quantizer."""
  m = config.model
  arch = dict(filters=m.filters, channel_multipliers=tuple(m.channel_multipliers), num_res_blocks=m.num_res_blocks,
              z_channels=m.z_channels, norm_groups=m.norm_groups, dtype=jnp.dtype(m.dtype))
  name = config.quantizer.name
  if name == "kl":
    return KLAutoencoder(latent_channels=config.quantizer.latent_dim, kl_weight=config.quantizer.kl_weight, **arch)
  kwargs = dict(config.quantizer.get("kwargs", {}))
  kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
  latent_dim = config.quantizer.latent_dim
  return Tokenizer(quantizer=build_quantizer(name, latent_dim=latent_dim, **kwargs), latent_dim=latent_dim, **arch)


def discriminator_from_config(config: ml_collections.ConfigDict) -> nn.Module | None:
  """The PatchGAN of config.discriminator, or None when config.loss.gan is "none"."""
  if config.loss.gan == "none":
    return None
  d = config.discriminator
  return losses.NLayerDiscriminator(ndf=d.ndf, num_layers=d.num_layers, norm=d.norm, norm_groups=d.norm_groups,
                                    dtype=jnp.dtype(config.model.dtype))


def loss_from_config(config: ml_collections.ConfigDict) -> LossConfig:
  l = config.loss
  return LossConfig(reconstruction=l.reconstruction, gan=l.gan, disc_weight=l.disc_weight,
                    adaptive_weight=l.adaptive_weight, disc_start=l.disc_start,
                    perceptual_weight=l.perceptual_weight, r1_weight=l.r1_weight)


def optimizers(config: ml_collections.ConfigDict, total_steps: int, warmup_steps: int):
  """(schedule, generator tx, discriminator tx): Adam(b1, b2) with warmup + cosine, decay on kernels."""
  schedule = optim.lr_schedule(peak_lr=config.lr, warmup_steps=warmup_steps, total_steps=total_steps,
                               end_lr=config.lr * config.end_lr_fraction)
  g_tx = optim.adamw(schedule, weight_decay=config.weight_decay, grad_clip_norm=config.grad_clip_norm,
                     b1=config.b1, b2=config.b2)
  d_tx = optim.adamw(optax.constant_schedule(config.disc_lr), weight_decay=0.0,
                     grad_clip_norm=config.grad_clip_norm, b1=config.b1, b2=config.b2)
  return schedule, g_tx, d_tx


def load_split(config: ml_collections.ConfigDict, split: str) -> offline.ArrayDataset:
  d = config.data
  return offline.load(d.name, split, image_size=config.model.image_size, num_examples=d[f"num_{split}"], seed=d.seed)


def _init_fn(config: ml_collections.ConfigDict):
  model, discriminator = model_from_config(config), discriminator_from_config(config)
  schedule, g_tx, d_tx = optimizers(config, total_steps=1, warmup_steps=0)
  image_shape = (config.model.image_size, config.model.image_size, 3)
  return functools.partial(init_state, model, discriminator, g_tx, d_tx, image_shape=image_shape,
                           step_rng=jax.random.key(config.seed))


def _init_key(seed: int) -> jax.Array:
  """The key of the parameter initialisation: an "rbg" key, whose draws are single RngBitGenerator ops.

  Flax draws every parameter from its own key; with threefry each draw is an unrolled hash that
  XLA compiles slowly (30 s for a tiny tokenizer with its discriminator on a 2-core CPU, 8 s with
  rbg). Training randomness (posterior samples) keeps the default threefry key.
  """
  return jax.random.key(seed, impl="rbg")


def load_tokenizer(workdir: str, *, ema: bool = True) -> tuple[nn.Module, dict, ml_collections.ConfigDict, int]:
  """The trained tokenizer of a workdir: (model, variables, config, step), from its latest checkpoint.

  Args:
    workdir: a directory written by `python -m tokax.train --config configs/*_tokenizer.py`.
    ema: the EMA weights (else the raw ones).
  """
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise ValueError(f"load_tokenizer: {path} does not exist; --workdir must be a tokenizer training directory")
  with open(path, encoding="utf-8") as f:
    values = json.load(f)
  config = ml_collections.ConfigDict(values)
  if config.get("task") != "tokenizer":
    raise ValueError(f"load_tokenizer: {workdir} holds a {config.get('task', 'classifier')!r} run, not a tokenizer")
  restored = loop.restore_for_inference(workdir, jax.eval_shape(_init_fn(config), _init_key(0)),
                                        config.keep_checkpoints)
  if restored is None:
    raise ValueError(f"load_tokenizer: no checkpoint in {workdir}/checkpoints")
  state = restored[0]
  return model_from_config(config), state.variables(ema=ema), config, int(state.step)


def _evaluate(model: nn.Module, variables: dict, dataset: offline.ArrayDataset, batch_size: int,
              prefix: str) -> dict[str, float]:
  result = tok_eval.evaluate_images(tok_eval.make_reconstruct_fn(model), variables, dataset.images, batch_size,
                                    codebook_size=tok_eval.codebook_size(model),
                                    bits_per_token=tok_eval.bits_per_token(model))
  return {f"{prefix}/{k}": v for k, v in result.metrics.items()}


def train(config: ml_collections.ConfigDict, workdir: str) -> classifier_trainer.TrainResult:
  """Trains (or resumes) the tokenizer of `config` in `workdir`; see the module docstring for the outputs."""
  os.makedirs(workdir, exist_ok=True)
  train_ds, val_ds = load_split(config, "train"), load_split(config, "val")
  check_images(train_ds.images[:1024], "tokenizer training data")
  num_train, batch_size = len(train_ds), config.batch_size
  durations = loop.durations_from_config(config, num_train, batch_size)
  warmup_steps = steps("warmup", config, num_train, batch_size, default=0)
  loop.save_config(config, workdir, total_steps=durations.total)

  model, discriminator = model_from_config(config), discriminator_from_config(config)
  loss = loss_from_config(config)
  perceptual_fn = losses.load_perceptual_fn(config.loss.perceptual) if config.loss.perceptual else None
  schedule, g_tx, d_tx = optimizers(config, durations.total, warmup_steps)

  init_rng = _init_key(config.seed)
  init_fn = functools.partial(init_state, model, discriminator, g_tx, d_tx, image_shape=train_ds.images.shape[1:],
                              step_rng=jax.random.key(config.seed))
  state_shapes = jax.eval_shape(init_fn, init_rng)
  run = loop.setup(config, workdir, state_shapes=state_shapes, train_ds=train_ds)
  evaluate = lambda state: _evaluate(model, state.variables(), val_ds, config.eval_batch_size, "val")
  latent_scale = functools.partial(_store_latent_scale, model, train_ds=train_ds) if isinstance(
      model, KLAutoencoder) else None
  final: dict[str, float] = {}
  with jax.set_mesh(run.mesh):
    try:
      state = loop.restore_or_init(run, init_fn, init_rng, state_shapes)
      logging.info("training tokenizer %s from step %d to %d (batch %d, %d train images)",
                   config.quantizer.name, int(state.step), durations.total, batch_size, num_train)
      train_step = loop.jit_train_step(
          make_train_step(model=model, discriminator=discriminator, g_tx=g_tx, d_tx=d_tx, schedule=schedule,
                          loss=loss, ema_decay=config.ema_decay, perceptual_fn=perceptual_fn),
          run.mesh, run.state_shardings)
      with metric_logging.MetricWriter(os.path.join(workdir, "metrics.jsonl")) as writer:
        result = loop.run_steps(train_step, state, run, durations, writer, batch_keys=("image",),
                                progress_bar=config.progress_bar, evaluate=evaluate,
                                before_final_save=latent_scale)
        state = result.state
        if not result.preempted:
          final = evaluate(state)
          if isinstance(model, KLAutoencoder):
            final["latent_scale"] = float(state.model_state["stats"]["latent_scale"])
          writer.write(result.step, final)
    finally:
      run.manager.wait_until_finished()
      run.manager.close()
  if not result.preempted:
    logging.info("final metrics at step %d: %s", result.step, final)
  return classifier_trainer.TrainResult(model=model, params=state.variables(), step=result.step, metrics=final,
                                        preempted=result.preempted)


def _store_latent_scale(model: KLAutoencoder, state: TokenizerState, *,
                        train_ds: offline.ArrayDataset) -> TokenizerState:
  """The state with model_state["stats"]["latent_scale"] = 1 / std of the EMA model's latent samples."""
  images = jnp.asarray(train_ds.images[:LATENT_SCALE_EXAMPLES])
  scale_fn = jax.jit(lambda variables, x: with_latent_scale(model, variables, x, rng=jax.random.key(0))["stats"])
  return state.replace(model_state={**state.model_state, "stats": scale_fn(state.variables(), images)})
