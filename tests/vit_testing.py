"""ViT helpers for tests: random timm-named weights without compiling init, one jitted forward per model.

Eager flax init/apply on CPU compiles every primitive at every new shape, and a fresh jax.jit per
test recompiles the same model; these helpers avoid both.
"""
import collections
import functools

import jax
import jax.numpy as jnp
import numpy as np

from golden.weights import random_state_dict
from tokax.interop.timm import convert_state_dict, export_state_dict

_TRACES = collections.Counter()


def random_params(model, seed=0):
  """golden.weights draws for every parameter of a ViT (timm names), from the shapes alone (no compile)."""
  images = jnp.zeros((1, model.image_size, model.image_size, 3))
  abstract = jax.eval_shape(model.init, jax.random.key(0), images)
  zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract)
  shapes = {k: v.shape for k, v in export_state_dict(zeros).items()}
  return convert_state_dict(random_state_dict(shapes, seed))


@functools.partial(jax.jit, static_argnums=0)
def apply(model, params, images):
  """model.apply(params, images, return_intermediates=True), compiled once per (model, shapes)."""
  _TRACES[model] += 1
  return model.apply(params, images, return_intermediates=True)


def traces(model):
  """How many times `apply` has traced this model (in this process)."""
  return _TRACES[model]
