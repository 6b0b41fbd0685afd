"""Test helpers for tokenizer modules (tests/ is on sys.path): random variables without compiling an init."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def random_variables(module: nn.Module, *args, seed: int = 0, **kwargs) -> dict:
  """Variables of `module` with numpy-drawn values, shaped by jax.eval_shape(module.init, ...).

  Skips compiling the init (threefry per parameter costs seconds to compile on a CPU): kernels
  normal / sqrt(fan_in), "scale" 1 + 0.1 normal, everything else 0.1 normal; int leaves zeros.
  """
  shapes = jax.eval_shape(lambda: module.init({"params": jax.random.key(0), "sample": jax.random.key(1)},
                                              *args, **kwargs))
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = jax.tree_util.keystr(path)
    if not jnp.issubdtype(leaf.dtype, jnp.floating):
      return jnp.zeros(leaf.shape, leaf.dtype)
    if "latent_scale" in name:
      return jnp.ones(leaf.shape, leaf.dtype)
    normal = rng.standard_normal(leaf.shape)
    if name.endswith("['kernel']"):
      return jnp.asarray(normal / np.sqrt(np.prod(leaf.shape[:-1])), leaf.dtype)
    if name.endswith("['scale']"):
      return jnp.asarray(1.0 + 0.1 * normal, leaf.dtype)
    return jnp.asarray(0.1 * normal, leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)
