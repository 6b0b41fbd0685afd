"""Orbax checkpoints of the train state with the data position: async saves, keep-last-K, checked restores.

A step directory holds three orbax items: "state" (the TrainState arrays), "data" (the batch
stream's position, JSON) and "meta" (JSON: a format tag and the state's tree of paths, shapes and
dtypes). Before anything is read, the checkpoint directory is checked: an entry that is not a
complete tokax step directory (a foreign file, a step without its items, another program's
checkpoint, a state of another model) is refused with a CheckpointError that says what is wrong,
and a checkpoint orbax cannot read is refused too, so a run never continues from a half-loaded state.
Interrupted saves leave only orbax temporary directories, which are ignored.

Multi-host: every process calls save and restore (orbax coordinates them, and process 0 writes
the JSON items); arrays restore straight onto the target shardings, which may be those of
another mesh than the one that saved them.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from tokax.train.sharding import path_string

FORMAT = "tokax.train.checkpoint/1"
ITEMS = ("state", "data", "meta")
_TMP_MARKER = ".orbax-checkpoint-tmp"
# Files every finished step directory has, whatever the orbax storage options.
_REQUIRED = ("_CHECKPOINT_METADATA", "meta", "data", "state", os.path.join("state", "_METADATA"))


class CheckpointError(ValueError):
  """A checkpoint directory that is not, or not entirely, a tokax checkpoint."""


def make_manager(directory: str, *, max_to_keep: int, async_save: bool = True) -> ocp.CheckpointManager:
  """A CheckpointManager over `directory` keeping the last `max_to_keep` checkpoints; the caller picks the steps.

  Raises CheckpointError if `directory` already holds anything but complete tokax checkpoints.
  """
  directory = os.path.abspath(directory)
  check_directory(directory)
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                         enable_async_checkpointing=async_save)
  return ocp.CheckpointManager(directory, options=options, item_names=ITEMS)


def check_directory(directory: str) -> list[int]:
  """The steps of the complete tokax checkpoints in `directory`; raises CheckpointError on anything else."""
  if not os.path.exists(directory):
    return []
  if not os.path.isdir(directory):
    raise CheckpointError(f"checkpoint directory {directory} is a file; point --workdir at a fresh directory")
  found = []
  for entry in sorted(os.listdir(directory)):
    if _TMP_MARKER in entry:
      continue  # an interrupted save; orbax never restores it and removes it on the next save
    path = os.path.join(directory, entry)
    if not (entry.isdigit() and os.path.isdir(path)):
      raise CheckpointError(
          f"{directory} is not a tokax checkpoint directory: it holds {entry!r}, which is not a step directory. "
          f"Use a fresh --workdir, or move the foreign files away")
    missing = [name for name in _REQUIRED if not os.path.exists(os.path.join(path, name))]
    if missing:
      raise CheckpointError(
          f"checkpoint {path} is truncated or not a tokax checkpoint (missing {', '.join(missing)}); it will not "
          f"be loaded. Delete that step directory to resume from an earlier one")
    meta = _read_meta(path)
    if meta.get("format") != FORMAT:
      raise CheckpointError(f"checkpoint {path} has format {meta.get('format')!r}, not {FORMAT!r}: it was not "
                            f"written by this trainer version; use a fresh --workdir")
    found.append(int(entry))
  return found


def _read_meta(step_dir: str) -> dict[str, Any]:
  path = os.path.join(step_dir, "meta", "metadata")
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise CheckpointError(f"checkpoint {step_dir}: unreadable meta item ({e}); it will not be loaded") from e


def tree_signature(tree: Any) -> list[list[Any]]:
  """[[path, shape, dtype], ...] of every leaf of `tree` (arrays or ShapeDtypeStructs), in tree order."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return [[path_string(path), list(np.shape(leaf)), str(leaf.dtype)] for path, leaf in leaves]


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_position: Mapping[str, Any]) -> None:
  """Starts an async save of `state` and the batch stream position at `step`.

  Returns once the arrays are copied off the devices; the donated buffers may then be reused.
  """
  meta = {"format": FORMAT, "step": int(step), "tree": tree_signature(state)}
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(dict(data_position)),
      meta=ocp.args.JsonSave(meta)), force=True)


def abstract_state(state_shapes: Any, shardings: Any) -> Any:
  """The restore target: ShapeDtypeStructs of `state_shapes` (from jax.eval_shape) with per-leaf `shardings`."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state_shapes, shardings)


def restore(manager: ocp.CheckpointManager, step: int, target: Any) -> tuple[Any, dict[str, Any]]:
  """(state placed on the target's shardings, data position) of checkpoint `step`.

  Args:
    target: ShapeDtypeStructs with shardings (abstract_state); the saved tree must match it leaf
      for leaf in path, shape and dtype (the mesh and shardings may differ from the saving run's).
  """
  step_dir = os.path.join(str(manager.directory), str(step))
  saved = {path: rest for path, *rest in _read_meta(step_dir).get("tree") or []}
  wanted = {path: rest for path, *rest in tree_signature(target)}
  if saved != wanted:
    diffs = [f"{path}: saved {saved.get(path, 'nothing')}, expected {want}"
             for path, want in wanted.items() if saved.get(path) != want]
    diffs += [f"{path}: saved {saved[path]}, expected nothing" for path in saved if path not in wanted]
    raise CheckpointError(
        f"checkpoint {step_dir} holds a different train state than this config builds ({len(diffs)} leaves differ; "
        f"first: {diffs[0]}); it will not be loaded. Use the config that wrote it, or a fresh --workdir")
  try:
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()))
  except Exception as e:  # orbax raises many kinds (tensorstore, file, value errors) for a damaged directory
    raise CheckpointError(f"checkpoint {step_dir} could not be read ({type(e).__name__}: {str(e)[:500]}); it is "
                          f"truncated or damaged and was not loaded. Delete it to resume from an earlier step") from e
  return restored["state"], dict(restored["data"])


def restore_latest(manager: ocp.CheckpointManager, target: Any) -> tuple[Any, dict[str, Any]] | None:
  """restore() of the latest checkpoint, or None when there is none."""
  step = manager.latest_step()
  if step is None:
    return None
  return restore(manager, step, target)
