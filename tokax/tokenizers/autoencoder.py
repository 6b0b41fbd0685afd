"""Convolutional encoder and decoder of the VQGAN / MaskGIT family (no attention), NHWC.

Encoder: conv3x3(filters) -> per level i: num_res_blocks x ResBlock(filters * mult[i]), then a 2x
downsample except after the last level -> num_res_blocks x ResBlock -> GroupNorm -> swish ->
conv1x1(z_channels). The decoder mirrors it with nearest-neighbour 2x upsampling + conv3x3.
With L = len(channel_multipliers) levels, an (B, H, W, 3) image becomes a (B, H / 2^(L-1),
W / 2^(L-1), z_channels) latent.

Parameter names follow flax's automatic names of maskgit's `vqgan_tokenizer.py` (Conv_i,
ResBlock_i/{GroupNorm_j, Conv_j}) except the decoder's last layer, named `conv_out` so that the
VQGAN adaptive weight can find it.

One difference from maskgit on purpose: its ResBlock applies the channel-changing shortcut conv
to the block's *output* (`residual = conv(x)` after x was overwritten), so the "residual" branch is
not a residual. Here the shortcut takes the block input, as in taming's ResnetBlock and in
He et al. Where channels do not change the two are the same function.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
Dtype = Any


def _check_architecture(owner: str, filters: int, channel_multipliers: Sequence[int], num_res_blocks: int,
                        norm_groups: int) -> None:
  if filters <= 0:
    raise ValueError(f"{owner}.filters must be positive; got {filters}")
  if not channel_multipliers or any(m <= 0 for m in channel_multipliers):
    raise ValueError(f"{owner}.channel_multipliers must be a non-empty sequence of positive ints; "
                     f"got {channel_multipliers!r}")
  if num_res_blocks < 1:
    raise ValueError(f"{owner}.num_res_blocks must be >= 1; got {num_res_blocks}")
  for m in channel_multipliers:
    if (filters * m) % norm_groups:
      raise ValueError(f"{owner}.norm_groups={norm_groups} must divide every level's channels "
                       f"(filters * multiplier = {filters * m}); pick norm_groups dividing {filters}")


def downsample_factor(channel_multipliers: Sequence[int]) -> int:
  """Spatial stride of the encoder: 2^(levels - 1)."""
  return 2 ** (len(channel_multipliers) - 1)


def avg_pool_2x2(x: Array) -> Array:
  """(B, H, W, C) -> (B, H/2, W/2, C) mean of each 2x2 block (maskgit's dsample on even sizes)."""
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def upsample_nearest_2x(x: Array) -> Array:
  """(B, H, W, C) -> (B, 2H, 2W, C), each pixel repeated 2x2 (jax.image.resize 'nearest' at factor 2)."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def output_conv(out_channels: int, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
                name: str | None = None) -> nn.Conv:
  """The decoder's last layer, conv3x3 -> out_channels; `output_conv(...).apply({"params": p}, features)`
  applies the trained `conv_out` params p on their own."""
  return nn.Conv(out_channels, (3, 3), dtype=dtype, param_dtype=param_dtype, name=name)


class ResBlock(nn.Module):
  """GN -> swish -> conv3x3 -> GN -> swish -> conv3x3, plus the input (1x1-projected if C changes).

  (B, H, W, C_in) -> (B, H, W, filters).
  """
  filters: int
  norm_groups: int = 32
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    norm = lambda: nn.GroupNorm(num_groups=self.norm_groups, epsilon=1e-6, dtype=self.dtype,
                                param_dtype=self.param_dtype)
    conv = lambda k: nn.Conv(self.filters, (k, k), use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype)
    residual = x
    h = conv(3)(nn.swish(norm()(x)))
    h = conv(3)(nn.swish(norm()(h)))
    if x.shape[-1] != self.filters:
      residual = conv(1)(residual)
    return h + residual.astype(h.dtype)


class Encoder(nn.Module):
  """Images (B, H, W, C_img) in [-1, 1] -> latents (B, H/f, W/f, z_channels), f = 2^(levels-1).

  Attributes:
    filters: channels of the first level (maskgit: 128).
    channel_multipliers: per-level multiple of `filters` (maskgit: (1, 1, 2, 2, 4)).
    num_res_blocks: ResBlocks per level.
    z_channels: output channels.
    norm_groups: GroupNorm groups; must divide every level's channels.
    conv_downsample: a strided 4x4 conv instead of 2x2 average pooling between levels.
    dtype, param_dtype: computation and parameter dtypes.
  """
  filters: int = 128
  channel_multipliers: Sequence[int] = (1, 1, 2, 2, 4)
  num_res_blocks: int = 2
  z_channels: int = 256
  norm_groups: int = 32
  conv_downsample: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    _check_architecture("Encoder", self.filters, self.channel_multipliers, self.num_res_blocks, self.norm_groups)
    factor = downsample_factor(self.channel_multipliers)
    if x.ndim != 4 or x.shape[1] % factor or x.shape[2] % factor:
      raise ValueError(f"Encoder: images must be (B, H, W, C) with H and W multiples of the downsampling factor "
                       f"{factor} (2^(len(channel_multipliers) - 1)); got shape {x.shape}")
    conv = lambda feats, k, **kw: nn.Conv(feats, (k, k), dtype=self.dtype, param_dtype=self.param_dtype, **kw)
    block = lambda feats: ResBlock(feats, self.norm_groups, self.dtype, self.param_dtype)
    x = conv(self.filters, 3, use_bias=False)(x.astype(self.dtype))
    for i, mult in enumerate(self.channel_multipliers):
      for _ in range(self.num_res_blocks):
        x = block(self.filters * mult)(x)
      if i < len(self.channel_multipliers) - 1:
        if self.conv_downsample:
          x = conv(self.filters * mult, 4, strides=(2, 2))(x)
        else:
          x = avg_pool_2x2(x)
    for _ in range(self.num_res_blocks):
      x = block(self.filters * self.channel_multipliers[-1])(x)
    x = nn.swish(nn.GroupNorm(num_groups=self.norm_groups, epsilon=1e-6, dtype=self.dtype,
                              param_dtype=self.param_dtype)(x))
    return conv(self.z_channels, 1)(x)


class Decoder(nn.Module):
  """Latents (B, h, w, C_z) -> images (B, h*f, w*f, out_channels) (unbounded; trained toward [-1, 1]).

  Attributes: as Encoder, plus out_channels (3). With return_features it also returns the input
  of the last conv (`conv_out`), which the adaptive GAN weight differentiates through.
  """
  filters: int = 128
  channel_multipliers: Sequence[int] = (1, 1, 2, 2, 4)
  num_res_blocks: int = 2
  out_channels: int = 3
  norm_groups: int = 32
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, z: Array, *, return_features: bool = False) -> Array | tuple[Array, Array]:
    """z: (B, h, w, C_z) -> (B, H, W, out_channels), and the last conv's input (B, H, W, filters*mult[0])
    when return_features."""
    _check_architecture("Decoder", self.filters, self.channel_multipliers, self.num_res_blocks, self.norm_groups)
    conv = lambda feats, k, **kw: nn.Conv(feats, (k, k), dtype=self.dtype, param_dtype=self.param_dtype, **kw)
    block = lambda feats: ResBlock(feats, self.norm_groups, self.dtype, self.param_dtype)
    x = conv(self.filters * self.channel_multipliers[-1], 3)(z.astype(self.dtype))
    for _ in range(self.num_res_blocks):
      x = block(self.filters * self.channel_multipliers[-1])(x)
    for i in reversed(range(len(self.channel_multipliers))):
      for _ in range(self.num_res_blocks):
        x = block(self.filters * self.channel_multipliers[i])(x)
      if i > 0:
        x = conv(self.filters * self.channel_multipliers[i], 3)(upsample_nearest_2x(x))
    features = nn.swish(nn.GroupNorm(num_groups=self.norm_groups, epsilon=1e-6, dtype=self.dtype,
                                     param_dtype=self.param_dtype)(x))
    out = output_conv(self.out_channels, self.dtype, self.param_dtype, name="conv_out")(features)
    return (out, features) if return_features else out
