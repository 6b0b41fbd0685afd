"""The latent interface of the generators: encode images to a (B, G, G, C) token grid and back.

A Latent is a set of pure callables over frozen variables. Two kinds are built here:
  "patch"      grey p x p pixel patches in [-1, 1] ("identity latent"; no variables, no training)
  "tokenizer"  a trained tokax tokenizer: scale * the KL autoencoder's posterior (its mean, or a sample
               in training, as xAR and MAR train on `posterior.sample() * 0.2325`), or scale * a discrete
               tokenizer's quantized embeddings (the z_q its decoder reads); decode divides by the scale
               and runs the tokenizer's decoder. G = image_size / f (the downsample factor), C = the
               latent width (KL: latent_channels, VQ/FSQ/LFQ: latent_dim).

models/ never imports train/: the tokenizer comes in as a module and its variables.
tokax.train.tasks.xar loads one from a tokenizer run's workdir (config.latent.workdir) and
picks its scale (the run's recorded latent scale, or 1 / std over training images).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from tokax.tokenizers.tokenizer import Tokenizer, to_image_range
from tokax.tokenizers.vae import KLAutoencoder

Array = jax.Array
LATENTS = ("patch", "tokenizer")


@dataclasses.dataclass(frozen=True)
class Latent:
  """Pure functions between images and a latent token grid.

  Attributes:
    encode: images (B, H, W, 3) in [0, 1] -> (B, G, G, C) float32, deterministic (a KL posterior's mean).
    decode: (B, G, G, C) -> images (B, H, W, 3), clipped to [0, 1].
    grid: G.
    channels: C.
    encode_sample: (images, rng) -> (B, G, G, C), a posterior draw (what a generator trains on); None: the
      latent is deterministic and `sample` is `encode`.
    variables: the frozen variables the callables read (a tokenizer's), None for none.
    with_variables: variables -> the same latent over other variables (e.g. traced ones inside a jit, so
      that they are an argument rather than a constant of the compiled program); None without variables.
    scale: latents are scale * the tokenizer's own latents (1 for patches).
  """
  encode: Callable[[Array], Array]
  decode: Callable[[Array], Array]
  grid: int
  channels: int
  encode_sample: Callable[[Array, Array], Array] | None = None
  variables: Any = None
  with_variables: Callable[[Any], "Latent"] | None = None
  scale: float = 1.0

  def sample(self, images: Array, rng: Array) -> Array:
    """(B, H, W, 3) -> (B, G, G, C): encode_sample(images, rng), or encode(images) for a deterministic latent."""
    return self.encode(images) if self.encode_sample is None else self.encode_sample(images, rng)

  def bind(self, variables: Any) -> "Latent":
    """This latent over `variables` (the same pytree structure as self.variables); itself when it has none."""
    return self if self.with_variables is None else self.with_variables(variables)


def patch_latent(image_size: int, patch: int) -> Latent:
  """Grey p x p pixel patches in [-1, 1]: G = image_size / p, C = p * p (4x4 on 32 px: 8 x 8 x 16)."""
  if image_size % patch:
    raise ValueError(f"patch_latent: patch={patch} must divide image_size={image_size}")
  g = image_size // patch

  def encode(images: Array) -> Array:
    grey = images.mean(axis=-1) * 2.0 - 1.0  # (B, H, W)
    b = grey.shape[0]
    return grey.reshape(b, g, patch, g, patch).transpose(0, 1, 3, 2, 4).reshape(b, g, g, patch * patch)

  def decode(latent: Array) -> Array:
    b = latent.shape[0]
    grey = latent.reshape(b, g, g, patch, patch).transpose(0, 1, 3, 2, 4).reshape(b, image_size, image_size)
    return jnp.repeat(jnp.clip((grey + 1.0) / 2.0, 0.0, 1.0)[..., None], 3, axis=-1)

  return Latent(encode, decode, g, patch * patch)


def tokenizer_grid(model: nn.Module, image_size: int) -> tuple[int, int]:
  """(G, C) of a tokenizer's latent on image_size px images: G = image_size / f, C = its latent width."""
  if isinstance(model, KLAutoencoder):
    channels = model.latent_channels
  elif isinstance(model, Tokenizer):
    channels = model.latent_dim
  else:
    raise ValueError(f"tokenizer_latent: expected a tokax KLAutoencoder or Tokenizer; got {type(model).__name__}")
  f = model.downsample_factor
  if image_size % f:
    raise ValueError(f"tokenizer_latent: image_size={image_size} is not a multiple of the tokenizer's downsample "
                     f"factor {f}")
  return image_size // f, channels


def tokenizer_latent(model: nn.Module, variables: Any, *, image_size: int, scale: float,
                     sample: bool = False) -> Latent:
  """The latent of a trained tokenizer: scale * its latents (B, image_size / f, image_size / f, C).

  Args:
    model: a KLAutoencoder (continuous) or a Tokenizer (VQ, VQ-EMA, FSQ, LFQ, ...).
    variables: its variables ({"params", ...}: the EMA weights of a tokenizer run).
    image_size: the side of the images it encodes (the size it was trained at).
    scale: the latent scale (MAR's 0.2325 for its KL-16: 1 / std of the latents).
    sample: KL only: encode_sample draws mean + std * N(0, 1) from the posterior (xAR's and MAR's training
      input); encode is always the posterior mean.

  A discrete tokenizer's latent is its quantized embeddings z_q (deterministic): decode feeds a
  generator's continuous output to the decoder as it is, without snapping it to the codebook.
  Deliberate difference from MAR: the scale is read from the tokenizer run (or measured), not a
  constant; decode clips to [0, 1] (MAR clamps the same way before saving images).
  """
  grid, channels = tokenizer_grid(model, image_size)
  is_kl = isinstance(model, KLAutoencoder)
  if sample and not is_kl:
    raise ValueError(f"config.latent.sample: a discrete tokenizer ({type(model.quantizer).__name__}) has no "
                     "posterior to sample; its latent is the quantized embeddings: set config.latent.sample=False")
  scale = float(scale)

  def make(variables: Any) -> Latent:
    if is_kl:
      def encode(images: Array) -> Array:
        mean, _ = model.apply(variables, images, method=KLAutoencoder.posterior)
        return mean * scale

      def encode_sample(images: Array, rng: Array) -> Array:
        mean, logvar = model.apply(variables, images, method=KLAutoencoder.posterior)
        return (mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape, jnp.float32)) * scale

      decode_latents = KLAutoencoder.decode_latents
    else:
      def encode(images: Array) -> Array:
        z = model.apply(variables, images, method=Tokenizer.encode_latents)
        z_q, _ = model.apply(variables, z, method=Tokenizer.quantize)
        return z_q.astype(jnp.float32) * scale

      encode_sample = None
      decode_latents = Tokenizer.decode_latents

    def decode(latents: Array) -> Array:
      x = model.apply(variables, latents.astype(jnp.float32) / scale, method=decode_latents)
      return jnp.clip(to_image_range(x.astype(jnp.float32)), 0.0, 1.0)

    return Latent(encode, decode, grid, channels, encode_sample=encode_sample if sample else None,
                  variables=variables, with_variables=make, scale=scale)

  return make(variables)


def build_latent(name: str, *, image_size: int, patch: int = 4, tokenizer: tuple[nn.Module, Any] | None = None,
                 scale: float = 1.0, sample: bool = False) -> Latent:
  """A latent by name (config.latent.name): "patch" (grey pixel patches of side `patch`) or "tokenizer"
  (`tokenizer` = (model, variables), see tokenizer_latent; tokax.train.tasks.xar loads one from a run)."""
  if name == "patch":
    return patch_latent(image_size, patch)
  if name == "tokenizer":
    if tokenizer is None:
      raise ValueError("build_latent('tokenizer'): pass tokenizer=(model, variables); to load a tokenizer run use "
                       "tokax.train.tasks.xar.load_tokenizer(workdir) (config.latent.workdir in a config)")
    model, variables = tokenizer
    return tokenizer_latent(model, variables, image_size=image_size, scale=scale, sample=sample)
  raise ValueError(f"config.latent.name: unknown latent {name!r}; expected one of {list(LATENTS)} ('patch': grey "
                   f"pixel patches; 'tokenizer' with config.latent.workdir=<a tokenizer run's workdir>)")
