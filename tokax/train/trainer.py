"""The one trainer: a ViT classifier on an embedded dataset, from a config.

config.task selects the task: "classifier" (the default, below) or "tokenizer"
(tokenizer_trainer.py: a visual tokenizer, same workdir layout and resume behaviour).

train(config, workdir) builds everything from the config, resumes from the workdir's latest
checkpoint if there is one, and writes into the workdir:
  config.json    the resolved config (total_steps filled in)
  metrics.jsonl  one JSON line per log / eval step (train/*, val/*, test/*)
  checkpoints/   orbax checkpoints of the train state and the data position (keep-last-N)

The step is one jax.jit over the mesh of config.mesh, parameters placed by config.sharding's rules
(tokax.train.sharding), the batch split over "data". With several processes (jax.distributed
initialised by main.py), each loads its rows of every global batch; process 0 writes the files.
A SIGTERM stops the loop after the current step and saves a checkpoint there (result.preempted).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import signal
import sys
import threading
import time
from typing import Any, Callable

import jax
import ml_collections
import tqdm
from absl import logging

from tokax.data import offline
from tokax.train import checkpoint, evaluate, optim, sharding
from tokax.train import logging as metric_logging
from tokax.train.batch_stream import BatchStream
from tokax.train.config_utils import steps
from tokax.train.model import build_model, build_reduction
from tokax.train.step import init_state, make_train_step


@dataclasses.dataclass(frozen=True)
class TrainResult:
  """What train() returns.

  Attributes:
    model: the trained ViT (dense, or with the config's reduction).
    params: its variables, on the device.
    step: the final step.
    metrics: the final {"val/accuracy", "test/accuracy", ...} ({} when preempted).
    preempted: whether a SIGTERM stopped the run early (after saving a checkpoint at `step`).
  """
  model: Any
  params: Any
  step: int
  metrics: dict[str, float]
  preempted: bool = False


def model_from_config(config: ml_collections.ConfigDict, num_classes: int):
  """The model described by config.model (a ViT, or a T2T-ViT with model.name="t2t_vit") and config.reduction."""
  m, red = config.model, config.reduction
  extra = {key: m[key] for key in ("name", "tokens_type", "mlp_ratio") if key in m}  # T2T-ViT configs
  return build_model(
      variant=m.variant, image_size=m.image_size, num_classes=num_classes, pool=m.pool,
      drop_path=m.drop_path, dtype=m.dtype, width=m.width, depth=m.depth, num_heads=m.num_heads,
      mlp_dim=m.mlp_dim, reduction=build_reduction(red.name, r=red.r, prop_attn=red.prop_attn), **extra)


def load_split(config: ml_collections.ConfigDict, split: str) -> offline.ArrayDataset:
  """One split ("train", "val" or "test") of config.data at the model's resolution."""
  d = config.data
  return offline.load(d.name, split, image_size=config.model.image_size, num_examples=d[f"num_{split}"], seed=d.seed)


def load_datasets(config: ml_collections.ConfigDict) -> dict[str, offline.ArrayDataset]:
  """The train, val and test splits of config.data."""
  return {split: load_split(config, split) for split in ("train", "val", "test")}


def mesh_from_config(config: ml_collections.ConfigDict) -> jax.sharding.Mesh:
  """The device mesh of config.mesh ({"data": -1, "model": 1} when unset) over all devices."""
  return sharding.make_mesh(config.get("mesh") or {"data": -1, "model": 1})


def rules_from_config(config: ml_collections.ConfigDict) -> tuple[sharding.Rule, ...]:
  """config.sharding.rules (tried first) then the rules of config.sharding.preset ("replicated" when unset)."""
  spec = config.get("sharding") or {}
  return sharding.resolve_rules(spec.get("preset", "replicated"), tuple(spec.get("rules", ())))


def jit_train_step(step_fn: Callable, mesh: jax.sharding.Mesh, state_shardings: Any) -> Callable:
  """step_fn(state, batch) -> (state, metrics) jitted over `mesh`: state on `state_shardings` and donated,
  the batch split over "data", the metrics replicated. Call it under jax.set_mesh(mesh)."""
  return jax.jit(step_fn, in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
                 out_shardings=(state_shardings, sharding.replicated(mesh)), donate_argnums=(0,))


def _check_batch_size(batch_size: int, mesh: jax.sharding.Mesh) -> None:
  data = mesh.shape[sharding.DATA_AXIS]
  if batch_size % data or batch_size % jax.process_count():
    raise ValueError(f"config.batch_size={batch_size} must be a multiple of the mesh's data axis ({data}) and of "
                     f"the process count ({jax.process_count()}); change the batch size or config.mesh")


def train(config: ml_collections.ConfigDict, workdir: str) -> TrainResult:
  """Trains (or resumes) the model of `config` in `workdir`; see the module docstring for the outputs.

  config.task selects the trainer: "classifier" (default, this module), "xar" (generation,
  tokax.train.xar_trainer) or "tokenizer" (tokax.train.tokenizer_trainer).
  """
  task = config.get("task", "classifier")
  if task == "xar":
    from tokax.train import xar_trainer
    return xar_trainer.train_xar(config, workdir)
  if task == "tokenizer":
    from tokax.train import tokenizer_trainer  # imports this module
    return tokenizer_trainer.train(config, workdir)
  if task != "classifier":
    raise ValueError(f"config.task must be 'classifier', 'xar' or 'tokenizer'; got {task!r}")
  os.makedirs(workdir, exist_ok=True)
  datasets = load_datasets(config)
  train_ds = datasets["train"]
  num_train, batch_size = len(train_ds), config.batch_size
  total_steps = steps("total", config, num_train, batch_size)
  warmup_steps = steps("warmup", config, num_train, batch_size, default=0)
  log_every = max(1, steps("log_every", config, num_train, batch_size, default=50))
  eval_every = steps("eval_every", config, num_train, batch_size, default=0)
  checkpoint_every = steps("checkpoint_every", config, num_train, batch_size, default=0)
  _save_config(config, workdir, total_steps=total_steps)

  model = model_from_config(config, train_ds.num_classes)
  schedule = optim.lr_schedule(peak_lr=config.lr, warmup_steps=warmup_steps, total_steps=total_steps)
  tx = optim.adamw(schedule, weight_decay=config.weight_decay, grad_clip_norm=config.grad_clip_norm)

  mesh = mesh_from_config(config)
  _check_batch_size(batch_size, mesh)
  rules = rules_from_config(config)
  data_sharding, replicated = sharding.batch_sharding(mesh), sharding.replicated(mesh)
  init_rng, step_rng = jax.random.split(jax.random.key(config.seed))
  init_fn = functools.partial(init_state, model, tx, image_shape=train_ds.images.shape[1:], step_rng=step_rng)
  state_shapes = jax.eval_shape(init_fn, init_rng)
  state_shardings = sharding.tree_shardings(state_shapes, rules, mesh)
  stream = BatchStream(train_ds, batch_size, seed=config.data.seed,
                       rows=sharding.process_batch_slice(data_sharding, batch_size))
  manager = checkpoint.make_manager(os.path.join(workdir, "checkpoints"), max_to_keep=config.keep_checkpoints)
  with jax.set_mesh(mesh):
    restored = checkpoint.restore_latest(manager, checkpoint.abstract_state(state_shapes, state_shardings))
    if restored is None:
      state = jax.jit(init_fn, out_shardings=state_shardings)(init_rng)
    else:
      state, position = restored
      stream.restore(position)
    start_step = int(state.step)
    logging.info("training %s (%s) from step %d to %d (batch %d, %d train examples, mesh %s, %d processes)",
                 model.variant, model.arch, start_step, total_steps, batch_size, num_train, dict(mesh.shape),
                 jax.process_count())

    train_step = jit_train_step(
        make_train_step(model=model, tx=tx, schedule=schedule, label_smoothing=config.label_smoothing,
                        max_shift=config.augment.max_shift), mesh, state_shardings)
    eval_step = evaluate.make_eval_step(model, out_sharding=replicated)
    run_eval = lambda split, params: {f"{split}/{k}": v for k, v in evaluate.evaluate(
        eval_step, params, datasets[split], config.eval_batch_size, sharding=replicated).items()}

    writer = metric_logging.MetricWriter(os.path.join(workdir, "metrics.jsonl"))
    show_bar = config.progress_bar and jax.process_index() == 0
    bar = tqdm.tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True, disable=not show_bar,
                    mininterval=1.0 if sys.stderr.isatty() else 30.0)
    log = _TrainLog(writer, bar, batch_size=batch_size, log_every=log_every, total_steps=total_steps)
    final, final_step, preempted = {}, start_step, False
    try:
      with _PreemptionWatch(manager) as preemption:
        for step in range(start_step + 1, total_steps + 1):
          batch = sharding.global_batch(next(stream), data_sharding, batch_size)
          if step == start_step + 1:
            compile_start = time.perf_counter()
            state, metrics = train_step(state, batch)  # traces and compiles, then dispatches
            writer.write(step, {"train/compile_s": time.perf_counter() - compile_start})
            log.restart_clock()
          else:
            state, metrics = train_step(state, batch)
          log.push(step, metrics)
          final_step = step
          if step != total_steps and preemption.reached(step):
            log.flush()
            checkpoint.save(manager, step, state, stream.position())
            logging.warning("pre-empted (SIGTERM) after step %d: checkpoint saved; rerun the command to resume", step)
            preempted = True
            break
          if eval_every and step % eval_every == 0 and step != total_steps:
            eval_start = time.perf_counter()
            writer.write(step, run_eval("val", state.params))
            log.exclude(time.perf_counter() - eval_start)
          if checkpoint_every and step % checkpoint_every == 0 and step != total_steps:
            checkpoint.save(manager, step, state, stream.position())
      log.flush()
      bar.close()
      if not preempted:
        if total_steps > start_step:
          checkpoint.save(manager, total_steps, state, stream.position())
        final = {**run_eval("val", state.params), **run_eval("test", state.params)}
        writer.write(final_step, final)
    finally:
      bar.close()
      writer.close()
      manager.wait_until_finished()
      manager.close()
  if not preempted:
    logging.info("final metrics at step %d: %s", final_step, final)
  return TrainResult(model=model, params=state.params, step=final_step, metrics=final, preempted=preempted)


class _PreemptionWatch:
  """Says when to stop for a pre-emption.

  One process: SIGTERM sets a flag (the previous handler comes back on exit), read after each
  step. Several processes: jax.distributed's preemption service catches the signal and orbax's
  reached_preemption(step) has every process stop at the same step.
  """

  def __init__(self, manager):
    self.manager, self.flag, self.previous = manager, False, None

  def __enter__(self) -> "_PreemptionWatch":
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


class _TrainLog:
  """Fetches each step's metrics one step late (the next step is already queued), checks the loss,
  and writes the means over every `log_every` steps with the images/s of that window."""

  def __init__(self, writer: metric_logging.MetricWriter, bar: tqdm.tqdm, *, batch_size: int, log_every: int,
               total_steps: int):
    self.writer, self.bar = writer, bar
    self.batch_size, self.log_every, self.total_steps = batch_size, log_every, total_steps
    self.pending = None  # (step, metrics on the device)
    self.sums, self.count = {}, 0
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


def _save_config(config: ml_collections.ConfigDict, workdir: str, **resolved: Any) -> None:
  """Writes the config, overrides applied and derived durations filled in, as workdir/config.json."""
  if jax.process_index() != 0:
    return
  values = config.to_dict()
  values.update(resolved)
  with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
    json.dump(values, f, indent=2, sort_keys=True, default=str)
