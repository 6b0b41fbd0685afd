"""The tokenizer task of the trainer (config.task = "tokenizer"): train a Tokenizer or KLAutoencoder.

Same workdir layout, checkpoints, resume and logging as the classifier trainer (trainer.py):
  config.json    the resolved config
  metrics.jsonl  train/* every log step; val/psnr, val/ssim, val/usage ... at eval steps and the end
  checkpoints/   orbax checkpoints of the TokenizerState (keep-last-N)
Evaluation uses the EMA weights. For the KL autoencoder the final checkpoint also stores the
latent scale (1 / std of the EMA model's latents over a training batch) in model_state["stats"].
"""
from __future__ import annotations

import functools
import json
import os
import sys
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
import tqdm
from absl import logging

from tokax.data import offline
from tokax.tokenizers import evaluate as tok_eval
from tokax.tokenizers import losses
from tokax.tokenizers.tokenizer import Tokenizer, build_quantizer, check_images
from tokax.tokenizers.vae import KLAutoencoder, with_latent_scale
from tokax.train import checkpoint, optim
from tokax.train import logging as metric_logging
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
  return Tokenizer(quantizer=build_quantizer(name, **kwargs), latent_dim=config.quantizer.latent_dim, **arch)


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
  return functools.partial(init_state, model, discriminator, g_tx, d_tx, image_shape=image_shape)


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
  sharding = jax.NamedSharding(classifier_trainer._data_parallel_mesh(), jax.P())
  init_fn = _init_fn(config)
  manager = checkpoint.make_manager(os.path.join(workdir, "checkpoints"), max_to_keep=config.keep_checkpoints)
  try:
    state = checkpoint.restore_latest(
        manager, checkpoint.abstract_like(jax.eval_shape(init_fn, _init_key(0)), sharding))
  finally:
    manager.close()
  if state is None:
    raise ValueError(f"load_tokenizer: no checkpoint in {workdir}/checkpoints")
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
  total_steps = steps("total", config, num_train, batch_size)
  warmup_steps = steps("warmup", config, num_train, batch_size, default=0)
  log_every = max(1, steps("log_every", config, num_train, batch_size, default=50))
  eval_every = steps("eval_every", config, num_train, batch_size, default=0)
  checkpoint_every = steps("checkpoint_every", config, num_train, batch_size, default=0)
  classifier_trainer._save_config(config, workdir, total_steps=total_steps)

  model, discriminator = model_from_config(config), discriminator_from_config(config)
  loss = loss_from_config(config)
  perceptual_fn = losses.load_perceptual_fn(config.loss.perceptual) if config.loss.perceptual else None
  schedule, g_tx, d_tx = optimizers(config, total_steps, warmup_steps)

  mesh = classifier_trainer._data_parallel_mesh()
  replicated = jax.NamedSharding(mesh, jax.P())
  data_sharding = jax.NamedSharding(mesh, jax.P("data"))
  init_rng, step_rng = _init_key(config.seed), jax.random.key(config.seed)
  image_shape = train_ds.images.shape[1:]
  init_fn = functools.partial(init_state, model, discriminator, g_tx, d_tx, image_shape=image_shape)
  manager = checkpoint.make_manager(os.path.join(workdir, "checkpoints"), max_to_keep=config.keep_checkpoints)
  state = checkpoint.restore_latest(manager, checkpoint.abstract_like(jax.eval_shape(init_fn, init_rng), replicated))
  if state is None:
    state = jax.jit(init_fn, out_shardings=replicated)(init_rng)
  start_step = int(state.step)
  logging.info("training tokenizer %s from step %d to %d (batch %d, %d train images)",
               config.quantizer.name, start_step, total_steps, batch_size, num_train)

  train_step = jax.jit(
      make_train_step(model=model, discriminator=discriminator, g_tx=g_tx, d_tx=d_tx, schedule=schedule, loss=loss,
                      ema_decay=config.ema_decay, perceptual_fn=perceptual_fn),
      in_shardings=(replicated, data_sharding, replicated), out_shardings=(replicated, replicated),
      donate_argnums=(0,))
  batches = classifier_trainer.batches_from_step(train_ds, batch_size, seed=config.data.seed, step=start_step)
  writer = metric_logging.MetricWriter(os.path.join(workdir, "metrics.jsonl"))
  show_bar = config.progress_bar and jax.process_index() == 0
  bar = tqdm.tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True, disable=not show_bar,
                  mininterval=1.0 if sys.stderr.isatty() else 30.0)
  log = classifier_trainer._TrainLog(writer, bar, batch_size=batch_size, log_every=log_every, total_steps=total_steps)
  try:
    for step in range(start_step + 1, total_steps + 1):
      batch = jax.device_put({"image": next(batches)["image"]}, data_sharding)
      if step == start_step + 1:
        compile_start = time.perf_counter()
        state, metrics = train_step(state, batch, step_rng)
        writer.write(step, {"train/compile_s": time.perf_counter() - compile_start})
        log.restart_clock()
      else:
        state, metrics = train_step(state, batch, step_rng)
      log.push(step, metrics)
      if eval_every and step % eval_every == 0 and step != total_steps:
        eval_start = time.perf_counter()
        writer.write(step, _evaluate(model, state.variables(), val_ds, config.eval_batch_size, "val"))
        log.exclude(time.perf_counter() - eval_start)
      if checkpoint_every and step % checkpoint_every == 0 and step != total_steps:
        checkpoint.save(manager, step, state)
    log.flush()
    bar.close()
    if isinstance(model, KLAutoencoder) and total_steps > start_step:
      state = _store_latent_scale(model, state, train_ds)
    if total_steps > start_step:
      checkpoint.save(manager, total_steps, state)
    final_step = max(start_step, total_steps)
    final = _evaluate(model, state.variables(), val_ds, config.eval_batch_size, "val")
    if isinstance(model, KLAutoencoder):
      final["latent_scale"] = float(state.model_state["stats"]["latent_scale"])
    writer.write(final_step, final)
  finally:
    bar.close()
    writer.close()
    manager.wait_until_finished()
    manager.close()
  logging.info("final metrics at step %d: %s", final_step, final)
  return classifier_trainer.TrainResult(model=model, params=state.variables(), step=final_step, metrics=final)


def _store_latent_scale(model: KLAutoencoder, state: TokenizerState, train_ds: offline.ArrayDataset) -> TokenizerState:
  """The state with model_state["stats"]["latent_scale"] = 1 / std of the EMA model's latent samples."""
  images = jnp.asarray(train_ds.images[:LATENT_SCALE_EXAMPLES])
  scale_fn = jax.jit(lambda variables, x: with_latent_scale(model, variables, x, rng=jax.random.key(0))["stats"])
  return state.replace(model_state={**state.model_state, "stats": scale_fn(state.variables(), images)})
