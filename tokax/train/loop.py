"""What the three trainers (classifier, xar, tokenizer) share: mesh and shardings from the config,
restore-or-init with the batch stream's position, and the step loop.

The loop jits nothing itself: each trainer jits its step with jit_train_step (state donated, on the
shardings of config.sharding's rules; the batch split over "data") and hands it to run_steps,
which feeds it this process's rows of every global batch, logs one step late, saves checkpoints
(periodic, final, and at a SIGTERM) with the data position, and evaluates through a callback.
Call restore_or_init and run_steps under jax.set_mesh(mesh).
"""
from __future__ import annotations

import dataclasses
import json
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
import orbax.checkpoint as ocp
import tqdm
from absl import logging

from tokax.data import offline
from tokax.train import checkpoint, sharding
from tokax.train import logging as metric_logging
from tokax.train.batch_stream import BatchStream, PipelineStream
from tokax.train.config_utils import steps

StepFn = Callable[[Any, dict[str, jax.Array]], tuple[Any, dict[str, jax.Array]]]


@dataclasses.dataclass(frozen=True)
class Durations:
  """Loop lengths in steps: total, and the periods of logging, evaluation and checkpoints (0: never)."""
  total: int
  log_every: int
  eval_every: int
  checkpoint_every: int


def durations_from_config(config: ml_collections.ConfigDict, num_train: int, batch_size: int,
                          total: int | None = None) -> Durations:
  """config.{total,log_every,eval_every,checkpoint_every}_{steps,epochs} in steps; `total` overrides the first."""
  duration = lambda name, default=None: steps(name, config, num_train, batch_size, default=default)
  return Durations(total=duration("total") if total is None else total, log_every=max(1, duration("log_every", 50)),
                   eval_every=duration("eval_every", 0), checkpoint_every=duration("checkpoint_every", 0))


def mesh_from_config(config: ml_collections.ConfigDict) -> jax.sharding.Mesh:
  """The device mesh of config.mesh ({"data": -1, "model": 1} when unset) over all devices."""
  return sharding.make_mesh(config.get("mesh") or {"data": -1, "model": 1})


def rules_from_config(config: ml_collections.ConfigDict) -> tuple[sharding.Rule, ...]:
  """config.sharding.rules (tried first) then the rules of config.sharding.preset ("replicated" when unset)."""
  spec = config.get("sharding") or {}
  return sharding.resolve_rules(spec.get("preset", "replicated"), tuple(spec.get("rules", ())))


def check_batch_size(batch_size: int, mesh: jax.sharding.Mesh) -> None:
  data = mesh.shape[sharding.DATA_AXIS]
  if batch_size % data or batch_size % jax.process_count():
    raise ValueError(f"config.batch_size={batch_size} must be a multiple of the mesh's data axis ({data}) and of "
                     f"the process count ({jax.process_count()}); change the batch size or config.mesh")


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


def save_config(config: ml_collections.ConfigDict, workdir: str, **resolved: Any) -> None:
  """Writes the config, overrides applied and derived values filled in, as workdir/config.json (process 0)."""
  if jax.process_index() != 0:
    return
  values = config.to_dict()
  values.update(resolved)
  with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
    json.dump(values, f, indent=2, sort_keys=True, default=str)


@dataclasses.dataclass
class Setup:
  """A trainer's placement: mesh, state shardings, this process's batch stream, the checkpoint manager."""
  mesh: jax.sharding.Mesh
  state_shardings: Any
  stream: BatchStream | PipelineStream
  manager: ocp.CheckpointManager


def setup(config: ml_collections.ConfigDict, workdir: str, *, state_shapes: Any,
          train_ds: offline.ArrayDataset | None = None,
          make_stream: Callable[[slice], PipelineStream] | None = None) -> Setup:
  """The mesh of config.mesh, shardings of `state_shapes` (jax.eval_shape of the init) by config.sharding's
  rules, a BatchStream over `train_ds` (config.batch_size, config.data.seed) of this process's rows, and
  the manager of workdir/checkpoints (keep config.keep_checkpoints).

  make_stream(rows) replaces the BatchStream (an input-pipeline stream that must load `rows`, this
  process's rows of each global batch); give exactly one of train_ds and make_stream.
  """
  if (train_ds is None) == (make_stream is None):
    raise ValueError("loop.setup: give exactly one of train_ds (offline data) and make_stream (input pipeline)")
  mesh = mesh_from_config(config)
  batch_size = config.batch_size
  check_batch_size(batch_size, mesh)
  state_shardings = sharding.tree_shardings(state_shapes, rules_from_config(config), mesh)
  rows = sharding.process_batch_slice(sharding.batch_sharding(mesh), batch_size)
  if make_stream is not None:
    stream = make_stream(rows)
  else:
    stream = BatchStream(train_ds, batch_size, seed=config.data.seed, rows=rows)
  manager = checkpoint.make_manager(os.path.join(workdir, "checkpoints"), max_to_keep=config.keep_checkpoints)
  return Setup(mesh=mesh, state_shardings=state_shardings, stream=stream, manager=manager)


def restore_or_init(s: Setup, init_fn: Callable[[jax.Array], Any], init_rng: jax.Array, state_shapes: Any) -> Any:
  """The latest checkpoint's state (the stream moved to its saved position), else init_fn(init_rng) in place."""
  restored = checkpoint.restore_latest(s.manager, checkpoint.abstract_state(state_shapes, s.state_shardings))
  if restored is None:
    return jax.jit(init_fn, out_shardings=s.state_shardings)(init_rng)
  state, position = restored
  s.stream.restore(position)
  return state


def restore_for_inference(workdir: str, state_shapes: Any, keep_checkpoints: int) -> tuple[Any, int] | None:
  """(state, step) of the latest checkpoint of `workdir`, on this process's first device; None if none."""
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = checkpoint.abstract_state(state_shapes, jax.tree.map(lambda _: device, state_shapes))
  manager = checkpoint.make_manager(os.path.join(workdir, "checkpoints"), max_to_keep=keep_checkpoints)
  try:
    restored = checkpoint.restore_latest(manager, target)
  finally:
    manager.close()
  if restored is None:
    return None
  return restored[0], int(restored[0].step)


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
  log = TrainLog(writer, bar, batch_size=batch_size, log_every=durations.log_every, total_steps=total)
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
          checkpoint.save(s.manager, step, state, s.stream.position())
          logging.warning("pre-empted (SIGTERM) after step %d: checkpoint saved; rerun the command to resume", step)
          preempted = True
          break
        if evaluate is not None and durations.eval_every and step % durations.eval_every == 0 and step != total:
          eval_start = time.perf_counter()
          writer.write(step, evaluate(state))
          log.exclude(time.perf_counter() - eval_start)
        if durations.checkpoint_every and step % durations.checkpoint_every == 0 and step != total:
          checkpoint.save(s.manager, step, state, s.stream.position())
    log.flush()
    if not preempted and total > start_step:
      if before_final_save is not None:
        state = before_final_save(state)
      checkpoint.save(s.manager, total, state, s.stream.position())
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
               total_steps: int):
    self.writer, self.bar = writer, bar
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
    self.writer.write(step, {**means, "train/images_per_s": images_per_s, "train/step_time_s": seconds / self.count})
    self.bar.set_postfix(loss=f"{means['train/loss']:.3f}", img_s=f"{images_per_s:.0f}", refresh=False)
    self.sums, self.count = {}, 0
    self.restart_clock()
