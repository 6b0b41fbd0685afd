"""The one run skeleton: build, restore-or-init, the step loop, evaluation, checkpoints, pre-emption, logging.

  python -m tokax.train --config configs/digits_vit.py --workdir /tmp/digits_vit   (tokax.train.main)
  result = tokax.train.run.train(config, workdir)

train(config, workdir) asks the task of config.task (tokax.train.tasks: "classifier", the default,
"tokenizer" or "xar") for its Plan (model, train data, init and step functions, evaluation,
finalize) and runs it; everything else is written once, here. It resumes from the workdir's latest
checkpoint if there is one, and writes into the workdir:
  config.json    the resolved config (total_steps, the data's num_classes, ... filled in): what
                 tokax.train.restore.load_run rebuilds the run from
  configs/       config.<step>.json: each config the run used, from the step it took over (workdir.py)
  metrics.jsonl  one JSON line per log / eval step (train/*, val/*, test/*, the final metrics)
  tensorboard/   the same numbers (same names and steps) as TensorBoard event files, and the images a task's
                 evaluation makes (the tokenizer's reconstructions); with --tensorboard or config.tensorboard
                 True (pip install 'tokax[tensorboard]'; docs/tensorboard.md); a resumed session hides
                 what earlier ones wrote after its checkpoint (purge_step), so each step is drawn once
  checkpoints/   orbax checkpoints of the train state and the data position (keep-last-N), with the
                 checksums of their files
  lock           the pid and host of the trainer writing into the workdir (a second one is refused)

Nothing is silent (docs/robustness.md): sizes and periods are checked before anything is built, a
resume with a config that trains differently is refused unless allow_config_change, a damaged
checkpoint is refused (or, with resume_from_previous_good, skipped for the newest one that verifies),
and the last checkpoint is never deleted.

The step is one jax.jit over the mesh of config.mesh, the state placed by config.sharding's rules
(tokax.train.sharding) and donated, the batch split over "data". The train data of every task goes
through tokax.data.pipeline (embedded datasets, tfds, image folders): this process's rows of each
global batch, restorable from the checkpoint's {"epoch", "position"}. With several processes
(jax.distributed initialised by main.py) each loads its rows; process 0 writes the files. Metrics
are fetched one step late (logging never blocks the device); a NaN/inf loss is an error with its
step. A SIGTERM stops the loop after the current step and saves a checkpoint there (result.preempted).
"""
from __future__ import annotations

import dataclasses
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import tqdm
from absl import logging

from tokax.data import pipeline
from tokax.train import checkpoint, config_utils, sharding, tasks
from tokax.train import logging as metric_logging
from tokax.train import workdir as workdir_files
from tokax.train.config_utils import Durations
from tokax.train.tasks.base import Plan, Task, TrainData

StepFn = Callable[[Any, dict[str, jax.Array]], tuple[Any, dict[str, jax.Array]]]


@dataclasses.dataclass(frozen=True)
class TrainResult:
  """What train() returns.

  Attributes:
    model: the trained module (a classifier with the config's reduction, a tokenizer, an XAR).
    params: its variables, on the device (the EMA ones where the task keeps an EMA).
    step: the final step.
    metrics: the final {"val/accuracy", "test/accuracy", ...} ({} when preempted).
    preempted: whether a SIGTERM stopped the run early (after saving a checkpoint at `step`).
  """
  model: Any
  params: Any
  step: int
  metrics: dict[str, float]
  preempted: bool = False


def train(config: ml_collections.ConfigDict, workdir: str, *, allow_config_change: bool = False,
          resume_from_previous_good: bool = False, tensorboard: bool | None = None) -> TrainResult:
  """Trains (or resumes) the run of `config` in `workdir`; see the module docstring for the outputs.

  Args:
    allow_config_change: resume even if the config differs from the one that wrote the checkpoint in a
      field that changes what is trained (workdir.RUNTIME_FIELDS may always differ); the old config stays
      in workdir/configs/. config.allow_config_change, where a config has it, counts too.
    resume_from_previous_good: skip damaged checkpoints (moved to checkpoints.damaged/) and resume from
      the newest one that verifies, instead of refusing; config.resume_from_previous_good counts too.
    tensorboard: write TensorBoard summaries into workdir/tensorboard/ (needs tensorboardX); None reads
      config.tensorboard, off where a config has none.

  Raises:
    ValueError naming the config field for sizes and periods no run can use (config_utils.check_sizes),
    workdir.WorkdirLockedError when another trainer writes into `workdir`, workdir.ConfigChangedError,
    checkpoint.CheckpointError for a checkpoint that is foreign, of another model or damaged,
    ImportError naming `pip install 'tokax[tensorboard]'` for config.tensorboard=True without tensorboardX.
  """
  config_utils.check_sizes(config)
  tensorboard = metric_logging.use_tensorboard(config.get("tensorboard") if tensorboard is None else tensorboard)
  allow_config_change = allow_config_change or bool(config.get("allow_config_change", False))
  fallback = resume_from_previous_good or bool(config.get("resume_from_previous_good", False))
  task = tasks.get(config.get("task", "classifier"))
  os.makedirs(workdir, exist_ok=True)
  with workdir_files.WorkdirLock(workdir):
    return _train(task, config, workdir, allow_config_change=allow_config_change, fallback=fallback,
                  tensorboard=tensorboard)


def _train(task: Task, config: ml_collections.ConfigDict, workdir: str, *, allow_config_change: bool,
           fallback: bool, tensorboard: bool) -> TrainResult:
  mesh = mesh_from_config(config)
  check_batch_size(config.batch_size, mesh)
  plan = task.build(config, mesh)
  resolved = workdir_files.resolved_config(config, plan.resolved)
  saved_steps = checkpoint.check_directory(os.path.join(workdir, "checkpoints"), allow_damaged=fallback)
  if saved_steps:
    workdir_files.check_resume_config(workdir, resolved, saved_steps[-1], allow_change=allow_config_change)
  state_shapes = jax.eval_shape(plan.init_fn, plan.init_rng)
  s = setup(config, workdir, mesh, state_shapes, plan.data, allow_damaged=fallback)
  frozen = frozen_shardings = None
  if plan.frozen is not None:
    frozen_shardings = jax.tree.map(lambda _: sharding.replicated(mesh), plan.frozen)
  final: dict[str, float] = {}
  with jax.set_mesh(mesh):
    try:
      state = restore_or_init(s, plan.init_fn, plan.init_rng, state_shapes, fallback=fallback)
      workdir_files.save_config(workdir, resolved, int(state.step))
      if int(state.step) == 0 and plan.start is not None:
        state = jax.device_put(plan.start(state), s.state_shardings)
      if plan.frozen is not None:
        frozen = jax.device_put(plan.frozen, frozen_shardings)
      logging.info("training %s: %s from step %d to %d (batch %d, mesh %s, %d processes)", task.name,
                   plan.description, int(state.step), plan.durations.total, config.batch_size, dict(mesh.shape),
                   jax.process_count())
      train_step = jit_train_step(plan.step_fn, mesh, s.state_shardings, frozen=frozen,
                                  frozen_shardings=frozen_shardings)
      start_step = int(state.step)
      tensorboard_dir = os.path.join(workdir, metric_logging.TENSORBOARD_DIR) if tensorboard else None
      with metric_logging.MetricWriter(os.path.join(workdir, "metrics.jsonl"), tensorboard_dir=tensorboard_dir,
                                       purge_step=start_step + 1 if start_step else None) as writer:
        result = run_steps(train_step, state, s, plan.durations, writer, batch_keys=plan.batch_keys,
                           progress_bar=config.progress_bar, evaluate=plan.evaluate,
                           before_final_save=plan.before_final_save)
        state = result.state
        if not result.preempted:
          final = plan.finalize(state, result.last_metrics)
          if final:
            writer.write(result.step, final)
          final = metric_logging.drop_images(final)
    finally:
      s.saver.close()
  if not result.preempted:
    logging.info("final metrics at step %d: %s", result.step, final)
  return TrainResult(model=plan.model, params=plan.result_params(state), step=result.step, metrics=final,
                     preempted=result.preempted)


# --- placement ------------------------------------------------------------------------------------

def mesh_from_config(config: ml_collections.ConfigDict) -> jax.sharding.Mesh:
  """The device mesh of config.mesh ({"data": -1, "model": 1} when unset) over all devices."""
  return sharding.make_mesh(config.get("mesh") or {"data": -1, "model": 1})


def rules_from_config(config: ml_collections.ConfigDict) -> tuple[sharding.Rule, ...]:
  """config.sharding.rules (tried first) then the rules of config.sharding.preset ("replicated" when unset)."""
  spec = config.get("sharding") or {}
  return sharding.resolve_rules(spec.get("preset", "replicated"), tuple(spec.get("rules", ())))


def check_batch_size(batch_size: int, mesh: jax.sharding.Mesh) -> None:
  """Refuses a global batch the mesh's data axis (or the processes) cannot split evenly, naming the device count."""
  data, processes = mesh.shape[sharding.DATA_AXIS], jax.process_count()
  if batch_size % data or batch_size % processes:
    multiple = math.lcm(data, processes)
    raise ValueError(f"config.batch_size={batch_size} must be a multiple of the mesh's data axis ({data}, over "
                     f"{mesh.devices.size} devices: mesh {dict(mesh.shape)}) and of the process count ({processes}); "
                     f"set --config.batch_size to a multiple of {multiple} (e.g. "
                     f"{max(multiple, batch_size // multiple * multiple)}) or change config.mesh")


def jit_train_step(step_fn: Callable[..., Any], mesh: jax.sharding.Mesh, state_shardings: Any, *,
                   frozen: Any = None, frozen_shardings: Any = None) -> StepFn:
  """step_fn(state, batch) -> (state, metrics) jitted over `mesh`: state on `state_shardings` and donated,
  the batch split over "data", the metrics replicated. Call it under jax.set_mesh(mesh).

  With `frozen` (a distillation teacher's parameters, on `frozen_shardings`), step_fn is
  (state, batch, frozen) -> (state, metrics): the frozen tree is an argument of the jitted step (not
  a constant baked into it) that is neither donated nor returned; the result still takes (state, batch).
  """
  if frozen is None:
    return jax.jit(step_fn, in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
                   out_shardings=(state_shardings, sharding.replicated(mesh)), donate_argnums=(0,))
  jitted = jax.jit(step_fn, in_shardings=(state_shardings, sharding.batch_sharding(mesh), frozen_shardings),
                   out_shardings=(state_shardings, sharding.replicated(mesh)), donate_argnums=(0,))
  return lambda state, batch: jitted(state, batch, frozen)


# --- the train data -------------------------------------------------------------------------------

class DataStream:
  """The train batches of a run: a tokax.data.pipeline.DataIterator with a checkpointable position.

  The iterator yields this process's contiguous slice of each global batch; position() is its
  get_state() ({"epoch", "position"}) plus what a restore must match, so a checkpoint's data item
  resumes the stream exactly (batch k is a pure function of (seed, k)).

  Args:
    iterator: the train DataIterator (shuffled, drop_remainder, endless).
    dataset: the data.name it reads, recorded in the position.
  """

  def __init__(self, iterator: pipeline.DataIterator, dataset: str):
    self.iterator, self.dataset = iterator, dataset
    self.batch_size, self.seed = iterator.batch_size, iterator.seed
    self.batches_per_epoch = iterator.steps_per_epoch

  def __iter__(self) -> "DataStream":
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    return next(self.iterator)

  def position(self) -> dict[str, Any]:
    """get_state() and the stream's identity, as JSON-able data."""
    skipped = {"bad_examples": self.iterator.bad_examples} if self.iterator.skip_bad_images else {}
    return {**self.iterator.get_state(), "seed": self.seed, "batch_size": self.batch_size,
            "num_examples": len(self.iterator.source), "dataset": self.dataset, **skipped}

  def restore(self, position: dict[str, Any]) -> None:
    """Continues from a position() of a stream over the same data; a different stream is an error.

    Positions of the former offline batch stream ({"epoch", "batch"}, the same batches) are read too.
    """
    for key in ("seed", "batch_size", "num_examples", "dataset"):
      if position.get(key) != self.position()[key]:
        raise ValueError(f"data position: the checkpoint's stream has {key}={position.get(key)!r} but this run's has "
                         f"{self.position()[key]!r}; resume with the config that wrote the checkpoint")
    batch = position.get("position", position.get("batch"))
    if batch is None:
      raise ValueError(f"data position: {position!r} has no batch position; resume with the config that wrote it")
    self.iterator.set_state({"epoch": position["epoch"], "position": batch})
    self.iterator.bad_examples = int(position.get("bad_examples", 0))


def train_stream(config: ml_collections.ConfigDict, data: TrainData, rows: slice) -> DataStream:
  """The train stream of `data` through pipeline.make_iterator: this process's contiguous slice `rows`
  of each global batch of config.batch_size, shuffled by config.data.seed."""
  d, batch_size = config.data, config.batch_size
  local = rows.stop - rows.start
  index, count = rows.start // local, batch_size // local
  if rows.start % local or rows.step not in (None, 1):
    raise ValueError(f"the input pipeline loads contiguous equal slices of each batch; the mesh gives this "
                     f"process rows {rows}; use a data axis that spans processes evenly")
  if not 0 < batch_size <= len(data.source):
    raise ValueError(f"batch_size: expected 1..{len(data.source)} (the train set size); got {batch_size}")
  iterator = pipeline.make_iterator(
      data.source, batch_size=batch_size, seed=d.seed, preprocess=data.preprocess, batch_preprocess=data.batch_ops,
      process_index=index, process_count=count, num_threads=d.get("num_threads") or 8,
      num_workers=d.get("num_workers") or 0, repeated_augmentation=data.repeated_augmentation)
  return DataStream(iterator, str(d.name))


@dataclasses.dataclass
class Setup:
  """A run's placement: mesh, state shardings, this process's train stream, the checkpoint manager and
  its saver (which records the checksums)."""
  mesh: jax.sharding.Mesh
  state_shardings: Any
  stream: DataStream
  saver: checkpoint.Saver

  @property
  def manager(self) -> ocp.CheckpointManager:
    return self.saver.manager


def setup(config: ml_collections.ConfigDict, workdir: str, mesh: jax.sharding.Mesh, state_shapes: Any,
          data: TrainData, *, allow_damaged: bool = False) -> Setup:
  """Shardings of `state_shapes` (jax.eval_shape of the init) by config.sharding's rules, the train stream
  of this process's rows, and the manager of workdir/checkpoints (keep config.keep_checkpoints)."""
  state_shardings = sharding.tree_shardings(state_shapes, rules_from_config(config), mesh)
  rows = sharding.process_batch_slice(sharding.batch_sharding(mesh), config.batch_size)
  stream = train_stream(config, data, rows)
  manager = checkpoint.make_manager(os.path.join(workdir, "checkpoints"), max_to_keep=config.keep_checkpoints,
                                    allow_damaged=allow_damaged)
  return Setup(mesh=mesh, state_shardings=state_shardings, stream=stream, saver=checkpoint.Saver(manager))


def restore_or_init(s: Setup, init_fn: Callable[[jax.Array], Any], init_rng: jax.Array, state_shapes: Any, *,
                    fallback: bool = False) -> Any:
  """The latest checkpoint's state (the stream moved to its saved position), else init_fn(init_rng) in place;
  with `fallback`, the newest checkpoint that verifies (checkpoint.restore_latest)."""
  restored = checkpoint.restore_latest(s.manager, checkpoint.abstract_state(state_shapes, s.state_shardings),
                                       fallback=fallback)
  if restored is None:
    return jax.jit(init_fn, out_shardings=s.state_shardings)(init_rng)
  state, position = restored
  s.stream.restore(position)
  return state


# --- the step loop -------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class LoopResult:
  """run_steps' outcome: the final state, the last step trained (or restored), whether a SIGTERM stopped it,
  and the last trained step's metrics on the host ({} when no step ran)."""
  state: Any
  step: int
  preempted: bool
  last_metrics: dict[str, float]


def run_steps(train_step: StepFn, state: Any, s: Setup, durations: Durations, writer: metric_logging.MetricWriter,
              *, batch_keys: Sequence[str], progress_bar: bool,
              evaluate: Callable[[Any], dict[str, float]] | None = None,
              before_final_save: Callable[[Any], Any] | None = None) -> LoopResult:
  """Trains from state.step to durations.total; see the module docstring.

  Args:
    train_step: the jitted step (jit_train_step).
    batch_keys: the stream's fields the step reads ("image", "label").
    evaluate: state -> metrics, written every durations.eval_every steps (not at the last step).
    before_final_save: state -> state applied once after the last step, before its checkpoint.
  """
  start_step, total = int(state.step), durations.total
  batch_size, data_sharding = s.stream.batch_size, sharding.batch_sharding(s.mesh)
  bar = tqdm.tqdm(total=total, initial=start_step, unit="step", dynamic_ncols=True,
                  disable=not (progress_bar and jax.process_index() == 0),
                  mininterval=1.0 if sys.stderr.isatty() else 30.0)
  iterator = s.stream.iterator
  log = TrainLog(writer, bar, batch_size=batch_size, log_every=durations.log_every, total_steps=total,
                 bad_examples=lambda: iterator.bad_examples if iterator.skip_bad_images else None)
  final_step, preempted = start_step, False
  try:
    with PreemptionWatch(s.manager) as preemption:
      for step in range(start_step + 1, total + 1):
        local = next(s.stream)
        batch = sharding.global_batch({key: local[key] for key in batch_keys}, data_sharding, batch_size)
        if step == start_step + 1:
          compile_start = time.perf_counter()
          state, metrics = train_step(state, batch)  # traces and compiles, then dispatches
          writer.write(step, {"train/compile_s": time.perf_counter() - compile_start})
          log.restart_clock()
        else:
          state, metrics = train_step(state, batch)
        log.push(step, metrics)
        final_step = step
        if step != total and preemption.reached(step):
          log.flush()
          s.saver.save(step, state, s.stream.position())
          logging.warning("pre-empted (SIGTERM) after step %d: checkpoint saved; rerun the command to resume", step)
          preempted = True
          break
        if evaluate is not None and durations.eval_every and step % durations.eval_every == 0 and step != total:
          eval_start = time.perf_counter()
          writer.write(step, evaluate(state))
          log.exclude(time.perf_counter() - eval_start)
        if durations.checkpoint_every and step % durations.checkpoint_every == 0 and step != total:
          s.saver.save(step, state, s.stream.position())
    log.flush()
    if not preempted and total > start_step:
      if before_final_save is not None:
        state = before_final_save(state)
      s.saver.save(total, state, s.stream.position())
  finally:
    bar.close()
  return LoopResult(state=state, step=final_step, preempted=preempted, last_metrics=log.last)


class PreemptionWatch:
  """Says when to stop for a pre-emption.

  One process: SIGTERM sets a flag (the previous handler comes back on exit), read after each
  step. Several processes: jax.distributed's preemption service catches the signal and orbax's
  reached_preemption(step) has every process stop at the same step.
  """

  def __init__(self, manager):
    self.manager, self.flag, self.previous = manager, False, None

  def __enter__(self) -> "PreemptionWatch":
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self.previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame) -> None:
    del signum, frame
    self.flag = True

  def reached(self, step: int) -> bool:
    if jax.process_count() > 1:
      return bool(self.manager.reached_preemption(step))
    return self.flag

  def __exit__(self, *exc) -> None:
    if self.previous is not None:
      signal.signal(signal.SIGTERM, self.previous)


class TrainLog:
  """Fetches each step's metrics one step late (the next step is already queued), checks the loss,
  and writes the means over every `log_every` steps with the images/s of that window."""

  def __init__(self, writer: metric_logging.MetricWriter, bar: tqdm.tqdm, *, batch_size: int, log_every: int,
               total_steps: int, bad_examples: Callable[[], int | None] = lambda: None):
    self.writer, self.bar, self.bad_examples = writer, bar, bad_examples
    self.batch_size, self.log_every, self.total_steps = batch_size, log_every, total_steps
    self.pending = None  # (step, metrics on the device)
    self.sums, self.count = {}, 0
    self.last: dict[str, float] = {}  # the metrics of the last step logged
    self.restart_clock()

  def restart_clock(self) -> None:
    self.clock, self.excluded = time.perf_counter(), 0.0

  def exclude(self, seconds: float) -> None:
    """Leaves `seconds` (an evaluation, say) out of the current window's images/s."""
    self.excluded += seconds

  def push(self, step: int, metrics: dict) -> None:
    """Takes the metrics of the step just dispatched and logs the previous step's."""
    if self.pending is not None:
      self._log(*self.pending)
    self.pending = (step, metrics)

  def flush(self) -> None:
    if self.pending is not None:
      self._log(*self.pending)
      self.pending = None

  def _log(self, step: int, metrics: dict) -> None:
    metrics = jax.device_get(metrics)
    self.last = {key: float(value) for key, value in metrics.items()}
    loss = float(metrics["loss"])
    if not math.isfinite(loss):
      raise FloatingPointError(f"non-finite training loss {loss} at step {step}")
    for key, value in metrics.items():
      self.sums[key] = self.sums.get(key, 0.0) + float(value)
    self.count += 1
    self.bar.update(step - self.bar.n)
    if step % self.log_every and step != self.total_steps:
      return
    seconds = max(time.perf_counter() - self.clock - self.excluded, 1e-9)
    means = {f"train/{key}": total / self.count for key, total in self.sums.items()}
    means["train/lr"] = float(metrics["lr"])  # the current value, not the window's mean
    images_per_s = self.count * self.batch_size / seconds
    bad = self.bad_examples()  # examples replaced because their image did not decode (data.skip_bad_images)
    extra = {} if bad is None else {"train/bad_examples": bad}
    self.writer.write(step, {**means, "train/images_per_s": images_per_s, "train/step_time_s": seconds / self.count,
                             **extra})
    self.bar.set_postfix(loss=f"{means['train/loss']:.3f}", img_s=f"{images_per_s:.0f}", refresh=False)
    self.sums, self.count = {}, 0
    self.restart_clock()
