"""The discrete tokenizer: encoder -> 1x1 conv -> quantizer -> 1x1 conv -> decoder; and the quantizer registry.

Images go in as (B, H, W, 3) float in [0, 1] (tokax's data range) and reconstructions come out in
the same range (unclipped); inside, the autoencoder works in [-1, 1]. Quantizer maths runs in
float32 whatever the model dtype.

Every quantizer follows one contract (tokax.tokenizers.quantizers):
  __call__(z (B, h, w, D), *, train) -> (z_q, QuantizerOutput(codes, loss, metrics)),
  codes_to_latent(codes) -> (B, h, w, D), codebook_size: int, bits_per_token: float,
and keeps EMA state in the "quantizer_state" collection. QUANTIZERS maps config names to
"module:attr" strings, resolved lazily. "kl" names the continuous posterior (DiagonalGaussian, z of
2C channels -> C); the Tokenizer here is discrete, so the trainer builds a vae.KLAutoencoder for it.
"""
from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from tokax.tokenizers.autoencoder import Decoder, Encoder, downsample_factor

Array = jax.Array
Dtype = Any

QUANTIZERS: dict[str, str] = {
    "vq": "tokax.tokenizers.quantizers:VectorQuantizer",
    "vq_ema": "tokax.tokenizers.quantizers:VectorQuantizerEMA",
    "fsq": "tokax.tokenizers.quantizers:FSQ",
    "lfq": "tokax.tokenizers.quantizers:LFQ",
    "kl": "tokax.tokenizers.quantizers:DiagonalGaussian",
}
IMAGE_RANGE_TOLERANCE = 1e-3


def quantizer_class(name: str) -> type[nn.Module]:
  """The quantizer class registered as `name`, or named directly as "package.module:Class"."""
  spec = QUANTIZERS.get(name, name)
  module_name, sep, attr = spec.partition(":")
  if not sep:
    raise ValueError(f"quantizer: unknown name {name!r}; expected one of {sorted(QUANTIZERS)} or 'package.module:Class'")
  try:
    module = importlib.import_module(module_name)
  except ImportError as e:
    raise ValueError(f"quantizer {name!r}: cannot import {module_name} ({e})") from e
  if not hasattr(module, attr):
    raise ValueError(f"quantizer {name!r}: {module_name} has no {attr!r}")
  return getattr(module, attr)


def build_quantizer(name: str, *, latent_dim: int | None = None, **kwargs: Any) -> nn.Module:
  """quantizer_class(name)(**kwargs), e.g. build_quantizer("fsq", levels=(8, 6, 5)).

  Args:
    name: a QUANTIZERS name or "package.module:Class".
    latent_dim: the channels D the quantizer will see (Tokenizer.latent_dim): fills the `dim` field
      of quantizers that have one (VQ, VQ-EMA, LFQ) and is checked against it and against FSQ's levels.
    **kwargs: the class's fields (see its docstring).
  """
  cls = quantizer_class(name)
  fields = {field.name for field in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
  unknown = sorted(set(kwargs) - fields) if fields else []
  if unknown:
    expected = sorted(fields - {"parent", "name"})
    raise ValueError(f"quantizer {name!r}: {cls.__name__} has no field(s) {unknown}; its fields are {expected}")
  if latent_dim is not None and "dim" in fields:
    kwargs.setdefault("dim", latent_dim)
    if kwargs["dim"] != latent_dim:
      raise ValueError(f"quantizer {name!r}: dim={kwargs['dim']} differs from latent_dim={latent_dim}; drop dim "
                       f"(it follows latent_dim) or make them equal")
  if latent_dim is not None and "levels" in kwargs and len(kwargs["levels"]) != latent_dim:
    raise ValueError(f"quantizer {name!r}: levels={tuple(kwargs['levels'])} quantise {len(kwargs['levels'])} "
                     f"channels but latent_dim={latent_dim}; set latent_dim to len(levels)")
  return cls(**kwargs)


def check_images(images: Any, owner: str) -> None:
  """Raises ValueError unless `images` is (B, H, W, 3) floating point in [0, 1] (checked on concrete arrays only)."""
  if not hasattr(images, "dtype"):
    images = np.asarray(images)
  shape, dtype = images.shape, images.dtype
  if len(shape) != 4 or shape[-1] != 3:
    raise ValueError(f"{owner}: images must have shape (B, H, W, 3); got {shape}")
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"{owner}: images must be floating point in [0, 1]; got dtype {dtype} "
                     "(divide uint8 images by 255)")
  if isinstance(images, jax.core.Tracer):
    return
  values = np.asarray(images, np.float32)
  lo, hi = float(values.min()), float(values.max())
  if lo < -IMAGE_RANGE_TOLERANCE or hi > 1.0 + IMAGE_RANGE_TOLERANCE:
    hint = " (they look like [0, 255]: divide by 255)" if hi > 2.0 else (
        " (they look like [-1, 1]: use (x + 1) / 2)" if lo < -0.5 else "")
    raise ValueError(f"{owner}: images must be in [0, 1]; got values in [{lo:.4g}, {hi:.4g}]{hint}")


@flax.struct.dataclass
class TokenizerOutput:
  """What a tokenizer's forward pass returns.

  Attributes:
    reconstruction: (B, H, W, 3) in the model range [-1, 1] (unclipped).
    features: (B, H, W, C) input of the decoder's last conv (for the adaptive GAN weight).
    loss: () float32 auxiliary loss, already weighted (quantizer loss or KL).
    metrics: dict of () scalars (quantizer perplexity and usage, kl, ...).
    codes: int32 (B, h, w[, K]) token indices, or None for continuous tokenizers.
  """
  reconstruction: Array
  features: Array
  loss: Array
  metrics: dict[str, Array]
  codes: Array | None = None


def to_model_range(images: Array) -> Array:
  """[0, 1] -> [-1, 1]."""
  return images * 2.0 - 1.0


def to_image_range(x: Array) -> Array:
  """[-1, 1] -> [0, 1] (no clipping)."""
  return (x + 1.0) * 0.5


class Tokenizer(nn.Module):
  """VQGAN-style discrete tokenizer: (B, H, W, 3) in [0, 1] -> codes (B, H/f, W/f[, K]) -> reconstruction.

  Attributes:
    quantizer: the quantizer module (build_quantizer); its latent width is `latent_dim`.
    latent_dim: channels D the quantizer sees (FSQ: len(levels); LFQ: bits; VQ: code width).
    filters, channel_multipliers, num_res_blocks, z_channels, norm_groups: the Encoder/Decoder's.
    dtype, param_dtype: of the autoencoder; the quantizer always runs in float32.
  """
  quantizer: nn.Module
  latent_dim: int
  filters: int = 128
  channel_multipliers: Sequence[int] = (1, 1, 2, 2, 4)
  num_res_blocks: int = 2
  z_channels: int = 256
  norm_groups: int = 32
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    arch = dict(filters=self.filters, channel_multipliers=tuple(self.channel_multipliers),
                num_res_blocks=self.num_res_blocks, norm_groups=self.norm_groups, dtype=self.dtype,
                param_dtype=self.param_dtype)
    self.encoder = Encoder(z_channels=self.z_channels, **arch)
    self.decoder = Decoder(out_channels=3, **arch)
    self.quant_conv = nn.Dense(self.latent_dim, dtype=jnp.float32, param_dtype=self.param_dtype)
    self.post_quant_conv = nn.Dense(self.z_channels, dtype=self.dtype, param_dtype=self.param_dtype)

  @property
  def downsample_factor(self) -> int:
    return downsample_factor(self.channel_multipliers)

  def encode_latents(self, images: Array) -> Array:
    """(B, H, W, 3) in [0, 1] -> pre-quantisation latents (B, h, w, latent_dim) float32."""
    check_images(images, "Tokenizer")
    z = self.encoder(to_model_range(images.astype(jnp.float32)))
    return self.quant_conv(z.astype(jnp.float32))

  def quantize(self, z: Array, *, train: bool = False):
    """(B, h, w, D) float32 -> (z_q (B, h, w, D), QuantizerOutput)."""
    return self.quantizer(z.astype(jnp.float32), train=train)

  def encode(self, images: Array) -> Array:
    """(B, H, W, 3) in [0, 1] -> int32 codes (B, h, w[, K])."""
    _, out = self.quantize(self.encode_latents(images))
    return out.codes

  def decode_latents(self, z_q: Array, *, return_features: bool = False):
    """Quantised latents (B, h, w, D) -> reconstruction (B, H, W, 3) in [-1, 1] (and the last conv's input)."""
    return self.decoder(self.post_quant_conv(z_q.astype(self.dtype)), return_features=return_features)

  def decode(self, codes: Array) -> Array:
    """int32 codes (B, h, w[, K]) -> images (B, H, W, 3) in [0, 1] (unclipped)."""
    z_q = self.quantizer.codes_to_latent(codes)
    return to_image_range(self.decode_latents(z_q).astype(jnp.float32))

  def __call__(self, images: Array, *, train: bool = False) -> TokenizerOutput:
    """Encode, quantise and decode (B, H, W, 3) images in [0, 1]."""
    z_q, out = self.quantize(self.encode_latents(images), train=train)
    reconstruction, features = self.decode_latents(z_q, return_features=True)
    return TokenizerOutput(reconstruction=reconstruction.astype(jnp.float32), features=features,
                           loss=jnp.asarray(out.loss, jnp.float32), metrics=dict(out.metrics), codes=out.codes)
