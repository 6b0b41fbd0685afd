"""The tokenizer task (config.task = "tokenizer"): train a Tokenizer or KLAutoencoder (+ PatchGAN).

The step is tokax.train.tokenizer_step (generator and discriminator from one forward pass, weight
EMA). metrics.jsonl gets train/* every log step and val/psnr, val/ssim, val/usage ... at eval steps
and the end, measured with the EMA weights; TensorBoard gets them too, with val/reconstructions: the
first validation images above their reconstructions, from the same evaluation. For the KL autoencoder
the final checkpoint also stores the latent scale (1 / std of the EMA model's latents over a training batch) in
model_state["stats"]. A restored run's variables are the EMA weights (ema=False: the raw ones).

Data: config.data.name is an embedded dataset (images built at config.model.image_size) or, through
tokax.data.pipeline, "tfds:<name>" / "folder:<root>" with config.data.preprocess (train) and
preprocess_eval (validation, the latent-scale images), both ending in float32 images in [0, 1] at
config.model.image_size (e.g. "decode|resize_small(256)|central_crop(256)|value_range(0, 1)");
config.data.<split>_split names a split's source (tfds imagenet2012: val_split="validation") and
num_<split> keeps its first examples (None: all of them).
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from tokax.data import offline, pipeline
from tokax.tokenizers import evaluate as tok_eval
from tokax.tokenizers import losses
from tokax.tokenizers.tokenizer import Tokenizer, build_quantizer, check_images
from tokax.tokenizers.vae import KLAutoencoder, with_latent_scale
from tokax.train import logging as metric_logging
from tokax.train import optim
from tokax.train.config_utils import durations_from_config, steps
from tokax.train.tasks import base
from tokax.train.tokenizer_step import LossConfig, TokenizerState, init_state, make_train_step

NAME = "tokenizer"
LATENT_SCALE_EXAMPLES = 256
IMAGES_SHOWN = 8  # validation images (and their reconstructions) in TensorBoard's val/reconstructions


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


def is_embedded(name: str) -> bool:
  """Whether data.name is an embedded dataset (not "tfds:" / "folder:", which go through the pipeline)."""
  return not str(name).startswith(("tfds:", "folder:"))


class FirstExamples:
  """The first `num_examples` examples of a pipeline Source (a Source itself)."""

  def __init__(self, source: pipeline.Source, num_examples: int):
    self.source, self.num_examples = source, num_examples
    self.num_classes = getattr(source, "num_classes", None)

  def __len__(self) -> int:
    return self.num_examples

  def __getitem__(self, index: int) -> dict[str, Any]:
    if not 0 <= index < self.num_examples:
      raise IndexError(index)
    return self.source[index]


def split_source(data: ml_collections.ConfigDict, split: str, num_examples: int | None) -> pipeline.Source:
  """The pipeline Source of a "tfds:" / "folder:" split: data.<split>_split names it (default the split itself);
  its first `num_examples` examples (None: all)."""
  name = data.get(f"{split}_split") or split
  source = pipeline.get_source(data.name, name, data_dir=data.get("data_dir"))
  if num_examples is None:
    return source
  if not 0 < num_examples <= len(source):
    raise ValueError(f"config.data.num_{split}={num_examples}: {data.name} split {name!r} has {len(source)} "
                     f"examples; set it to 1..{len(source)} (or None: all of them)")
  return FirstExamples(source, num_examples)


def check_preprocess(source: pipeline.Source, preprocess: str, image_size: int, field: str) -> None:
  """Refuses a preprocess (config.data.<field>) whose first example is not a float (S, S, 3) image in [0, 1]."""
  from tokax.data import transforms  # noqa: PLC0415

  image = np.asarray(transforms.parse(preprocess)(dict(source[0]), np.random.default_rng(0))["image"])
  if image.shape != (image_size, image_size, 3) or not np.issubdtype(image.dtype, np.floating):
    raise ValueError(f"config.data.{field}={preprocess!r} makes {image.dtype} images of shape {image.shape}; the "
                     f"model reads float32 ({image_size}, {image_size}, 3) images in [0, 1]: end it with "
                     f"'...|resize_small({image_size})|central_crop({image_size})|value_range(0, 1)'")
  check_images(image[None], f"config.data.{field}")


def read_images(source: pipeline.Source, *, preprocess: str, batch_size: int, num_threads: int, name: str,
                split: str, num_classes: int | None = None) -> offline.ArrayDataset:
  """Every example of `source` through `preprocess`, in order, in memory: images (N, S, S, 3) float32."""
  images, labels = [], []
  batches = pipeline.make_iterator(source, batch_size=min(batch_size, len(source)), preprocess=preprocess,
                                   shuffle=False, drop_remainder=False, num_epochs=1, num_threads=num_threads)
  for batch in batches:
    images.append(batch["image"][batch["mask"]])
    labels.append(batch["label"][batch["mask"]])
  images = np.concatenate(images)
  images = images.astype(np.float32) / 255.0 if images.dtype == np.uint8 else images.astype(np.float32)
  labels = np.concatenate(labels).astype(np.int32)
  return offline.ArrayDataset(images=images, labels=labels, num_classes=num_classes or int(labels.max()) + 1,
                              name=name, split=split)


def load_split(config: ml_collections.ConfigDict, split: str, num_examples: int | None = None) -> offline.ArrayDataset:
  """One split in memory (config.data.num_<split> examples, or `num_examples`): images (N, S, S, 3) float32 in
  [0, 1] at config.model.image_size; tfds and folders through config.data.preprocess_eval."""
  d = config.data
  num_examples = d.get(f"num_{split}") if num_examples is None else num_examples
  if is_embedded(d.name):
    return offline.load(d.name, split, image_size=config.model.image_size, num_examples=num_examples, seed=d.seed)
  source = split_source(d, split, num_examples)
  check_preprocess(source, d.get("preprocess_eval") or "", config.model.image_size, "preprocess_eval")
  return read_images(source, preprocess=d.get("preprocess_eval") or "", batch_size=config.eval_batch_size,
                     num_threads=d.get("num_threads") or 8, name=str(d.name), split=split,
                     num_classes=getattr(source, "num_classes", None))


def train_data(config: ml_collections.ConfigDict) -> tuple[base.TrainData, np.ndarray]:
  """The train split as the pipeline serves it, and its first LATENT_SCALE_EXAMPLES images (eval preprocessing)."""
  d = config.data
  if is_embedded(d.name):
    train_ds = load_split(config, "train")
    check_images(train_ds.images[:1024], "tokenizer training data")
    return base.TrainData(source=pipeline.ArraySource(train_ds)), train_ds.images[:LATENT_SCALE_EXAMPLES]
  source = split_source(d, "train", d.get("num_train"))
  check_preprocess(source, d.get("preprocess") or "", config.model.image_size, "preprocess")
  head = load_split(config, "train", min(LATENT_SCALE_EXAMPLES, len(source)))
  return base.TrainData(source=source, preprocess=d.get("preprocess") or ""), head.images


def init_key(seed: int) -> jax.Array:
  """The key of the parameter initialisation: an "rbg" key, whose draws are single RngBitGenerator ops.

  Flax draws every parameter from its own key; with threefry each draw is an unrolled hash that
  XLA compiles slowly (30 s for a tiny tokenizer with its discriminator on a 2-core CPU, 8 s with
  rbg). Training randomness (posterior samples) keeps the default threefry key.
  """
  return jax.random.key(seed, impl="rbg")


def evaluate_dataset(model: nn.Module, variables: dict, dataset: offline.ArrayDataset, batch_size: int,
                     prefix: str) -> dict[str, Any]:
  """{prefix/psnr, prefix/ssim, [usage, perplexity, bits_per_image]} of the model on a dataset's images, and
  prefix/reconstructions: a metric_logging.Image of the first IMAGES_SHOWN images above their reconstructions."""
  result = tok_eval.evaluate_images(tok_eval.make_reconstruct_fn(model), variables, dataset.images, batch_size,
                                    codebook_size=tok_eval.codebook_size(model),
                                    bits_per_token=tok_eval.bits_per_token(model))
  grid = tok_eval.image_grid({prefix: result}, per_suite=IMAGES_SHOWN)
  return {**{f"{prefix}/{k}": v for k, v in result.metrics.items()},
          f"{prefix}/reconstructions": metric_logging.Image(grid)}


def store_latent_scale(model: KLAutoencoder, state: TokenizerState, *, images: jax.Array) -> TokenizerState:
  """The state with model_state["stats"]["latent_scale"] = 1 / std of the EMA model's latent samples of `images`."""
  scale_fn = jax.jit(lambda variables, x: with_latent_scale(model, variables, x, rng=jax.random.key(0))["stats"])
  return state.replace(model_state={**state.model_state, "stats": scale_fn(state.variables(), images)})


def build(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> base.Plan:
  """The tokenizer run of `config` (see the module docstring)."""
  del mesh  # evaluation runs on the host-gathered EMA variables
  data, scale_images = train_data(config)
  val_ds = load_split(config, "val")
  num_train, batch_size = len(data.source), config.batch_size
  durations = durations_from_config(config, num_train, batch_size)
  model, discriminator = model_from_config(config), discriminator_from_config(config)
  perceptual_fn = losses.load_perceptual_fn(config.loss.perceptual) if config.loss.perceptual else None
  schedule, g_tx, d_tx = optimizers(config, durations.total, steps("warmup", config, num_train, batch_size, default=0))
  init_fn = functools.partial(init_state, model, discriminator, g_tx, d_tx, image_shape=scale_images.shape[1:],
                              step_rng=jax.random.key(config.seed))
  step_fn = make_train_step(model=model, discriminator=discriminator, g_tx=g_tx, d_tx=d_tx, schedule=schedule,
                            loss=loss_from_config(config), ema_decay=config.ema_decay, perceptual_fn=perceptual_fn)
  evaluate = lambda state: evaluate_dataset(model, state.variables(), val_ds, config.eval_batch_size, "val")
  is_kl = isinstance(model, KLAutoencoder)

  def finalize(state: TokenizerState, _) -> dict[str, Any]:
    final = evaluate(state)
    if is_kl:
      final["latent_scale"] = float(state.model_state["stats"]["latent_scale"])
    return final

  before_final_save = functools.partial(
      store_latent_scale, model, images=jnp.asarray(scale_images)) if is_kl else None
  return base.Plan(
      model=model, data=data, batch_keys=("image",),
      durations=durations, init_fn=init_fn, init_rng=init_key(config.seed), step_fn=step_fn, evaluate=evaluate,
      finalize=finalize, before_final_save=before_final_save, result_params=lambda state: state.variables(),
      resolved={"total_steps": durations.total},
      description=f"tokenizer {config.quantizer.name}, {num_train} train images of {config.data.name}")


def target(config: ml_collections.ConfigDict) -> base.Target:
  """The model and train state of a saved tokenizer run."""
  model, discriminator = model_from_config(config), discriminator_from_config(config)
  _, g_tx, d_tx = optimizers(config, total_steps=1, warmup_steps=0)
  image_shape = (config.model.image_size, config.model.image_size, 3)
  init_fn = functools.partial(init_state, model, discriminator, g_tx, d_tx, image_shape=image_shape,
                              step_rng=jax.random.key(config.seed))
  return base.Target(model=model, init_fn=init_fn, init_rng=init_key(0))


def variables(state: TokenizerState, *, ema: bool = True) -> dict[str, Any]:
  """The EMA (or raw) params with the state collections (quantizer state, latent stats)."""
  return state.variables(ema=ema)


TASK = base.Task(name=NAME, build=build, target=target, variables=variables)
