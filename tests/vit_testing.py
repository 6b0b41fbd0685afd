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
from tokax.bench import measure
from tokax.interop.timm import convert_state_dict, export_state_dict
from tokax.models import ViT

_TRACES = collections.Counter()


def fast_compile():
  """compiler_options for jax.jit that compile a full ViT with token reduction 2-3x faster on XLA:CPU.

  XLA:CPU's older elemental emitters instead of its fusion emitters (tokax.bench.measure.legacy_cpu_emitters,
  which the library's evaluation rows use too): the same HLO, the same float32 operations without fast-math,
  generated faster (a ViT-S/16 with ToMe: 10 s -> 4 s; with MCTF's merges 19 s -> 6 s; the parity errors
  against the official goldens keep their size). Not for DToMe's masked forward, which compiles slower this
  way (test_dtome keeps the default). {} where this XLA lacks the option.
  """
  return measure.legacy_cpu_emitters()


SMALL = ViT(variant="Ti/16", depth=4, num_classes=10, image_size=64)  # 16 patches + cls: the edge-case tests' model


@functools.cache
def small_params():
  """SMALL's parameters from jax.random.key(1), initialised once per test process."""
  images = jax.random.normal(jax.random.key(0), (2, 64, 64, 3))
  return jax.jit(SMALL.init, compiler_options=fast_compile())(jax.random.key(1), images)


def random_params(model, seed=0):
  """golden.weights draws for every parameter of a ViT (timm names), from the shapes alone (no compile)."""
  images = jnp.zeros((1, model.image_size, model.image_size, 3))
  abstract = jax.eval_shape(model.init, jax.random.key(0), images)
  zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract)
  shapes = {k: v.shape for k, v in export_state_dict(zeros).items()}
  return convert_state_dict(random_state_dict(shapes, seed))


def _apply(model, params, images):
  _TRACES[model] += 1
  return model.apply(params, images, return_intermediates=True)


@functools.cache
def _jitted_apply():
  return jax.jit(_apply, static_argnums=0, compiler_options=fast_compile())


def apply(model, params, images):
  """model.apply(params, images, return_intermediates=True), compiled once per (model, shapes)."""
  return _jitted_apply()(model, params, images)


def traces(model):
  """How many times `apply` has traced this model (in this process)."""
  return _TRACES[model]
