"""Orbax checkpoints of the train state with the data position: async saves, keep-last-K, checked restores.

A step directory holds three orbax items: "state" (the TrainState arrays), "data" (the batch
stream's position, JSON) and "meta" (JSON: a format tag and the state's tree of paths, shapes and
dtypes). Before anything is read, the checkpoint directory is checked: an entry that is not a
complete tokax step directory (a foreign file, a step without its items, another program's
checkpoint, a state of another model) is refused with a CheckpointError that says what is wrong,
and a checkpoint orbax cannot read is refused too, so a run never continues from a half-loaded state.
Interrupted saves leave only orbax temporary directories, which are ignored.

Checksums: once a save is on disk, Saver records the size and CRC-32 of every file of the step
directory in its CHECKSUMS file; restore() recomputes them before orbax reads anything and refuses
a checkpoint whose files differ (DamagedCheckpointError naming the step and the file). A checkpoint
without the record (its run was killed between the save and the record, or an older tokax wrote
it) is loaded with a warning. restore_latest(..., fallback=True) skips damaged checkpoints, newest
first, moves them to <directory>.damaged/ and resumes from the newest one that verifies.

Multi-host: every process calls save and restore (orbax coordinates them, and process 0 writes
the JSON items); arrays restore straight onto the target shardings, which may be those of
another mesh than the one that saved them.
"""
from __future__ import annotations

import json
import os
import zlib
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from tokax.train.sharding import path_string

FORMAT = "tokax.train.checkpoint/1"
ITEMS = ("state", "data", "meta")
_TMP_MARKER = ".orbax-checkpoint-tmp"
# Files every finished step directory has, whatever the orbax storage options.
_REQUIRED = ("_CHECKPOINT_METADATA", "meta", "data", "state", os.path.join("state", "_METADATA"))
CHECKSUMS = "tokax_checksums.json"  # in each step directory: {"algorithm": "crc32", "files": {path: [size, crc]}}
_EARLIER = ("Delete or move that step directory to resume from an earlier checkpoint (python -m tokax.train "
            "--resume_from_previous_good does that itself)")


class CheckpointError(ValueError):
  """A checkpoint directory that is not, or not entirely, a tokax checkpoint."""


class DamagedCheckpointError(CheckpointError):
  """A step directory whose files are missing, cut short or changed since they were saved."""


def make_manager(directory: str, *, max_to_keep: int | None, async_save: bool = True,
                 allow_damaged: bool = False) -> ocp.CheckpointManager:
  """A CheckpointManager over `directory` keeping the last `max_to_keep` (>= 1; None: all) checkpoints; the
  caller picks the steps. The newest checkpoint is never deleted.

  Raises CheckpointError if `directory` already holds anything but complete tokax checkpoints (with
  `allow_damaged`, truncated step directories are left for restore_latest(fallback=True) to set aside).
  """
  if max_to_keep is not None and (isinstance(max_to_keep, bool) or not isinstance(max_to_keep, int)
                                  or max_to_keep < 1):
    raise ValueError(f"keep_checkpoints={max_to_keep!r}: keep at least 1 checkpoint (1 keeps only the latest, None "
                     f"keeps all); 0 would delete every checkpoint, the final one too")
  directory = os.path.abspath(directory)
  check_directory(directory, allow_damaged=allow_damaged)
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                         enable_async_checkpointing=async_save)
  return ocp.CheckpointManager(directory, options=options, item_names=ITEMS)


def check_directory(directory: str, *, allow_damaged: bool = False) -> list[int]:
  """The steps of the complete tokax checkpoints in `directory`; raises CheckpointError on anything else
  (with `allow_damaged`, truncated step directories are logged and left out instead)."""
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
    try:
      _check_complete(path)
    except DamagedCheckpointError as e:
      if not allow_damaged:
        raise
      logging.warning("%s", e)
      continue
    found.append(int(entry))
  return sorted(found)


def _check_complete(step_dir: str) -> None:
  """Raises DamagedCheckpointError if `step_dir` lacks an item, CheckpointError if another format wrote it."""
  missing = [name for name in _REQUIRED if not os.path.exists(os.path.join(step_dir, name))]
  if missing:
    raise DamagedCheckpointError(
        f"checkpoint {step_dir} is truncated or not a tokax checkpoint (missing {', '.join(missing)}); it will not "
        f"be loaded. {_EARLIER}")
  meta = _read_meta(step_dir)
  if meta.get("format") != FORMAT:
    raise CheckpointError(f"checkpoint {step_dir} has format {meta.get('format')!r}, not {FORMAT!r}: it was not "
                          f"written by this trainer version; use a fresh --workdir")


def _read_meta(step_dir: str) -> dict[str, Any]:
  path = os.path.join(step_dir, "meta", "metadata")
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise DamagedCheckpointError(f"checkpoint {step_dir}: unreadable meta item ({e}); it will not be loaded. "
                                 f"{_EARLIER}") from e


# --- checksums -----------------------------------------------------------------------------------

def file_checksums(step_dir: str) -> dict[str, list[int]]:
  """{path relative to `step_dir`: [size in bytes, CRC-32]} of every file in it but the checksum record."""
  sums = {}
  for root, dirs, files in os.walk(step_dir):
    dirs.sort()
    for name in sorted(files):
      path = os.path.join(root, name)
      relative = os.path.relpath(path, step_dir)
      if relative.startswith(CHECKSUMS):
        continue
      crc, size = 0, 0
      with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
          crc, size = zlib.crc32(chunk, crc), size + len(chunk)
      sums[relative] = [size, crc]
  return sums


def record_checksums(step_dir: str) -> None:
  """Writes the file_checksums of a finished step directory into its CHECKSUMS file."""
  path = os.path.join(step_dir, CHECKSUMS)
  with open(f"{path}.tmp", "w", encoding="utf-8") as f:
    json.dump({"algorithm": "crc32", "files": file_checksums(step_dir)}, f, indent=0, sort_keys=True)
  os.replace(f"{path}.tmp", path)


def verify_checksums(step_dir: str, step: int) -> bool:
  """Whether `step_dir` has a checksum record (False: none); raises DamagedCheckpointError naming the step
  and the first file that is missing or differs from it."""
  path = os.path.join(step_dir, CHECKSUMS)
  if not os.path.exists(path):
    return False
  try:
    with open(path, encoding="utf-8") as f:
      recorded = json.load(f)["files"]
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise DamagedCheckpointError(f"checkpoint step {step} ({step_dir}): unreadable checksum record {CHECKSUMS} "
                                 f"({e}); it will not be loaded. {_EARLIER}") from e
  found = file_checksums(step_dir)
  problems = []
  for relative, (size, crc) in sorted(recorded.items()):
    if relative not in found:
      problems.append(f"{relative} is missing")
    elif found[relative][0] != size:
      problems.append(f"{relative} has {found[relative][0]} bytes, {size} were saved")
    elif found[relative][1] != crc:
      problems.append(f"{relative} differs from what was saved (CRC-32 {found[relative][1]:08x}, saved {crc:08x})")
  if problems:
    more = f" (and {len(problems) - 1} more file(s))" if len(problems) > 1 else ""
    raise DamagedCheckpointError(
        f"checkpoint step {step} ({step_dir}) failed its checksums: {problems[0]}{more}; it will not be loaded. "
        f"{_EARLIER}")
  return True


class Saver:
  """Saves a run's checkpoints through `manager` (save()) and records each one's file checksums once it is
  on disk: before the next save starts (orbax waits for the previous one there anyway) and in close().

  Multi-host: every process calls save and close; process 0 writes the records.
  """

  def __init__(self, manager: ocp.CheckpointManager):
    self.manager = manager
    self._unrecorded: list[int] = []

  def save(self, step: int, state: Any, data_position: Mapping[str, Any]) -> None:
    self.record()
    save(self.manager, step, state, data_position)
    self._unrecorded.append(int(step))

  def record(self) -> None:
    """Waits for the pending save and writes the checksums of the checkpoints saved since the last record."""
    if not self._unrecorded:
      return
    self.manager.wait_until_finished()
    steps, self._unrecorded = self._unrecorded, []
    if jax.process_index() != 0:
      return
    for step in steps:
      step_dir = os.path.join(str(self.manager.directory), str(step))
      if os.path.isdir(step_dir):  # not removed by the keep-last-N policy meanwhile
        record_checksums(step_dir)

  def close(self) -> None:
    """record(), then closes the manager (even when the pending save failed)."""
    try:
      self.record()
    finally:
      self.manager.close()


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
  _check_complete(step_dir)
  if not verify_checksums(step_dir, step):
    logging.warning("checkpoint step %d (%s) has no checksum record (its run stopped before writing it, or an older "
                    "tokax saved it): loading it unverified", step, step_dir)
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
    raise DamagedCheckpointError(
        f"checkpoint {step_dir} could not be read ({type(e).__name__}: {str(e)[:500]}); it is truncated or damaged "
        f"and was not loaded. {_EARLIER}") from e
  return restored["state"], dict(restored["data"])


def restore_latest(manager: ocp.CheckpointManager, target: Any, *,
                   fallback: bool = False) -> tuple[Any, dict[str, Any]] | None:
  """restore() of the latest checkpoint, or None when there is none.

  With `fallback`, a damaged checkpoint (DamagedCheckpointError) is logged, moved to
  <directory>.damaged/<step> (so that the run can save that step again) and the next older one is
  tried; if none verifies, CheckpointError (never a silent start from step 0).
  """
  directory = str(manager.directory)
  steps = sorted(set(manager.all_steps()) | set(_step_dirs(directory)), reverse=True)
  skipped = []
  for step in steps:
    try:
      restored = restore(manager, step, target)
    except DamagedCheckpointError as e:
      if not fallback:
        raise
      logging.warning("resume_from_previous_good: skipping checkpoint step %d: %s", step, e)
      skipped.append(step)
      continue
    if skipped:
      _set_aside(manager, skipped)
    return restored
  if skipped:
    raise CheckpointError(
        f"no checkpoint in {directory} verifies (steps {', '.join(map(str, skipped))} are damaged; see the warnings "
        f"above); the run will not start over from step 0 on top of them. Move {directory} away to start afresh")
  return None


def _step_dirs(directory: str) -> list[int]:
  if not os.path.isdir(directory):
    return []
  return [int(e) for e in os.listdir(directory) if e.isdigit() and os.path.isdir(os.path.join(directory, e))]


def _set_aside(manager: ocp.CheckpointManager, steps: list[int]) -> None:
  """Moves damaged step directories out of the manager's directory (process 0), then reloads its step list."""
  directory = str(manager.directory).rstrip("/")
  if jax.process_index() == 0:
    for step in steps:
      destination = os.path.join(f"{directory}.damaged", str(step))
      suffix = 1
      while os.path.exists(destination):
        destination, suffix = os.path.join(f"{directory}.damaged", f"{step}.{suffix}"), suffix + 1
      os.makedirs(os.path.dirname(destination), exist_ok=True)
      os.rename(os.path.join(directory, str(step)), destination)
      logging.warning("moved damaged checkpoint step %d to %s", step, destination)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices("tokax_checkpoint_set_aside")
  manager.reload()
