"""Training-time augmentation, run on device inside the train step.

No flips: they change digit identity. Translation keeps the label of every dataset here.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def random_translate(images: jax.Array, rng: jax.Array, max_shift: int) -> jax.Array:
  """Shifts each image by an integer (dy, dx) in [-max_shift, max_shift]^2, repeating the edge pixels.

  Args:
    images: (B, H, W, C).
    rng: PRNG key.
    max_shift: largest shift in pixels; 0 returns the images unchanged.

  Returns:
    (B, H, W, C) shifted images.
  """
  if max_shift <= 0:
    return images
  batch, height, width, channels = images.shape
  padded = jnp.pad(images, ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)), mode="edge")
  offsets = jax.random.randint(rng, (batch, 2), 0, 2 * max_shift + 1)
  crop = lambda image, offset: jax.lax.dynamic_slice(
      image, (offset[0], offset[1], 0), (height, width, channels))
  return jax.vmap(crop)(padded, offsets)
