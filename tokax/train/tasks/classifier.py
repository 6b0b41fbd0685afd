"""The classifier task (config.task = "classifier", the default): a ViT / T2T-ViT with its reduction.

Model: config.model is data, `MODELS[config.model.name](**config.model, num_classes, reduction)`
(tokax.train.model.build_model); num_classes comes from the data (the source's, else
config.data.num_classes) unless config.model.num_classes sets it, and config.json records the
resolved value, so a run restores from its own config.json (tokax.train.restore.load_run).

Data: config.data.name is an embedded dataset ("digits", "cluttered_digits"), "tfds:<name>" or
"folder:<root>", all through tokax.data.pipeline (the embedded ones keep their offline batch
order); config.data.preprocess (train) / preprocess_eval (ending in float32 images in [0, 1], or
uint8 0..255 converted on the device, at model.image_size), optional batch_ops ("mixup_cutmix":
(B, K) soft labels, soft cross-entropy with config.label_smoothing applied as timm does),
<split>_split naming each split's source (default the split itself), num_classes where the
source does not say. An image folder has one class list, its train split's class folders (or
config.data.classes): every split is labelled with it, and config.json records it as
config.data.classes, which restoring, load_split and `python -m tokax.evaluate` read.
config.data.skip_bad_images replaces the folder's undecodable images while loading (masks them out
of evaluation) and counts them: <split>/bad_examples in the eval metrics.

Objectives (tokax.train.objectives) from the config: config.distill with kind "hard" (DeiT: a
distillation-token student and a frozen teacher, the tokax run in distill.teacher_workdir or a timm
file distill.teacher_checkpoint for the model of distill.teacher_config) or "frd" (SiT: slimming
student, train-only reverse modules, init from the teacher with distill.init_student), or
config.consistency (MCTF). config.init_from = dict(workdir=...) starts a fresh run from another
run's parameters, dict(pretrained=NAME) from a model that ships with tokax (tokax.pretrained;
pretrained_dir=DIR for one saved elsewhere in that layout), matching paths and shapes;
dict(checkpoint=FILE_OR_TIMM_NAME) from a timm / DeiT file (.safetensors, .pth), a big_vision / AugReg .npz
or a timm name with a weights tag (the hub file), fitted as a fine-tune starts from one (checkpoint_params:
the classifier left out when its class count differs, the position embeddings resampled to the model's
grid). Evaluation:
val every eval_every steps, val and test at the end.

Optimizer (tokax.train.optim.optimizer; docs/optimizers.md has timm's equivalents): config.optimizer
"adamw" (the default), "sgd" (config.momentum, default 0.9; config.nesterov, default True as timm's
--opt sgd), "lamb" (timm's Lamb) or "lion"; config.b1 / b2 (default None: the optimizer's own, (0.9,
0.999), Lion (0.9, 0.99)); config.lr, warmup_steps / warmup_epochs and a cosine decay to config.min_lr
(default 0; timm's --min-lr); config.weight_decay on the kernels only (timm's no-decay list for a ViT);
config.grad_clip_norm.
config.layer_decay (default 1: off; BEiT / MAE fine-tuning use 0.65 / 0.75) multiplies each layer's lr
by layer_decay ** (depth + 1 - layer id), timm's ids: stem 0, block i i + 1, final norm with the last
block, heads depth + 1.

EMA: config.ema_decay (default 0: none; DeiT's model-ema 0.99996) keeps timm's ModelEmaV2 of the weights
(ema = decay * ema + (1 - decay) * params after every step, from the initial weights, no warmup) in
the train state, checkpointed and resumed exactly. Every evaluation then measures both weights: the
raw ones as val/*, test/*, the EMA's as val_ema/*, test_ema/*. The run's result, load_run(workdir) and
the runs read as teachers or init_from give the EMA weights (load_run(workdir, ema=False): the raw ones).

A config may leave optimizer, momentum, nesterov, b1, b2, layer_decay, ema_decay and min_lr out (the defaults
above; config.json then lacks them too); a field must be in the config for `--config.<field>=` to set it.
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from tokax import reduction
from tokax.data import embedded, offline, pipeline
from tokax.train import evaluate, objectives, optim, sharding
from tokax.train.config_utils import durations_from_config, load_config_file, steps
from tokax.train.model import build_model
from tokax.train.step import ema_params_of, init_state, make_train_step
from tokax.train.tasks import base

NAME = "classifier"
SPLITS = ("train", "val", "test")
DISTILL_KINDS = ("hard", "frd")


# --- data -----------------------------------------------------------------------------------------

def is_offline(name: str) -> bool:
  """Whether data.name is an embedded dataset (not "tfds:" / "folder:")."""
  return not str(name).startswith(("tfds:", "folder:"))


def is_folder(name: str) -> bool:
  """Whether data.name is an image folder ("folder:<root>")."""
  return str(name).startswith("folder:")


def source(config: ml_collections.ConfigDict, split: str, *, classes: list[str] | None = None) -> pipeline.Source:
  """The pipeline Source of one split: config.data.<split>_split names it (default: the split itself).

  An image folder is labelled with `classes`, else dataset_classes(config) (the train split's own for the train
  split of a fresh config).
  """
  d = config.data
  name = d.get(f"{split}_split") or split
  kwargs = {}
  if is_offline(d.name):
    kwargs = dict(image_size=config.model.image_size, num_examples=d.get(f"num_{split}"), seed=d.seed)
  elif is_folder(d.name):
    if classes is None and (d.get("classes") or split != "train"):
      classes = dataset_classes(config)
    kwargs = dict(classes=classes, skip_bad_images=bool(d.get("skip_bad_images")))
  elif d.get("classes") or d.get("skip_bad_images"):
    raise ValueError(f"config.data.classes / skip_bad_images: apply to image folders ('folder:<root>'); "
                     f"{d.name!r} has its own labels and decodes its own images: leave them unset")
  return pipeline.get_source(d.name, name, data_dir=d.get("data_dir"), **kwargs)


def dataset_classes(config: ml_collections.ConfigDict) -> list[str] | None:
  """The class list of an image-folder config.data (label i is its i-th name): config.data.classes (what a
  trained run's config.json holds), else the class folders of its train split; None for other data."""
  d = config.data
  if not is_folder(d.name):
    return None
  if d.get("classes"):
    return [str(c) for c in d.classes]
  from tokax.data import folder  # noqa: PLC0415

  root = str(d.name)[len("folder:"):]
  train_root = os.path.join(root, d.get("train_split") or "train")
  return folder.class_folders(train_root if os.path.isdir(train_root) else root)


def eval_batches(config: ml_collections.ConfigDict, eval_source: pipeline.Source) -> pipeline.DataIterator:
  """One ordered, padded and masked pass over an eval Source, whole batches on every process (with
  config.data.skip_bad_images, undecodable images are masked out and counted in .bad_examples)."""
  d = config.data
  return pipeline.make_iterator(eval_source, batch_size=config.eval_batch_size,
                                preprocess=d.get("preprocess_eval") or "", shuffle=False, drop_remainder=False,
                                num_epochs=1, num_threads=d.get("num_threads") or 8)


def load_split(config: ml_collections.ConfigDict, split: str) -> offline.ArrayDataset:
  """One split of config.data in memory: images (N, S, S, 3) float32 in [0, 1], labels (N,).

  Embedded datasets are built directly; tfds and folders go through the eval preprocessing.
  """
  d = config.data
  if is_offline(d.name):
    return embedded.load(d.name, split, image_size=config.model.image_size, num_examples=d.get(f"num_{split}"),
                         seed=d.seed)
  split_source = source(config, split)
  images, labels = [], []
  for batch in eval_batches(config, split_source):
    images.append(batch["image"][batch["mask"]])
    labels.append(batch["label"][batch["mask"]])
  images = np.concatenate(images)
  images = images.astype(np.float32) / 255.0 if images.dtype == np.uint8 else images.astype(np.float32)
  return offline.ArrayDataset(images=images, labels=np.concatenate(labels).astype(np.int32),
                              num_classes=num_classes_of(config, split_source), name=str(d.name), split=split)


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


def train_data(config: ml_collections.ConfigDict, train_source: pipeline.Source, num_classes: int) -> base.TrainData:
  """The train split with config.data's preprocessing and batch ops (num_classes filled in)."""
  d = config.data
  return base.TrainData(source=train_source, preprocess=d.get("preprocess") or "",
                        batch_ops=batch_ops_spec(d.get("batch_ops") or "", num_classes, config.label_smoothing),
                        repeated_augmentation=int(d.get("repeated_augmentation") or 0))


def num_classes_of(config: ml_collections.ConfigDict, train_source: pipeline.Source | None = None) -> int:
  """config.model.num_classes, else the train source's, else config.data.num_classes (they must agree).

  Without a source (restoring from config.json), an embedded dataset says its own (embedded.num_classes).
  """
  given = {"config.model.num_classes": config.model.get("num_classes"),
           "config.data.num_classes": config.data.get("num_classes"),
           "config.data.classes": len(config.data.get("classes") or ())}
  if train_source is not None:
    given["the data"] = getattr(train_source, "num_classes", None)
  elif is_offline(config.data.name):
    given["the data"] = embedded.num_classes(config.data.name)
  values = {k: int(v) for k, v in given.items() if v}
  if len(set(values.values())) > 1:
    raise ValueError(f"num_classes: {', '.join(f'{k} says {v}' for k, v in values.items())}; make them agree "
                     f"(or leave the config's unset: the data's count is used)")
  if not values:
    raise ValueError(f"config.data.num_classes: {config.data.name!r} does not say how many classes it has; set it")
  return next(iter(values.values()))


# --- model and optimizer --------------------------------------------------------------------------

def reduction_from_config(spec: Any) -> Any:
  """The reduction method of config.reduction (None for "none"): the one place a reduction is built."""
  return reduction.build(spec, calibration=False)


def model_from_config(config: ml_collections.ConfigDict, num_classes: int):
  """MODELS[config.model.name](**config.model) with num_classes and config.reduction's method."""
  fields = {k: v for k, v in config.model.items() if k not in ("name", "num_classes")}
  return build_model(config.model.get("name", "vit"), **fields, num_classes=num_classes,
                     reduction=reduction_from_config(config.reduction))


# The optimizer fields a classifier config may leave out, with their defaults (see the module docstring).
OPTIMIZER_DEFAULTS = {"optimizer": "adamw", "momentum": 0.9, "nesterov": True, "b1": None, "b2": None,
                      "layer_decay": 1.0, "ema_decay": 0.0, "min_lr": 0.0}


def _field(config: ml_collections.ConfigDict, name: str) -> Any:
  return config.get(name, OPTIMIZER_DEFAULTS[name])


def check_optimizer_fields(config: ml_collections.ConfigDict) -> None:
  """Refuses config.optimizer / layer_decay / ema_decay / momentum / b1 / b2 values no run can use (ValueError
  naming the field and the values it takes)."""
  optim.check_fields(optimizer=_field(config, "optimizer"), layer_decay=_field(config, "layer_decay"),
                     ema_decay=_field(config, "ema_decay"), momentum=_field(config, "momentum"),
                     b1=_field(config, "b1"), b2=_field(config, "b2"))
  min_lr = _field(config, "min_lr")
  if isinstance(min_lr, bool) or not isinstance(min_lr, (int, float)) or not 0 <= min_lr < float("inf"):
    raise ValueError(f"config.min_lr={min_lr!r}: expected a number >= 0 (the end of the cosine decay, timm's "
                     f"--min-lr; 0: decay to zero)")


def ema_decay_of(config: ml_collections.ConfigDict) -> float:
  """config.ema_decay: the decay of the weight EMA the run keeps (0, the default: none)."""
  return _field(config, "ema_decay")


def optimizer(config: ml_collections.ConfigDict, total_steps: int, warmup_steps: int):
  """(schedule, tx): config.optimizer (AdamW by default) with warmup and cosine decay to config.min_lr, the config's
  weight decay, gradient clipping and layer-wise lr decay (tokax.train.optim.optimizer)."""
  schedule = optim.lr_schedule(peak_lr=config.lr, warmup_steps=warmup_steps, total_steps=total_steps,
                               end_lr=_field(config, "min_lr"))
  tx = optim.optimizer(_field(config, "optimizer"), schedule, weight_decay=config.weight_decay,
                       grad_clip_norm=config.grad_clip_norm, b1=_field(config, "b1"), b2=_field(config, "b2"),
                       momentum=_field(config, "momentum"), nesterov=_field(config, "nesterov"),
                       layer_decay=_field(config, "layer_decay"))
  return schedule, tx


def _init_variables(config: ml_collections.ConfigDict, model, image_shape: tuple[int, ...]):
  """SiT's init (model variables plus the train-only reverse modules) for distill.kind="frd", else None."""
  distill = config.get("distill")
  return objectives.sit_init_variables(model, image_shape) if distill and distill.get("kind") == "frd" else None


def _image_shape(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
  return (config.model.image_size, config.model.image_size, 3)


# --- teachers and initial weights from other runs -------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Teacher:
  """A frozen classifier: the model and its variables (host arrays)."""
  model: Any
  variables: Any


def load_classifier(workdir: str) -> base.Run:
  """The classifier run of `workdir` (from its config.json and latest checkpoint)."""
  config = base.read_config(workdir)
  if config.get("task", NAME) != NAME:
    raise base.RunError(f"{workdir!r} holds a {config.task!r} run; a teacher or init_from run must be a classifier")
  return base.load(TASK, config, workdir)


def check_run_references(config: ml_collections.ConfigDict) -> None:
  """Refuses the fields that named a config file only to rebuild another run's model (config.json does now)."""
  init_from, distill = config.get("init_from"), config.get("distill")
  if init_from and init_from.get("config"):
    raise ValueError("init_from.config is no longer needed: the run in init_from.workdir is rebuilt from its own "
                     "config.json; remove the field")
  given = [k for k in ("workdir", "pretrained", "checkpoint") if init_from and init_from.get(k)]
  if len(given) > 1:
    raise ValueError(f"config.init_from: give one of workdir (a tokax run), pretrained (a shipped model's name) or "
                     f"checkpoint (a timm / big_vision file or a timm name); got {', '.join(given)}")
  if init_from and init_from.get("pretrained"):
    from tokax import pretrained  # noqa: PLC0415

    # an unknown name fails here, listing the models there
    pretrained.info(init_from.pretrained, init_from.get("pretrained_dir") or pretrained.DIRECTORY)
  if distill:
    _check_teacher_fields(distill)


def _check_teacher_fields(spec: ml_collections.ConfigDict) -> None:
  if spec.get("teacher_workdir") and spec.get("teacher_config"):
    raise ValueError("distill.teacher_config is no longer needed with distill.teacher_workdir: the teacher is "
                     "rebuilt from the run's own config.json; leave teacher_config empty (it names the model of "
                     "a distill.teacher_checkpoint file only)")


def load_teacher(spec: ml_collections.ConfigDict, num_classes: int) -> Teacher:
  """The teacher of config.distill: the tokax run in teacher_workdir, or the timm / DeiT / big_vision file (or timm
  name with a weights tag, checkpoint_file) teacher_checkpoint read into the model of teacher_config
  ("configs/x.py[:arg]")."""
  _check_teacher_fields(spec)
  if spec.get("teacher_checkpoint"):
    if not spec.get("teacher_config"):
      raise ValueError("distill.teacher_config: name the config file of the teacher_checkpoint's model "
                       "('configs/x.py[:arg]')")
    from tokax.interop import timm as timm_interop

    model = model_from_config(load_config_file(spec.teacher_config), num_classes)
    path = checkpoint_file(spec.teacher_checkpoint)  # a file, or a timm name with a weights tag (the hub file)
    return Teacher(model=model, variables=timm_interop.load_checkpoint(path, model))
  if not spec.get("teacher_workdir"):
    raise ValueError("distill: set teacher_workdir (a tokax run) or teacher_checkpoint (a timm file)")
  run = load_classifier(spec.teacher_workdir)
  if run.model.num_classes != num_classes:
    raise ValueError(f"distill.teacher_workdir: the teacher {spec.teacher_workdir!r} has {run.model.num_classes} "
                     f"classes, this run's data {num_classes}")
  return Teacher(model=run.model, variables=jax.device_get(run.variables))


def objective_from_config(config: ml_collections.ConfigDict, model, num_classes: int, image_shape: tuple[int, ...]
                          ) -> tuple[objectives.Objective | None, Teacher | None]:
  """The objective of config.distill (kind "hard" or "frd") or config.consistency (MCTF), with the
  restored teacher; (None, None) for the plain classifier."""
  distill, consistency = config.get("distill"), config.get("consistency")
  smoothing = config.label_smoothing
  if distill and consistency:
    raise ValueError("config.distill and config.consistency are separate objectives; set one of them")
  if consistency:
    return objectives.mctf_consistency(model, tuple(consistency.teacher_r), weights=tuple(consistency.weights),
                                       threshold=consistency.threshold, label_smoothing=smoothing), None
  if not distill:
    return None, None
  kind = distill.get("kind", "hard")
  if kind not in DISTILL_KINDS:
    raise ValueError(f"distill.kind: expected one of {DISTILL_KINDS}; got {kind!r}")
  teacher = load_teacher(distill, num_classes)
  if kind == "hard":
    if not getattr(model, "distilled", False):
      raise ValueError("distill.kind='hard' trains the distillation token: set config.model.distilled=True")
    return objectives.hard_distillation(teacher.model, alpha=distill.get("alpha", 0.5),
                                        label_smoothing=smoothing), teacher
  objective = objectives.sit_frd(model, teacher.model, lambda_token=distill.get("lambda_token", 2.0),
                                 lambda_logits=distill.get("lambda_logits", 2.0), tau=distill.get("tau", 1.0),
                                 label_smoothing=smoothing)
  return dataclasses.replace(objective, init_variables=objectives.sit_init_variables(model, image_shape)), teacher


CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".pth.tar", ".npz")


def checkpoint_file(spec: str) -> str:
  """init_from.checkpoint as a local file: the path itself, or the hub file (tokax.interop.hub: downloaded, or
  from the cache offline) of a timm name with a weights tag ("deit_small_patch16_224.fb_in1k")."""
  spec = os.path.expanduser(str(spec))
  if os.path.isfile(spec):
    return spec
  from tokax.interop import hub, timm_names  # noqa: PLC0415

  if timm_names.is_timm_name(spec) and timm_names.split_tag(spec)[1] and not spec.endswith(CHECKPOINT_SUFFIXES):
    return hub.hub_file(timm_names.hub_repo(spec), "model.safetensors")
  raise ValueError(f"init_from.checkpoint={spec!r}: no such file, and not a timm name with a weights tag (e.g. "
                   f"'deit_small_patch16_224.fb_in1k'); give a {' / '.join(CHECKPOINT_SUFFIXES)} file or such a name")


def resample_pos_embed(pos_embed: np.ndarray, num_prefix: int, grid: int) -> np.ndarray:
  """(1, P + g * g, C) position embeddings -> (1, P + grid * grid, C): the P prefix rows kept, the g x g patch grid
  resized bilinearly (scipy.ndimage.zoom, order 1), as vision_transformer's checkpoint.interpolate_posembed does
  when a fine-tune changes the image size."""
  from scipy import ndimage  # noqa: PLC0415

  pos_embed = np.asarray(pos_embed, np.float32)
  prefix, patches = pos_embed[:, :num_prefix], pos_embed[0, num_prefix:]
  old = math.isqrt(patches.shape[0])
  if old * old != patches.shape[0]:
    raise ValueError(f"resample_pos_embed: {patches.shape[0]} patch positions after {num_prefix} prefix rows are not "
                     "a square grid")
  if old == grid:
    return pos_embed
  zoomed = ndimage.zoom(patches.reshape(old, old, -1), (grid / old, grid / old, 1), order=1)
  return np.concatenate([prefix, zoomed.reshape(1, grid * grid, -1)], axis=1)


def checkpoint_params(spec: str, model) -> Any:
  """{"params": ...} for `model` (a ViT) from init_from.checkpoint (checkpoint_file), as a fine-tune starts:

  - the classifier (head, head_dist) is left out when its class count is not the model's (an ImageNet-21k
    checkpoint fine-tuned on ImageNet-1k): the model's own head init (zeros, as big_vision's transfer) stays;
  - the position embeddings are resampled to the model's patch grid when the image size differs
    (resample_pos_embed: a 224 px checkpoint fine-tuned at 384 px);
  - every other array must fit the dense model (tokax.interop.common.check_params: a ValueError names each
    mismatch and the ViT field to change); modules the checkpoint lacks (a reduction's) keep their init
    when merged (objectives.merge_params).
  """
  from tokax.interop import big_vision, common  # noqa: PLC0415
  from tokax.interop import timm as timm_interop  # noqa: PLC0415

  path = checkpoint_file(spec)
  dense = model.clone(reduction=None)
  if path.endswith(".npz"):
    tree = big_vision.convert_npz(big_vision.read_npz(path), dense)
  else:
    tree = timm_interop.convert_state_dict(timm_interop.read_state_dict(path))
  flat = common.flatten(tree.get("params", tree))
  heads = {p: v for p, v in flat.items() if p[0] in ("head", "head_dist")}
  if any(np.shape(v)[-1] != model.num_classes for v in heads.values()):
    logging.info("init_from.checkpoint %s: its classifier has %d classes, the model %d: the head starts from its init",
                 path, np.shape(next(iter(heads.values())))[-1], model.num_classes)
    flat = {p: v for p, v in flat.items() if p not in heads}
    heads = {}
  pos = flat.get(("pos_embed",))
  if pos is not None:
    prefix, rows = int(model.class_token) + int(model.distilled), np.shape(pos)[1]
    stored_prefix = prefix if math.isqrt(rows - prefix) ** 2 == rows - prefix else 0  # big_vision: no cls row
    flat[("pos_embed",)] = resample_pos_embed(pos, stored_prefix, model.image_size // model.arch.patch_size)
  return common.check_params(common.unflatten(flat), dense.clone(num_classes=model.num_classes if heads else 0))


def initial_params(config: ml_collections.ConfigDict, teacher: Teacher | None, model: Any = None) -> Any:
  """The variables a fresh run starts from beside its init: config.init_from's run or checkpoint (fitted to
  `model`, checkpoint_params), or the teacher with distill.init_student (SiT fine-tunes the slimming student
  from its teacher); None for neither."""
  init_from = config.get("init_from")
  if init_from and init_from.get("workdir"):
    return jax.device_get(load_classifier(init_from.workdir).variables)
  if init_from and init_from.get("checkpoint"):
    if model is None:
      raise ValueError("initial_params: init_from.checkpoint is fitted to the run's model; pass model=")
    return checkpoint_params(init_from.checkpoint, model)
  if init_from and init_from.get("pretrained"):
    from tokax import pretrained  # noqa: PLC0415

    directory = init_from.get("pretrained_dir") or pretrained.DIRECTORY
    return jax.device_get(pretrained.load(init_from.pretrained, directory=directory)[1])
  distill = config.get("distill")
  if distill and distill.get("init_student", False) and teacher is not None:
    return teacher.variables
  return None


def _start_from(config: ml_collections.ConfigDict, teacher: Teacher | None, model: Any = None):
  """state -> state with initial_params merged in (matching paths and shapes), read when a fresh run
  starts (not on a resume); None when the config names no run to start from."""
  init_from, distill = config.get("init_from"), config.get("distill")
  starts_from_weights = init_from and any(init_from.get(k) for k in ("workdir", "pretrained", "checkpoint"))
  if not (starts_from_weights or (distill and distill.get("init_student", False) and teacher)):
    return None

  def start(state):
    params, taken = objectives.merge_params(state.params, initial_params(config, teacher, model))
    logging.info("initialised %d parameter arrays from the init_from / teacher run", taken)
    # the EMA starts at the same weights, in buffers of its own (the step donates both trees)
    if ema_params_of(state) is None:
      return state.replace(params=params)
    return state.replace(params=params, ema_params=jax.tree.map(jnp.copy, params))

  return start


# --- the task -------------------------------------------------------------------------------------

def build(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> base.Plan:
  """The classifier run of `config` (see the module docstring)."""
  check_run_references(config)
  check_optimizer_fields(config)
  sources = {"train": source(config, "train")}
  classes = getattr(sources["train"], "classes", None) if is_folder(config.data.name) else None
  sources.update({split: source(config, split, classes=classes) for split in SPLITS if split != "train"})
  num_classes = num_classes_of(config, sources["train"])
  model = model_from_config(config, num_classes)
  image_shape = _image_shape(config)
  num_train, batch_size = len(sources["train"]), config.batch_size
  durations = durations_from_config(config, num_train, batch_size)
  schedule, tx = optimizer(config, durations.total, steps("warmup", config, num_train, batch_size, default=0))
  objective, teacher = objective_from_config(config, model, num_classes, image_shape)
  init_rng, step_rng = jax.random.split(jax.random.key(config.seed))
  ema_decay = ema_decay_of(config)
  init_fn = functools.partial(init_state, model, tx, image_shape=image_shape, step_rng=step_rng,
                              init_variables=None if objective is None else objective.init_variables,
                              ema=bool(ema_decay))
  hooks = {} if objective is None else objective.step_kwargs()
  step_fn = make_train_step(model=model, tx=tx, schedule=schedule, label_smoothing=config.label_smoothing,
                            max_shift=config.augment.max_shift, ema_decay=ema_decay, **hooks)
  replicated = sharding.replicated(mesh)
  eval_step = evaluate.make_eval_step(model, out_sharding=replicated)

  def run_eval(split: str, params: Any, prefix: str) -> dict[str, float]:
    batches = eval_batches(config, sources[split])
    values = evaluate.evaluate_batches(eval_step, params, batches, sharding=replicated)
    if batches.skip_bad_images:
      values["bad_examples"] = batches.bad_examples
    return {f"{prefix}/{k}": v for k, v in values.items()}

  def run_evals(state: Any, splits: tuple[str, ...]) -> dict[str, float]:
    """{split}/* of the raw weights, and {split}_ema/* of the EMA weights when the run keeps them."""
    metrics = {}
    for split in splits:
      metrics.update(run_eval(split, state.params, split))
    ema_params = ema_params_of(state)
    if ema_params is not None:
      for split in splits:
        metrics.update(run_eval(split, ema_params, f"{split}_ema"))
    return metrics

  return base.Plan(
      model=model, data=train_data(config, sources["train"], num_classes), batch_keys=("image", "label"),
      durations=durations, init_fn=init_fn, init_rng=init_rng, step_fn=step_fn,
      frozen=None if teacher is None else teacher.variables, start=_start_from(config, teacher, model),
      evaluate=lambda state: run_evals(state, ("val",)),
      finalize=lambda state, _: run_evals(state, ("val", "test")),
      result_params=_result_params,
      resolved={"total_steps": durations.total, "model": {"num_classes": num_classes},
                **({"data": {"classes": list(classes)}} if classes is not None else {})},
      description=f"{model.variant} ({model.arch}), {num_train} train examples of {config.data.name}")


def target(config: ml_collections.ConfigDict) -> base.Target:
  """The model and train state of a saved classifier run (num_classes from its config.json)."""
  check_optimizer_fields(config)
  model = model_from_config(config, num_classes_of(config))
  _, tx = optimizer(config, total_steps=1, warmup_steps=0)
  image_shape = _image_shape(config)
  init_fn = functools.partial(init_state, model, tx, image_shape=image_shape,
                              init_variables=_init_variables(config, model, image_shape),
                              ema=bool(ema_decay_of(config)))
  return base.Target(model=model, init_fn=init_fn, init_rng=jax.random.key(0))


def _result_params(state: Any) -> Any:
  """TrainResult.params: the EMA params of a run that keeps an EMA, else the params (SiT's reverse modules kept)."""
  ema_params = ema_params_of(state)
  return state.params if ema_params is None else ema_params


def variables(state: Any, *, ema: bool = True) -> Any:
  """model.apply's variables: the EMA params of a run that keeps an EMA (ema=False, or a run without one: the raw
  params), without SiT's train-only reverse modules."""
  ema_params = ema_params_of(state)
  params = ema_params if ema and ema_params is not None else state.params
  return {k: v for k, v in params.items() if k != objectives.REVERSE}


TASK = base.Task(name=NAME, build=build, target=target, variables=variables)
