"""The continuous KL autoencoder (LDM / MAR AutoencoderKL, without attention) and its latent scale.

encoder -> 1x1 conv -> (mean, logvar), 2 * latent_channels -> z = mean + exp(logvar / 2) * eps
-> 1x1 conv -> decoder. The posterior is tokax.tokenizers.quantizers.DiagonalGaussian (LDM's
chunk order and logvar clamp). The KL term is LDM's, KL(N(mean, var) || N(0, 1)) summed over the latent
of each image and averaged over the batch, here divided by the number of image values H*W*3 so
that it sits beside a per-pixel mean reconstruction loss exactly as LDM's summed losses do: LDM's
kl_weight (1e-6) means the same here.

For a generator (xAR): `encode(images)` returns latents multiplied by the stored latent scale
(1 / std of latents over a batch, MAR's 0.2325 analogue, kept in the "stats" collection and set
by `with_latent_scale`), and `decode(latents)` divides by it.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from tokax.tokenizers.autoencoder import Decoder, Encoder, downsample_factor
from tokax.tokenizers.quantizers import DiagonalGaussian
from tokax.tokenizers.tokenizer import TokenizerOutput, check_images, to_image_range, to_model_range

Array = jax.Array
Dtype = Any


class KLAutoencoder(nn.Module):
  """Continuous tokenizer: (B, H, W, 3) in [0, 1] -> latents (B, H/f, W/f, latent_channels) -> images.

  Attributes:
    latent_channels: C of the latent (MAR's KL-16: 16).
    kl_weight: weight of the KL term (per image value; LDM's meaning, about 1e-6).
    filters, channel_multipliers, num_res_blocks, z_channels, norm_groups: the Encoder/Decoder's.
    dtype, param_dtype: computation and parameter dtypes; the posterior is float32.
  """
  latent_channels: int = 4
  kl_weight: float = 1e-6
  filters: int = 128
  channel_multipliers: Sequence[int] = (1, 1, 2, 2, 4)
  num_res_blocks: int = 2
  z_channels: int = 256
  norm_groups: int = 32
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    if self.latent_channels <= 0:
      raise ValueError(f"KLAutoencoder.latent_channels must be positive; got {self.latent_channels}")
    arch = dict(filters=self.filters, channel_multipliers=tuple(self.channel_multipliers),
                num_res_blocks=self.num_res_blocks, norm_groups=self.norm_groups, dtype=self.dtype,
                param_dtype=self.param_dtype)
    self.encoder = Encoder(z_channels=self.z_channels, **arch)
    self.decoder = Decoder(out_channels=3, **arch)
    self.quant_conv = nn.Dense(2 * self.latent_channels, dtype=jnp.float32, param_dtype=self.param_dtype)
    self.post_quant_conv = nn.Dense(self.z_channels, dtype=self.dtype, param_dtype=self.param_dtype)
    # Weight 1: the KL is re-weighted per image value below (LDM's meaning of kl_weight).
    self.gaussian = DiagonalGaussian(kl_weight=1.0)
    self.latent_scale = self.variable("stats", "latent_scale", lambda: jnp.ones((), jnp.float32))

  @property
  def downsample_factor(self) -> int:
    return downsample_factor(self.channel_multipliers)

  def moments(self, images: Array) -> Array:
    """(B, H, W, 3) in [0, 1] -> posterior moments (B, h, w, 2C) float32: mean, then unclamped logvar."""
    check_images(images, "KLAutoencoder")
    return self.quant_conv(self.encoder(to_model_range(images.astype(jnp.float32))).astype(jnp.float32))

  def posterior(self, images: Array) -> tuple[Array, Array]:
    """(B, H, W, 3) in [0, 1] -> the posterior over unscaled latents: mean, logvar (B, h, w, C) (clamped)."""
    return self.gaussian.moments(self.moments(images))

  def decode_latents(self, z: Array, *, return_features: bool = False):
    """Unscaled latents (B, h, w, C) -> reconstruction (B, H, W, 3) in [-1, 1] (and the last conv's input)."""
    return self.decoder(self.post_quant_conv(z.astype(self.dtype)), return_features=return_features)

  def encode(self, images: Array, *, rng: Array | None = None) -> Array:
    """(B, H, W, 3) in [0, 1] -> scaled latents (B, h, w, C), float32: the mode, or a sample given `rng`."""
    return _latent(*self.posterior(images), rng) * self.latent_scale.value

  def decode(self, latents: Array) -> Array:
    """Scaled latents (B, h, w, C) -> images (B, H, W, 3) in [0, 1] (unclipped)."""
    z = latents.astype(jnp.float32) / self.latent_scale.value
    return to_image_range(self.decode_latents(z).astype(jnp.float32))

  def __call__(self, images: Array, *, train: bool = False) -> TokenizerOutput:
    """Reconstructs (B, H, W, 3) images in [0, 1]; samples the posterior (rng "sample") when train."""
    z, out = self.gaussian(self.moments(images), train=train)
    reconstruction, features = self.decode_latents(z, return_features=True)
    kl = out.metrics["kl"] / (images.shape[1] * images.shape[2] * images.shape[3])
    metrics = {"kl": kl, "latent_std": jnp.std(z), "posterior_std": out.metrics["posterior_std"]}
    return TokenizerOutput(reconstruction=reconstruction.astype(jnp.float32), features=features,
                           loss=self.kl_weight * kl, metrics=metrics, codes=None)


def latent_scale_from(latents: Array) -> Array:
  """1 / std of unscaled latents (any shape), so that scaled latents have unit std. () float32."""
  return 1.0 / jnp.maximum(jnp.std(latents.astype(jnp.float32)), 1e-8)


def with_latent_scale(model: KLAutoencoder, variables: dict, images: Array, *, rng: Array | None = None) -> dict:
  """`variables` with stats/latent_scale set to 1 / std of the batch's unscaled latents.

  Args:
    model: the autoencoder.
    variables: its variables ({"params", "stats"}).
    images: (B, H, W, 3) in [0, 1], a representative batch.
    rng: sample the posterior (as the generator will) instead of taking its mode.
  """
  mean, logvar = model.apply(variables, images, method=KLAutoencoder.posterior)
  z = _latent(mean, logvar, rng)
  stats = dict(variables.get("stats", {}), latent_scale=latent_scale_from(z))
  return {**variables, "stats": stats}


def _latent(mean: Array, logvar: Array, rng: Array | None) -> Array:
  """The posterior's mode (rng None) or a sample mean + exp(logvar / 2) * N(0, 1): (B, h, w, C)."""
  if rng is None:
    return mean
  return mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape, jnp.float32)
