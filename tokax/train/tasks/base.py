"""The Task interface (what differs between classifier, tokenizer and xAR runs) and restoring a run.

A Task is two functions and a fact about its state:
  build(config, mesh) -> Plan       everything tokax.train.run.train needs beyond the config: the
                                    model, train data, init / step functions, evaluation, finalize
  target(config) -> Target          the model and the (abstract) train state of a saved run, from
                                    its config.json alone (what load_run restores into)
  variables(state, ema) -> vars     the model's inference variables in a train state

load(task, config, workdir) restores a run of that task: its latest checkpoint, on this process's
first device. tokax.train.restore.load_run picks the task from the run's config.json.
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import ml_collections

from tokax.data import pipeline
from tokax.train import checkpoint
from tokax.train.config_utils import Durations


class RunError(ValueError):
  """A workdir that holds no restorable run (no config.json, no checkpoint, another task's run)."""


@dataclasses.dataclass(frozen=True)
class Run:
  """A trained run, restored from its workdir.

  Attributes:
    workdir: the run's directory.
    task: "classifier", "tokenizer" or "xar" (config.task).
    config: the resolved config the run saved (config.json: overrides and derived values included).
    model: the flax module the run trained (a classifier with its reduction, a tokenizer, an XAR).
    variables: what model.apply takes: {"params": ...} (classifier; SiT's train-only reverse modules
      dropped), the EMA (or raw) params and state collections (tokenizer), the EMA (or raw) params (xAR).
    step: the checkpoint's step.
    state: the whole restored train state (optimizer state, EMA, RNG, ...).
  """
  workdir: str
  task: str
  config: ml_collections.ConfigDict
  model: nn.Module
  variables: Any
  step: int
  state: Any


@dataclasses.dataclass(frozen=True)
class TrainData:
  """The train split as the run's input pipeline serves it (shuffled, restorable, this process's rows).

  Attributes:
    source: a tokax.data.pipeline Source ([i] -> {"image", "label"}).
    preprocess: per-example ops (tokax.data.transforms), "" for none.
    batch_ops: per-batch ops ("mixup_cutmix(...)"), "" for none.
    repeated_augmentation: copies of each example per epoch (DataIterator's; 0: off).
  """
  source: pipeline.Source
  preprocess: str = ""
  batch_ops: str = ""
  repeated_augmentation: int = 0


@dataclasses.dataclass(frozen=True)
class Plan:
  """One task's run, built from the config; the skeleton (tokax.train.run) does the rest.

  Attributes:
    model: the module being trained (TrainResult.model).
    data: the train split.
    batch_keys: the batch fields the step reads.
    durations: total steps and the log / eval / checkpoint periods.
    init_fn: rng -> the initial train state (jitted onto the state shardings by the skeleton).
    init_rng: its key.
    step_fn: (state, batch) -> (state, metrics), or (state, batch, frozen) -> ... with `frozen`; un-jitted.
    frozen: host arrays the step reads but never updates (a distillation teacher's variables), or None.
    start: state -> state at step 0 of a fresh run (weights from another run), or None.
    evaluate: state -> metrics every durations.eval_every steps, or None; a tokax.train.logging.Image value
      (pictures the evaluation made anyway) goes to TensorBoard only.
    finalize: (state, last train metrics) -> the final metrics (written; returned without Image values), after
      the last step.
    before_final_save: state -> state once after the last step, before its checkpoint, or None.
    result_params: state -> TrainResult.params.
    resolved: values written into config.json beside the config ({"total_steps": ..., "model": {...}}).
    description: one line for the log.
  """
  model: nn.Module
  data: TrainData
  batch_keys: tuple[str, ...]
  durations: Durations
  init_fn: Callable[[jax.Array], Any]
  init_rng: jax.Array
  step_fn: Callable[..., tuple[Any, dict[str, jax.Array]]]
  finalize: Callable[[Any, dict[str, float]], dict[str, float]]
  result_params: Callable[[Any], Any]
  frozen: Any = None
  start: Callable[[Any], Any] | None = None
  evaluate: Callable[[Any], dict[str, float]] | None = None
  before_final_save: Callable[[Any], Any] | None = None
  resolved: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  description: str = ""


@dataclasses.dataclass(frozen=True)
class Target:
  """A saved run's model and the function whose eval_shape is its train state's structure."""
  model: nn.Module
  init_fn: Callable[[jax.Array], Any]
  init_rng: jax.Array


@dataclasses.dataclass(frozen=True)
class Task:
  """What one task supplies; see the module docstring."""
  name: str
  build: Callable[[ml_collections.ConfigDict, jax.sharding.Mesh], Plan]
  target: Callable[[ml_collections.ConfigDict], Target]
  variables: Callable[..., Any]


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The resolved config a run saved as workdir/config.json."""
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    what = "does not exist" if not os.path.exists(workdir) else "holds no config.json"
    raise RunError(f"{workdir!r} is not a tokax training directory: the directory {what} (python -m tokax.train "
                   f"writes config.json into its --workdir before the first step)")
  with open(path, encoding="utf-8") as f:
    return ml_collections.ConfigDict(json.load(f))


def restore_latest(workdir: str, state_shapes: Any) -> Any | None:
  """The latest checkpoint's state of `workdir`, on this process's first device; None when it has none."""
  directory = os.path.join(workdir, "checkpoints")
  if not checkpoint.check_directory(directory):
    return None
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = checkpoint.abstract_state(state_shapes, jax.tree.map(lambda _: device, state_shapes))
  manager = checkpoint.make_manager(directory, max_to_keep=1_000_000)  # never deletes: it saves nothing
  try:
    restored = checkpoint.restore_latest(manager, target)
  finally:
    manager.close()
  return None if restored is None else restored[0]


def load(task: Task, config: ml_collections.ConfigDict, workdir: str, *, ema: bool = True) -> Run:
  """The run of `task` in `workdir` (config: its config.json) at its latest checkpoint."""
  if not checkpoint.check_directory(os.path.join(workdir, "checkpoints")):
    raise RunError(f"{workdir!r} holds a {task.name} run (config.json) but no checkpoint under "
                   f"{os.path.join(workdir, 'checkpoints')}: it stopped before its first save; train it (again)")
  target = task.target(config)
  state = restore_latest(workdir, jax.eval_shape(target.init_fn, target.init_rng))
  return Run(workdir=workdir, task=task.name, config=config, model=target.model,
             variables=task.variables(state, ema=ema), step=int(state.step), state=state)
