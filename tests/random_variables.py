"""Random model variables made in numpy: no init program compiled.

On the CPU, compiling a flax model.init (one random-number program per parameter) costs tens of
seconds even for a 2-block ViT, and running it eagerly costs more; tests whose numbers do not depend
on the initialiser take the shapes from jax.eval_shape (a trace, nothing compiled) and fill them here.
"""
import jax
import jax.numpy as jnp
import numpy as np


def random_like(shapes, seed=0, scale=0.2):
  """float32 numpy arrays of the shapes in `shapes` (a tree of ShapeDtypeStructs).

  Normal(0, scale) everywhere, plus 1 on the LayerNorm scales (leaves named "scale").
  """
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    base = 1.0 if getattr(path[-1], "key", None) == "scale" else 0.0
    return (base + scale * rng.standard_normal(leaf.shape)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def random_variables(model, image_shape, seed=0, scale=0.2):
  """random_like the variables model.init would give for images of shape (H, W, 3)."""
  shapes = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, *image_shape), jnp.float32))
  return random_like(shapes, seed, scale)
