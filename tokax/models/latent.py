"""The latent interface of the generators: encode images to a (B, G, G, C) token grid and back.

A Latent is a pair of pure callables, so a continuous KL autoencoder (tokax.tokenizers.vae) can be
dropped in later as Latent(encode=lambda im: scale * vae.encode(im), decode=..., grid=..,
channels=..). The built-in one needs no training: grey p x p pixel patches ("identity latent").
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Latent:
  """encode: images (B, H, W, 3) in [0, 1] -> (B, G, G, C); decode: the inverse, clipped to [0, 1]."""
  encode: Callable[[Array], Array]
  decode: Callable[[Array], Array]
  grid: int
  channels: int


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


def build_latent(name: str, *, image_size: int, patch: int = 4) -> Latent:
  """A latent by name: "patch" (grey pixel patches). The KL autoencoder plugs in here."""
  if name == "patch":
    return patch_latent(image_size, patch)
  raise ValueError(f"latent: unknown {name!r}; expected 'patch' (the KL autoencoder is not wired in yet)")
