"""The one trainer: a ViT classifier on an embedded dataset, from a config.

config.task selects the task: "classifier" (the default, below), "xar" (xar_trainer.py: a next-X
generator) or "tokenizer" (tokenizer_trainer.py: a visual tokenizer); all three share loop.py, so
they have the same workdir layout, sharding, resume and pre-emption behaviour.

train(config, workdir) builds everything from the config, resumes from the workdir's latest
checkpoint if there is one, and writes into the workdir:
  config.json    the resolved config (total_steps filled in)
  metrics.jsonl  one JSON line per log / eval step (train/*, val/*, test/*)
  checkpoints/   orbax checkpoints of the train state and the data position (keep-last-N)

The step is one jax.jit over the mesh of config.mesh, parameters placed by config.sharding's rules
(tokax.train.sharding), the batch split over "data". With several processes (jax.distributed
initialised by main.py), each loads its rows of every global batch; process 0 writes the files.
A SIGTERM stops the loop after the current step and saves a checkpoint there (result.preempted).

Reduction-aware objectives (tokax.train.objectives) come from the config: config.distill with
kind "hard" (DeiT: a distillation-token student and a frozen teacher restored from
distill.teacher_workdir or distill.teacher_checkpoint) or "frd" (SiT: slimming student, train-only
reverse modules, init from the teacher with distill.init_student), or config.consistency (MCTF:
a teacher schedule from consistency.teacher_r drawn per step). config.init_from = dict(config, workdir)
starts a fresh run from another run's parameters (matching paths and shapes).

Data: config.data.name is an embedded dataset ("digits", "cluttered_digits": the offline
BatchStream, unchanged) or "tfds:<name>" / "folder:<root>", read through tokax.data.pipeline with
config.data.preprocess (train) / preprocess_eval (ending in float32 images in [0, 1], or uint8
0..255 converted on the device, at model.image_size), num_threads / num_workers (worker threads;
worker processes when > 0), optional batch_ops ("mixup_cutmix": (B, K) soft labels, soft cross-entropy with
config.label_smoothing applied as timm does), <split>_split naming each split's source (default the
split itself), num_classes where the source does not say. Setting preprocess or batch_ops on an
offline name also routes it through the pipeline. The pipeline's {"epoch", "position"} is the
checkpoint's data position.
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import os
from typing import Any

import jax
import ml_collections
from absl import logging

from tokax import reduction
from tokax.data import offline, pipeline
from tokax.train import evaluate, loop, objectives, optim, sharding
from tokax.train import logging as metric_logging
from tokax.train.batch_stream import PipelineStream
from tokax.train.config_utils import steps
from tokax.train.model import build_model
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
  m = config.model
  extra = {key: m[key] for key in ("name", "tokens_type", "mlp_ratio", "distilled") if key in m}
  return build_model(
      variant=m.variant, image_size=m.image_size, num_classes=num_classes, pool=m.pool,
      drop_path=m.drop_path, dtype=m.dtype, width=m.width, depth=m.depth, num_heads=m.num_heads,
      mlp_dim=m.mlp_dim, reduction=reduction.build(config.reduction, calibration=False), **extra)


def uses_pipeline(config: ml_collections.ConfigDict) -> bool:
  """Whether config.data goes through tokax.data.pipeline: a "tfds:" / "folder:" name, or preprocessing
  or batch ops set. The offline names without them keep the offline BatchStream (same numbers as before)."""
  d = config.data
  return (str(d.name).startswith(("tfds:", "folder:")) or bool(d.get("preprocess"))
          or bool(d.get("preprocess_eval")) or bool(d.get("batch_ops")))


def _pipeline_source(config: ml_collections.ConfigDict, split: str):
  """The pipeline Source of one split: config.data.<split>_split names it (default: the split itself)."""
  d = config.data
  name = d.get(f"{split}_split") or split
  offline_kwargs = {}
  if not str(d.name).startswith(("tfds:", "folder:")):
    offline_kwargs = dict(image_size=config.model.image_size, num_examples=d.get(f"num_{split}"), seed=d.seed)
  return pipeline.get_source(d.name, name, data_dir=d.get("data_dir"), **offline_kwargs)


def batch_ops_spec(spec: str, num_classes: int, label_smoothing: float) -> str:
  """config.data.batch_ops with num_classes (and label_smoothing=0) filled into the mixing ops.

  The loss smooths the mixed targets with config.label_smoothing (timm's order, same numbers), so a
  mixing op may set its own label_smoothing only while config.label_smoothing is 0.
  """
  ops = []
  for op in [part.strip() for part in str(spec).split("|") if part.strip()]:
    try:
      node = ast.parse(op, mode="eval").body
    except SyntaxError as e:
      raise ValueError(f"config.data.batch_ops: cannot parse {op!r}") from e
    name = node.id if isinstance(node, ast.Name) else getattr(getattr(node, "func", None), "id", None)
    if name in ("mixup", "cutmix", "mixup_cutmix"):
      call = node if isinstance(node, ast.Call) else ast.Call(func=node, args=[], keywords=[])
      given = {k.arg for k in call.keywords}
      if "label_smoothing" in given and label_smoothing:
        raise ValueError(f"config.data.batch_ops: {op!r} sets label_smoothing and so does config.label_smoothing="
                         f"{label_smoothing}; set only config.label_smoothing (the loss applies it as timm does)")
      extra = {"num_classes": num_classes, "label_smoothing": 0.0}
      call.keywords += [ast.keyword(arg=k, value=ast.Constant(v)) for k, v in extra.items() if k not in given]
      op = ast.unparse(call)
    ops.append(op)
  return "|".join(ops)


def _pipeline_stream(config: ml_collections.ConfigDict, source, num_classes: int, rows: slice) -> PipelineStream:
  """The train stream through pipeline.make_iterator: this process's contiguous slice `rows`."""
  d, batch_size = config.data, config.batch_size
  local = rows.stop - rows.start
  index, count = rows.start // local, batch_size // local
  if rows.start % local or rows.step not in (None, 1):
    raise ValueError(f"the input pipeline loads contiguous equal slices of each batch; the mesh gives this "
                     f"process rows {rows}; use a data axis that spans processes evenly")
  iterator = pipeline.make_iterator(
      source, batch_size=batch_size, seed=d.seed, preprocess=d.get("preprocess") or "",
      batch_preprocess=batch_ops_spec(d.get("batch_ops") or "", num_classes, config.label_smoothing),
      process_index=index, process_count=count, num_threads=d.get("num_threads") or 8,
      num_workers=d.get("num_workers") or 0)
  return PipelineStream(iterator, str(d.name))


def _pipeline_eval_batches(config: ml_collections.ConfigDict, source):
  """One ordered, padded and masked pass over an eval Source, whole batches on every process."""
  d = config.data
  return pipeline.make_iterator(source, batch_size=config.eval_batch_size, preprocess=d.get("preprocess_eval") or "",
                                shuffle=False, drop_remainder=False, num_epochs=1,
                                num_threads=d.get("num_threads") or 8)


def load_split(config: ml_collections.ConfigDict, split: str) -> offline.ArrayDataset:
  """One split ("train", "val" or "test") of config.data at the model's resolution."""
  d = config.data
  return offline.load(d.name, split, image_size=config.model.image_size, num_examples=d[f"num_{split}"], seed=d.seed)


def load_datasets(config: ml_collections.ConfigDict) -> dict[str, offline.ArrayDataset]:
  """The train, val and test splits of config.data."""
  return {split: load_split(config, split) for split in ("train", "val", "test")}


# The shared pieces, under the names the benches and tests use.
mesh_from_config, rules_from_config, jit_train_step = loop.mesh_from_config, loop.rules_from_config, loop.jit_train_step
_TrainLog, _PreemptionWatch, _save_config = loop.TrainLog, loop.PreemptionWatch, loop.save_config


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
  use_pipeline = uses_pipeline(config)
  if use_pipeline:
    sources = {split: _pipeline_source(config, split) for split in ("train", "val", "test")}
    num_classes = getattr(sources["train"], "num_classes", None) or config.data.get("num_classes")
    if not num_classes:
      raise ValueError(f"config.data.num_classes: {config.data.name!r} does not say how many classes it has; set it")
    size = config.model.image_size
    image_shape, num_train = (size, size, 3), len(sources["train"])
  else:
    datasets = load_datasets(config)
    train_ds = datasets["train"]
    num_classes, image_shape, num_train = train_ds.num_classes, tuple(train_ds.images.shape[1:]), len(train_ds)
  batch_size = config.batch_size
  durations = loop.durations_from_config(config, num_train, batch_size)
  warmup_steps = steps("warmup", config, num_train, batch_size, default=0)
  loop.save_config(config, workdir, total_steps=durations.total)

  model = model_from_config(config, num_classes)
  schedule = optim.lr_schedule(peak_lr=config.lr, warmup_steps=warmup_steps, total_steps=durations.total)
  tx = optim.adamw(schedule, weight_decay=config.weight_decay, grad_clip_norm=config.grad_clip_norm)

  objective, teacher = objectives.from_config(config, model, num_classes, image_shape)
  init_rng, step_rng = jax.random.split(jax.random.key(config.seed))
  init_fn = functools.partial(init_state, model, tx, image_shape=image_shape, step_rng=step_rng,
                              init_variables=None if objective is None else objective.init_variables)
  state_shapes = jax.eval_shape(init_fn, init_rng)
  if use_pipeline:
    run = loop.setup(config, workdir, state_shapes=state_shapes,
                     make_stream=lambda rows: _pipeline_stream(config, sources["train"], num_classes, rows))
  else:
    run = loop.setup(config, workdir, state_shapes=state_shapes, train_ds=train_ds)
  replicated = sharding.replicated(run.mesh)
  final: dict[str, float] = {}
  with jax.set_mesh(run.mesh):
    try:
      state = loop.restore_or_init(run, init_fn, init_rng, state_shapes)
      if int(state.step) == 0:
        start = objectives.initial_params(config, teacher, num_classes, image_shape)
        if start is not None:
          params, taken = objectives.merge_params(state.params, start)
          logging.info("initialised %d parameter arrays from the init_from / teacher run", taken)
          state = state.replace(params=jax.device_put(params, run.state_shardings.params))
      frozen = frozen_shardings = None
      if teacher is not None:
        frozen_shardings = jax.tree.map(lambda _: replicated, teacher.variables)
        frozen = jax.device_put(teacher.variables, frozen_shardings)
      logging.info("training %s (%s) from step %d to %d (batch %d, %d train examples, mesh %s, %d processes)",
                   model.variant, model.arch, int(state.step), durations.total, batch_size, num_train,
                   dict(run.mesh.shape), jax.process_count())
      hooks = {} if objective is None else objective.step_kwargs()
      train_step = loop.jit_train_step(
          make_train_step(model=model, tx=tx, schedule=schedule, label_smoothing=config.label_smoothing,
                          max_shift=config.augment.max_shift, **hooks),
          run.mesh, run.state_shardings, frozen=frozen, frozen_shardings=frozen_shardings)
      eval_step = evaluate.make_eval_step(model, out_sharding=replicated)
      def run_eval(split, params):
        if use_pipeline:
          values = evaluate.evaluate_batches(eval_step, params, _pipeline_eval_batches(config, sources[split]),
                                             sharding=replicated)
        else:
          values = evaluate.evaluate(eval_step, params, datasets[split], config.eval_batch_size, sharding=replicated)
        return {f"{split}/{k}": v for k, v in values.items()}
      with metric_logging.MetricWriter(os.path.join(workdir, "metrics.jsonl")) as writer:
        result = loop.run_steps(train_step, state, run, durations, writer, batch_keys=("image", "label"),
                                progress_bar=config.progress_bar,
                                evaluate=lambda state: run_eval("val", state.params))
        state = result.state
        if not result.preempted:
          final = {**run_eval("val", state.params), **run_eval("test", state.params)}
          writer.write(result.step, final)
    finally:
      run.manager.wait_until_finished()
      run.manager.close()
  if not result.preempted:
    logging.info("final metrics at step %d: %s", result.step, final)
  return TrainResult(model=model, params=state.params, step=result.step, metrics=final, preempted=result.preempted)
