"""Activation sharding hints for the models: batch-axis constraints that are no-ops without a mesh.

Under `jax.set_mesh(mesh)` (the trainer sets it around its jitted step), `constrain_batch` pins an
activation's leading dim to the mesh's "data" axis, so XLA keeps the batch split through the model
whatever the parameter sharding (FSDP, tensor parallel). Without a mesh, or without a "data" axis,
or when the batch does not divide, it returns its input: the models run unchanged on one device.
"""
from __future__ import annotations

import jax

BATCH_AXIS = "data"


def constrain_batch(x: jax.Array, axis: str = BATCH_AXIS) -> jax.Array:
  """x: (B, ...) -> the same (B, ...), constrained to be split over mesh axis `axis` along B."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or axis not in mesh.axis_names or x.ndim == 0:
    return x
  if x.shape[0] % mesh.shape[axis]:
    return x
  return jax.lax.with_sharding_constraint(x, jax.P(axis))
