"""Orbax checkpoints of the train state: keep-last-N, async saves, restore with target shardings."""
from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp


def make_manager(directory: str, *, max_to_keep: int) -> ocp.CheckpointManager:
  """A CheckpointManager over `directory` keeping the last `max_to_keep` checkpoints; the caller picks the steps."""
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def save(manager: ocp.CheckpointManager, step: int, state) -> None:
  """Starts an async save of `state` at `step`; returns once the arrays are copied off the device."""
  manager.save(step, args=ocp.args.StandardSave(state), force=True)


def abstract_like(state_shapes, sharding: jax.sharding.Sharding):
  """The restore target: ShapeDtypeStructs of `state_shapes` (e.g. from jax.eval_shape) placed on `sharding`."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), state_shapes)


def restore_latest(manager: ocp.CheckpointManager, abstract_state):
  """The latest checkpoint restored into `abstract_state` (shapes, dtypes and target shardings), or None."""
  step = manager.latest_step()
  if step is None:
    return None
  return manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
