"""A minimal FSQ quantizer that follows the quantizer contract, for tests only.

Stands in for tokax.tokenizers.quantizers until that module lands; select it in a config or in
build_quantizer as "tokenizer_doubles:FSQDouble" (tests/ is on sys.path).
"""
from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np


@flax.struct.dataclass
class QuantizerOutput:
  codes: jax.Array
  loss: jax.Array
  metrics: dict


class FSQDouble(nn.Module):
  """FSQ as the official notebook (with arctanh for its tan), straight-through rounding; a "calls"
  counter in the "quantizer_state" collection exercises the mutable-state path."""
  levels: Sequence[int] = (5, 5, 5)
  eps: float = 1e-3

  @property
  def codebook_size(self) -> int:
    return int(np.prod(self.levels))

  @property
  def bits_per_token(self) -> float:
    return float(np.log2(self.codebook_size))

  def _basis(self):
    return jnp.asarray(np.concatenate([[1], np.cumprod(self.levels[:-1])]), jnp.int32)

  def codes_to_latent(self, codes):
    levels = jnp.asarray(self.levels, jnp.int32)
    digits = (codes[..., None] // self._basis()) % levels
    return (digits - levels // 2).astype(jnp.float32) / (levels // 2)

  @nn.compact
  def __call__(self, z, *, train: bool):
    calls = self.variable("quantizer_state", "calls", lambda: jnp.zeros((), jnp.int32))
    if train:
      calls.value = calls.value + 1
    levels = jnp.asarray(self.levels, jnp.float32)
    half_l = (levels - 1) * (1 - self.eps) / 2
    offset = jnp.where(jnp.asarray(self.levels) % 2 == 1, 0.0, 0.5)
    bounded = jnp.tanh(z.astype(jnp.float32) + jnp.arctanh(offset / half_l)) * half_l - offset
    rounded = bounded + jax.lax.stop_gradient(jnp.round(bounded) - bounded)
    half_width = jnp.floor(levels / 2)
    z_q = rounded / half_width
    digits = (jnp.round(bounded) + half_width).astype(jnp.int32)
    codes = jnp.sum(digits * self._basis(), -1)
    counts = jnp.bincount(codes.reshape(-1), length=self.codebook_size)
    probs = counts / codes.size
    perplexity = jnp.exp(-jnp.sum(jnp.where(probs > 0, probs * jnp.log(jnp.maximum(probs, 1e-12)), 0.0)))
    metrics = {"perplexity": perplexity, "usage": jnp.mean(counts > 0)}
    return z_q.astype(z.dtype), QuantizerOutput(codes=codes, loss=jnp.zeros((), jnp.float32), metrics=metrics)


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
