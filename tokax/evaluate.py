r"""`python -m tokax.evaluate`: one model x several token reductions x one dataset -> one table.

  # a tokax classifier run (its eval preprocessing, its test split; outputs in <workdir>/evaluate/)
  python -m tokax.evaluate --model /tmp/cd_vit --reduction tome:8 --reduction tome:16 --reduction evit:0.7
  # timm weights (.safetensors / .pth) with their timm name; the eval split of an image folder
  python -m tokax.evaluate --model vit_s16.safetensors --timm_name vit_small_patch16_224 \
      --data folder:/data/imagenet --reduction tome:16 --out /tmp/eval_vit_s16
  # a big_vision / AugReg .npz (variant, image size and classes read off its shapes unless given)
  python -m tokax.evaluate --model augreg_B16.npz --variant B/16 --image_size 224 \
      --data tfds:imagenet2012:validation --reduction tome:8 --out /tmp/eval_b16
  # a timm architecture with random weights (speed only: the accuracy columns say so)
  python -m tokax.evaluate --model timm:vit_tiny_patch16_224 --data cluttered_digits --num_examples 200 \
      --num_classes 10 --reduction tome:8 --reduction evit:0.7 --reduction divprune:0.5 --out /tmp/eval_ti
  # a model that ships with tokax (tokax.pretrained), on the data it was trained on
  python -m tokax.evaluate --model pretrained:glyphs_vit_ti16_112 --num_examples 2000 --reduction tome:2 \
      --out /tmp/eval_glyphs
  # a config file: the model, the data and the rows with their published top-1 (docs/evaluate_imagenet.md)
  python -m tokax.evaluate --config tokax:imagenet_reductions.py:num_examples=1000 --config.batch_size=128 \
      --out /tmp/eval_imagenet

Model (--model): a `python -m tokax.train` workdir holding a classifier run (tokax.train.restore.load_run),
a timm state dict (.safetensors, .pth/.pt/.bin) with --timm_name (the architecture from timm's
name; timm is optional: without it, vit_/deit_ names are parsed), a big_vision / AugReg .npz (arrays
it has that the ViT does not read are an error; --allow_unknown_keys drops them),
`pretrained:<name>` (a model that ships with tokax; its default data is the dataset it was trained on; or
a timm name with a weights tag, pretrained:vit_base_patch16_224.augreg_in21k_ft_in1k, read as tokax.create_model
reads it: from the Hugging Face hub or, offline, its cache) or `timm:<name>` (random weights).

Data (--data): an embedded dataset (tokax.data.embedded.DATASETS), `folder:<root>` (root/<split>,
default split "val"), `tfds:<name>[:split]` (default split "test"); a workdir's default is its own
data and test split. --num_examples N keeps the first N. A folder is labelled with the run's class
list (its config.json's data.classes) for a workdir model, else with root/train's class folders
(tokax.data.folder); --skip_bad_images leaves out (and counts) images that do not decode.
Preprocessing: a workdir's own data.preprocess_eval and [-1, 1] inputs; timm weights get timm's own eval
transform, pixel for pixel (transforms.resize_center_crop: shorter side to floor(size / crop_pct) with the
interpolation, crop_pct, mean and std of timm's pretrained config for the name, center crop); a big_vision /
AugReg .npz gets resize_small(size / 0.875) + central_crop (bilinear) and mean = std = 0.5; embedded datasets
are rendered at the model's image size.

Reductions (--reduction, repeated, or the `reductions` list of a --config file): tokax.reduction.build specs
("tome:8", "evit:0.7,fuse_token=False", "divprune:0.5"); "none" (dense) is always the first row, the reference
of the agreement column. Methods that need calibration
(dtome) are calibrated by tokax.reduction.calibrate_dtome on the first --calibration_batches eval
batches (images only; the row's note says so). Post-encoder reducers (DivPrune, ToDRE, DCT, FasterVLM)
run on the dense encoder's output tokens and the head reads the pooled reduced tokens
(tokax.bench.measure.post_forward). With any of them, one pass of the dense model gives both the dense row
and the encoder outputs they all reduce, when those fit in --encoder_cache_gb of host memory: the dense
row's images/s is then that pass's (results.json: "timing": "encoder"), a post row's the pass's time plus its
reducer-and-head executable's ("encoder + reducer").

Config (--config file.py[:arg] or tokax:<name>.py[:arg], e.g. configs/imagenet_reductions.py): get_config(arg)
returns a ConfigDict whose fields are named as the flags (model, data, split, data_dir, num_examples, batch_size,
dtype, ...) plus `reductions` and `left_out`; `--config.<field>=value` overrides a field, and a flag given on
the command line overrides both. A `reductions` entry is a spec or a row dict(spec="tome:13",
paper=dict(top1=82.60, source="ToMe README, AugReg ViT-B/16 off the shelf")) ("none" for the dense row): the
table then has the published top-1 and tokax's top-1 minus it, and each source is printed under the table.
`left_out` ({method: why}) names registry methods the table has no row for; the reasons are printed too.

Prints one table (method, tokens after the last block, GFLOPs/img, images/s on this device, top-1,
top-5, agreement with dense; with a config's paper values: paper top-1, top-1 - paper) with its notes under it,
and writes results.json, results.md and accuracy_vs_gflops.png (with
--merge_images N also merges.png, the token groups every method leaves on the first N images) into
--out (default <workdir>/evaluate/ for a workdir; required otherwise; never elsewhere inside a run's
workdir). Every bad input fails before anything is loaded or run, naming the thing and the fix.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from tokax import reduction as reductions
from tokax.data import embedded, offline, pipeline, transforms
from tokax.interop import timm_names

DEFAULT_CROP_PCT = 0.875
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".pth.tar")


# --- the model -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Loaded:
  """A classifier ready to evaluate.

  Attributes:
    model: a tokax ViT (num_classes > 0).
    variables: its {"params": ...}.
    description: one line for the caption.
    mean, std: per-channel normalisation of [0, 1] images; None: [-1, 1] (tokax runs, x * 2 - 1).
    crop_pct: the eval transform's centre-crop fraction for decoded images (None: resize only).
    interpolation: timm weights: their pretrained cfg's interpolation, and decoded images get timm's eval
      transform exactly (transforms.resize_center_crop); None: resize_small + central_crop (bilinear).
    random_weights: the weights carry no training (timm:<name>).
    workdir: the run's workdir (a tokax run), else None.
    run_config: the run's resolved config (a tokax run), else None.
  """
  model: Any
  variables: Any
  description: str
  mean: tuple[float, ...] | None = None
  std: tuple[float, ...] | None = None
  crop_pct: float | None = DEFAULT_CROP_PCT
  interpolation: str | None = None
  random_weights: bool = False
  workdir: str | None = None
  run_config: Any = None

  def input_fn(self) -> Callable[[jax.Array], jax.Array]:
    """(B, H, W, 3) in [0, 1] (uint8: 0..255) -> the model's inputs."""
    from tokax.train.model import normalize_images

    if self.mean is None:
      return normalize_images
    mean, std = jnp.asarray(self.mean, jnp.float32), jnp.asarray(self.std, jnp.float32)

    def normalize(images: jax.Array) -> jax.Array:
      unit = images.astype(jnp.float32) / 255.0 if images.dtype == jnp.uint8 else images
      return (unit - mean) / std
    return normalize


def load_workdir(workdir: str) -> Loaded:
  """The classifier run in `workdir` (tokax.train.restore.load_run); another task's run is refused."""
  from tokax.train import restore
  from tokax.train.tasks import base

  config = base.read_config(workdir)
  task = config.get("task", "classifier")
  if task != "classifier":
    raise ValueError(f"--model {workdir!r} holds a {task!r} run (config.json task={task!r}); tokax.evaluate "
                     "measures classifiers: give a classifier run's workdir (config.task='classifier')")
  run = restore.load_run(workdir)
  return Loaded(model=run.model.clone(reduction=None), variables=run.variables, workdir=workdir,
                run_config=run.config, crop_pct=None,
                description=f"tokax run {workdir} ({run.config.data.name}) at step {run.step}")


_TIMM_NAME = re.compile(r"^(?P<family>vit|deit)_(?P<size>tiny|small|medium|base|large|huge)_(?P<dist>distilled_)?"
                        r"patch(?P<patch>\d+)_(?P<image>\d+)(\..*)?$")
_TIMM_SIZES = {"tiny": "Ti", "small": "S", "medium": "M", "base": "B", "large": "L", "huge": "H"}


def parse_timm_name(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
  """Without timm: ("vit_small_patch16_224" -> ViT kwargs, {mean, std, crop_pct, interpolation}) for plain vit_/deit_
  names."""
  m = _TIMM_NAME.match(name)
  if m is None:
    raise ValueError(f"timm model {name!r}: timm is not installed (an optional dependency of tokax: pip install timm), "
                     "and without it only plain names like vit_small_patch16_224 or deit_tiny_distilled_patch16_224 "
                     "are understood")
  kwargs = dict(variant=f"{_TIMM_SIZES[m['size']]}/{m['patch']}", image_size=int(m["image"]), num_classes=1000,
                pool="cls", class_token=True, distilled=bool(m["dist"]))
  vit = m["family"] == "vit"
  norm = dict(mean=(0.5,) * 3 if vit else transforms.IMAGENET_MEAN, std=(0.5,) * 3 if vit else transforms.IMAGENET_STD,
              crop_pct=0.9 if vit else DEFAULT_CROP_PCT, interpolation="bicubic")
  return kwargs, norm


def _import_timm():
  from tokax.bench.throughput import _import_timm as import_timm  # applies the torchvision-on-CPU fix
  return import_timm()


def timm_architecture(name: str, *, image_size: int | None = None, num_classes: int | None = None,
                      state_dict: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
  """(ViT kwargs, {mean, std, crop_pct, interpolation}) of timm model `name`, built by timm on the meta device.

  image_size / num_classes: given, else read off `state_dict` (pos_embed, head.weight), else timm's.
  """
  try:
    timm = _import_timm()
    import torch
  except ImportError:
    kwargs, norm = parse_timm_name(name)
    if state_dict is not None:
      kwargs.update(timm_names.shapes_from_state_dict(state_dict, int(kwargs["variant"].split("/")[1]),
                                            1 + int(kwargs["distilled"]), image_size, num_classes))
    kwargs.update({k: v for k, v in (("image_size", image_size), ("num_classes", num_classes)) if v is not None})
    return kwargs, norm
  from tokax.interop.timm import timm_config

  def create(**kwargs):
    try:
      with torch.device("meta"):
        return timm.create_model(name, pretrained=False, **kwargs)
    except RuntimeError as e:
      raise ValueError(f"--timm_name {name!r}: timm cannot build it ({e}); give a timm model name "
                       "(timm.list_models('vit_*'))") from None

  given = {k: v for k, v in (("img_size", image_size), ("num_classes", num_classes)) if v is not None}
  if state_dict is not None and len(given) < 2:
    default = create()
    patch = int(default.patch_embed.patch_size[0])
    prefix = 0 if getattr(default, "no_embed_class", False) else int(default.num_prefix_tokens)
    found = timm_names.shapes_from_state_dict(state_dict, patch, prefix, image_size, num_classes)
    read = {"img_size": found.get("image_size"), "num_classes": found.get("num_classes")}
    given = {**{k: v for k, v in read.items() if v is not None}, **given}
  model = create(**given)
  cfg = dict(getattr(model, "pretrained_cfg", None) or {})
  norm = dict(mean=tuple(cfg.get("mean", transforms.IMAGENET_MEAN)), std=tuple(cfg.get("std", transforms.IMAGENET_STD)),
              crop_pct=float(cfg.get("crop_pct", DEFAULT_CROP_PCT)),
              interpolation=str(cfg.get("interpolation", "bicubic")))
  return timm_config(model), norm


def load_timm_weights(path: str, name: str | None, *, image_size: int | None, num_classes: int | None) -> Loaded:
  """A timm state dict file read into the ViT of timm model `name` (image size, classes from the file)."""
  from tokax.interop import check_params
  from tokax.interop.timm import convert_state_dict, read_state_dict
  from tokax.models import ViT

  if not name:
    raise ValueError(f"--model {path!r} is a timm state dict: name its architecture with --timm_name "
                     "(e.g. --timm_name vit_small_patch16_224)")
  sd = read_state_dict(path)
  kwargs, norm = timm_architecture(name, image_size=image_size, num_classes=num_classes, state_dict=sd)
  model = ViT(**kwargs)
  try:
    params = check_params(convert_state_dict(sd), model)
  except ValueError as e:
    raise ValueError(f"--model {path!r} does not fit --timm_name {name!r} ({kwargs['variant']}, {kwargs['image_size']} "
                     f"px, {kwargs['num_classes']} classes): {e}\nname the timm architecture these weights were "
                     "saved from (or pass --image_size / --num_classes)") from None
  return Loaded(model=model, variables=params, description=f"{os.path.basename(path)} as timm {name}", **norm)


def npz_architecture(path: str) -> dict[str, Any]:
  """ViT kwargs read off a big_vision / AugReg .npz: patch and width (embedding), depth, heads, MLP, image size
  (pos_embedding), num_classes (head)."""
  from tokax.interop.big_vision import read_npz, strip_prefix
  from tokax.models.vit import _WIDTHS

  w = strip_prefix(read_npz(path))
  patch, _, _, width = w["embedding/kernel"].shape
  scanned = [k for k in w if k.startswith("Transformer/encoderblock/")]
  if scanned:
    depth, block = int(w[scanned[0]].shape[0]), {k[len("Transformer/encoderblock/"):]: w[k][0] for k in scanned}
  else:
    depth = len({k.split("/")[1] for k in w if k.startswith("Transformer/encoderblock_")})
    block = {k[len("Transformer/encoderblock_0/"):]: v for k, v in w.items()
             if k.startswith("Transformer/encoderblock_0/")}
  heads = next(v.shape[1] for k, v in block.items() if k.endswith("query/kernel"))
  mlp_dim = next(v.shape[-1] for k, v in block.items() if k.endswith("Dense_0/kernel"))
  pos = next(w[k] for k in ("pos_embedding", "Transformer/posembed_input/pos_embedding", "Transformer/pos_embedding")
             if k in w)
  n = pos.shape[-2]
  grid = math.isqrt(n) if math.isqrt(n) ** 2 == n else math.isqrt(n - 1)
  head = w.get("head/kernel")
  kwargs = dict(image_size=int(grid * patch), num_classes=int(head.shape[-1]) if head is not None and head.size else 0,
                pool="cls", class_token=True)
  arch = (int(width), int(depth), int(heads), int(mlp_dim))
  size = next((name for name, a in _WIDTHS.items() if a == arch), None)
  if size is not None:
    return dict(kwargs, variant=f"{size}/{patch}")
  return dict(kwargs, variant=f"Ti/{patch}", width=arch[0], depth=arch[1], num_heads=arch[2], mlp_dim=arch[3])


def load_augreg(path: str, *, variant: str | None, image_size: int | None, num_classes: int | None,
                allow_unknown: bool = False) -> Loaded:
  """A big_vision / AugReg .npz; the architecture from --variant etc. where given, else from its shapes."""
  from tokax.interop import load_npz
  from tokax.interop.big_vision import UnknownKeysError
  from tokax.models import ViT

  kwargs = npz_architecture(path)
  if variant:
    kwargs = {k: v for k, v in kwargs.items() if k not in ("width", "depth", "num_heads", "mlp_dim")}
    kwargs["variant"] = variant
  kwargs.update({k: v for k, v in (("image_size", image_size), ("num_classes", num_classes)) if v is not None})
  model = ViT(**kwargs)
  try:
    params = load_npz(path, model, allow_unknown=allow_unknown)
  except UnknownKeysError as e:
    raise ValueError(f"--model {e}\nto evaluate it without those arrays, pass --allow_unknown_keys") from None
  except ValueError as e:
    raise ValueError(f"--model {path!r} does not fit ViT({kwargs}): {e}\nfix --variant / --image_size / --num_classes "
                     "(or leave them out: they are read off the file)") from None
  return Loaded(model=model, variables=params, description=f"{os.path.basename(path)} (big_vision / AugReg)",
                mean=(0.5,) * 3, std=(0.5,) * 3)


def load_random_timm(name: str, *, image_size: int | None, num_classes: int | None) -> Loaded:
  """timm:<name>: the tokax ViT equal to timm's architecture, with random weights (for speed only)."""
  from tokax.models import ViT

  kwargs, norm = timm_architecture(name, image_size=image_size, num_classes=num_classes)
  model = ViT(**kwargs)
  size = model.image_size
  variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, size, size, 3), jnp.float32))
  if model.num_classes:  # tokax zero-initialises the head: every image would get class 0
    head = variables["params"]["head"]
    kernel = 0.02 * jax.random.normal(jax.random.key(1), head["kernel"].shape, head["kernel"].dtype)
    variables = {**variables, "params": {**variables["params"], "head": {**head, "kernel": kernel}}}
  return Loaded(model=model, variables=variables, description=f"timm {name} architecture, random weights",
                random_weights=True, **norm)


def load_hub_timm(name: str, *, image_size: int | None = None, num_classes: int | None = None) -> Loaded:
  """A timm name's weights ("vit_base_patch16_224.augreg_in21k_ft_in1k"; no tag: timm's default) from the Hugging
  Face hub or its offline cache (tokax.interop.hub, as tokax.create_model), with timm's eval transform for the tag."""
  from tokax.interop import hub

  repo = timm_names.hub_repo(name)
  loaded = load_timm_weights(hub.hub_file(repo, "model.safetensors"), name, image_size=image_size,
                             num_classes=num_classes)
  return dataclasses.replace(loaded, description=f"timm {name} (Hugging Face hub {repo})")


def load_pretrained(name: str, directory: str | None = None) -> Loaded:
  """A model that ships with tokax (tokax.pretrained; or one in `directory`), with the data it was trained on
  as its default data."""
  import ml_collections

  from tokax import pretrained

  directory = directory or pretrained.DIRECTORY
  record = pretrained.info(name, directory)
  model, variables = pretrained.load(name, directory=directory)
  data = record["data"]
  config = ml_collections.ConfigDict({"data": {"name": data["name"], "seed": int(data.get("split_seed", 0))}})
  return Loaded(model=model, variables=variables, crop_pct=None, run_config=config,
                description=f"tokax.pretrained {name} (trained on {data['name']} at {data['image_size']} px)")


def load_model(args: argparse.Namespace) -> Loaded:
  """The model of --model (see the module docstring)."""
  spec = args.model
  if spec.startswith("pretrained:"):
    from tokax import pretrained

    name = spec[len("pretrained:"):]
    if args.pretrained_dir is None and name not in pretrained.available() and timm_names.is_timm_name(name):
      return load_hub_timm(name, image_size=args.image_size, num_classes=args.num_classes)
    return load_pretrained(name, args.pretrained_dir)
  if spec.startswith("timm:"):
    return load_random_timm(spec[len("timm:"):], image_size=args.image_size, num_classes=args.num_classes)
  if os.path.isdir(spec):
    return load_workdir(spec)
  if not os.path.exists(spec):
    raise ValueError(f"--model {spec!r}: no such file or directory; expected a tokax run's workdir, a timm "
                     f"{'/'.join(WEIGHT_SUFFIXES)} file with --timm_name, a big_vision .npz, or timm:<name>")
  if spec.endswith(".npz"):
    return load_augreg(spec, variant=args.variant, image_size=args.image_size, num_classes=args.num_classes,
                       allow_unknown=args.allow_unknown_keys)
  if spec.endswith(WEIGHT_SUFFIXES):
    return load_timm_weights(spec, args.timm_name, image_size=args.image_size, num_classes=args.num_classes)
  raise ValueError(f"--model {spec!r}: unknown kind of file; expected a timm {'/'.join(WEIGHT_SUFFIXES)} file, a "
                   "big_vision .npz, a tokax run's workdir, pretrained:<name> or timm:<name>")


# --- the data ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EvalData:
  """The evaluation set: one pass of batches at a time.

  Attributes:
    batches: () -> iterable of {"image": (B, S, S, 3) float32 in [0, 1] or uint8, "label": (B,), "mask": (B,)}.
    num_examples: examples in one pass.
    num_classes: the data's class count (None where the source does not say).
    description: "cluttered_digits test (200 examples)".
    bad_examples: () -> the undecodable images the last whole pass left out (--skip_bad_images), or None.
  """
  batches: Callable[[], Iterable[Mapping[str, np.ndarray]]]
  num_examples: int
  num_classes: int | None
  description: str
  bad_examples: Callable[[], int] | None = None


class _First:
  """The first `n` examples of a pipeline Source."""

  def __init__(self, source: pipeline.Source, n: int):
    self.source, self.n = source, min(n, len(source))
    self.num_classes = getattr(source, "num_classes", None)
    self.skip_bad_images = getattr(source, "skip_bad_images", False)

  def __len__(self) -> int:
    return self.n

  def __getitem__(self, index: int) -> dict[str, Any]:
    if not 0 <= index < self.n:
      raise IndexError(index)
    return self.source[index]


def eval_preprocess(loaded: Loaded) -> str:
  """String-named ops (tokax.data.transforms) from decoded images to the model's size, in [0, 1]."""
  size = loaded.model.image_size
  if loaded.run_config is not None and loaded.run_config.data.get("preprocess_eval"):
    return str(loaded.run_config.data.preprocess_eval)
  if loaded.crop_pct is None:
    return f"decode|resize({size})|value_range(0, 1)"
  if loaded.interpolation is not None:  # timm weights: timm's own eval transform, pixel for pixel
    return (f"decode|resize_center_crop({size}, crop_pct={loaded.crop_pct!r}, "
            f"interpolation={loaded.interpolation!r})|value_range(0, 1)")
  return f"decode|resize_small({math.floor(size / loaded.crop_pct)})|central_crop({size})|value_range(0, 1)"


def load_data(args: argparse.Namespace, loaded: Loaded) -> EvalData:
  """The evaluation set of --data / --split / --num_examples for `loaded` (see the module docstring)."""
  config = loaded.run_config
  name = args.data or (str(config.data.name) if config is not None else None)
  if not name:
    raise ValueError("--data: name the evaluation data: an embedded dataset "
                     f"{embedded.DATASETS}, folder:<root> or tfds:<name>[:split]")
  own = config is not None and name == str(config.data.name)
  is_embedded = not name.startswith(("tfds:", "folder:"))
  split = args.split or ("test" if is_embedded or name.startswith("tfds:") or own else "val")
  if own:
    split = config.data.get(f"{split}_split") or split
  size, batch = loaded.model.image_size, args.batch_size
  if args.skip_bad_images and not name.startswith("folder:"):
    raise ValueError(f"--skip_bad_images: applies to folder:<root> data (files the pipeline decodes); --data {name!r} "
                     "has no files to skip")
  if is_embedded:
    dataset_name = name.removeprefix("offline:")
    if not embedded.is_embedded(dataset_name):
      raise ValueError(f"--data {name!r}: unknown dataset; expected one of {embedded.DATASETS}, folder:<root> or "
                       "tfds:<name>[:split]")
    seed = int(config.data.get("seed") or 0) if own else 0
    count = args.num_examples or (config.data.get(f"num_{args.split or 'test'}") if own else None)
    dataset = embedded.load(dataset_name, split, image_size=size, num_examples=count, seed=seed)
    batches = lambda: offline.iterate_batches(dataset, batch, shuffle=False, drop_remainder=False, num_epochs=1)
    return EvalData(batches, len(dataset), dataset.num_classes, f"{dataset_name} {split} ({len(dataset)} examples)")
  data_dir = args.data_dir or (config.data.get("data_dir") if own else None)
  classes = None
  if name.startswith("folder:") and config is not None:  # the run's labels: its config.json's class list
    from tokax.train.tasks import classifier

    classes = list(config.data.get("classes") or ()) or (classifier.dataset_classes(config) if own else None)
  source = pipeline.get_source(name, split, data_dir=data_dir, classes=classes, skip_bad_images=args.skip_bad_images)
  if args.num_examples:
    source = _First(source, args.num_examples)
  preprocess = eval_preprocess(loaded)
  counted = {"bad": 0}

  def batches() -> Iterable[Mapping[str, np.ndarray]]:
    iterator = pipeline.make_iterator(source, batch_size=batch, preprocess=preprocess, shuffle=False,
                                      drop_remainder=False, num_epochs=1, num_threads=args.num_threads)
    yield from iterator
    counted["bad"] = iterator.bad_examples

  shown = name if name.startswith("tfds:") and name.count(":") > 1 else f"{name} {split}"
  return EvalData(batches, len(source), getattr(source, "num_classes", None), f"{shown} ({len(source)} examples)",
                  bad_examples=(lambda: counted["bad"]) if args.skip_bad_images else None)


def check_classes(data: EvalData, loaded: Loaded, data_name: str) -> None:
  """The data's class count must be the head's."""
  heads = loaded.model.num_classes
  if heads < 1:
    raise ValueError(f"--model has no classifier head (num_classes=0); pass --num_classes or a checkpoint with a head")
  if data.num_classes is not None and data.num_classes != heads:
    raise ValueError(f"--data {data_name!r} has {data.num_classes} classes but the model's head has {heads}: evaluate "
                     f"a dataset with the model's {heads} classes (or a model trained on this data)")


# --- reductions and outputs ----------------------------------------------------------------------


PAPER_FIELDS = ("top1", "source")


def _config_of(args: argparse.Namespace) -> Any:
  """The --config file's ConfigDict (parse_args loaded it, with its --config.x overrides), or None."""
  config = getattr(args, "config_values", None)
  if config is None and getattr(args, "config", None):
    from tokax.train.config_utils import load_config_file

    config = load_config_file(args.config)
  return config


def _plain(value: Any) -> Any:
  return value.to_dict() if hasattr(value, "to_dict") else value


def _label(spec: Any) -> str:
  return spec if isinstance(spec, str) else json.dumps(dict(_plain(spec)))


def config_rows(args: argparse.Namespace) -> list[tuple[Any, Mapping[str, Any] | None]]:
  """[(spec, paper or None)]: --reduction specs, then the config's `reductions` entries. An entry is a spec
  ("tome:13", dict(name="tome", r=13)) or a row dict(spec=..., paper=dict(top1=<published top-1, %> or None,
  source=<paper, table, model>)); spec "none" gives the dense row its paper value."""
  out: list[tuple[Any, Mapping[str, Any] | None]] = [(spec, None) for spec in (args.reduction or [])]
  config = _config_of(args)
  for entry in list(config.get("reductions") or ()) if config is not None else ():
    entry = _plain(entry)
    if isinstance(entry, Mapping) and "spec" in entry:
      unknown = sorted(set(entry) - {"spec", "paper"})
      if unknown:
        raise ValueError(f"--config {args.config!r}: reductions entry {entry!r} has unknown keys {unknown}; a row is "
                         "dict(spec='tome:13', paper=dict(top1=82.6, source='...'))")
      paper = _plain(entry.get("paper"))
      if paper is not None:
        paper = dict(paper)
        bad = sorted(set(paper) - set(PAPER_FIELDS))
        top1 = paper.get("top1")
        if bad or not paper.get("source") or (top1 is not None and (
            isinstance(top1, bool) or not isinstance(top1, (int, float)) or not 0 <= top1 <= 100)):
          raise ValueError(f"--config {args.config!r}: the paper value of {_label(entry['spec'])!r} is {paper!r}; "
                           "expected dict(top1=<published top-1 in %, or None>, source=<paper, table, model>)")
      out.append((entry["spec"], paper))
    else:
      out.append((entry, None))
  return out


def reduction_specs(args: argparse.Namespace) -> list[tuple[str, Any]]:
  """[(label, built method or calibration spec)], "none" first and once; every spec built (and checked) now."""
  out = [("none", None)]
  for spec, _ in config_rows(args):
    label = _label(spec)
    try:
      method = reductions.build(spec)
    except ValueError as e:
      raise ValueError(f"--reduction {label!r}: {e}") from None
    if method is not None and label not in [l for l, _ in out]:
      out.append((label, method))
  return out


def paper_values(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
  """Row label ("none" for dense) -> the config's published value dict(top1, source) for that row."""
  return {_label(spec): paper for spec, paper in config_rows(args) if paper is not None}


def left_out(args: argparse.Namespace) -> dict[str, str]:
  """The config's `left_out`: registry method -> why the table has no row for it (printed under the table)."""
  config = _config_of(args)
  reasons = dict(_plain(config.get("left_out") or {})) if config is not None else {}
  unknown = sorted(set(reasons) - set(reductions.METHODS))
  if unknown:
    raise ValueError(f"--config {args.config!r}: left_out names {unknown}, which are no registry methods "
                     f"({sorted(reductions.METHODS)})")
  return {name: str(reason) for name, reason in reasons.items()}


def _is_run(directory: str) -> bool:
  return os.path.isfile(os.path.join(directory, "config.json")) and os.path.isdir(os.path.join(directory, "checkpoints"))


def resolve_out(out: str | None, workdir: str | None) -> str:
  """--out, checked: never inside a run's workdir except its evaluate/ folder (default for a workdir model)."""
  if not out:
    if workdir is None:
      raise ValueError("--out: name the output directory (only a workdir model has a default, <workdir>/evaluate)")
    out = os.path.join(workdir, "evaluate")
  real = os.path.realpath(out)
  directory = real
  while True:
    if _is_run(directory):
      allowed = os.path.join(directory, "evaluate")
      if real != allowed and not real.startswith(allowed + os.sep):
        raise ValueError(f"--out {out!r} is inside the run {directory!r}, which is not tokax.evaluate's to write: "
                         f"use {allowed} (the default for that run) or a directory outside the run")
      break
    parent = os.path.dirname(directory)
    if parent == directory:
      break
    directory = parent
  return out


def _percent(value: float | None, random_weights: bool) -> str:
  if value is None:
    return "-"
  return f"{100 * value:.1f}%" + (" (random weights)" if random_weights else "")


def paper_delta(row: Mapping[str, Any]) -> float | None:
  """tokax's top-1 minus the row's published top-1, in points (None without both)."""
  paper = row.get("paper") or {}
  if paper.get("top1") is None or row.get("top1") is None:
    return None
  return 100 * row["top1"] - paper["top1"]


def to_markdown(rows: Sequence[Mapping[str, Any]], *, random_weights: bool = False) -> str:
  """The table: method, tokens after the last block, GFLOPs/img, images/s, top-1, top-5, agreement with dense;
  and the published top-1 and tokax's difference from it when a row has a paper value (a --config's rows)."""
  papers = any(row.get("paper") for row in rows)
  lines = ["| method | tokens (last block) | GFLOPs/img | images/s | top-1 | top-5 | agreement with dense |"
           + (" paper top-1 | top-1 - paper |" if papers else ""),
           "|---|---|---|---|---|---|---|" + ("---|---|" if papers else "")]
  for row in rows:
    tokens = row["tokens"] if isinstance(row["tokens"], int) else f"{row['tokens']:.1f} (mean valid)"
    speed = "-" if row.get("images_per_s") is None else f"{row['images_per_s']:,.1f}"
    line = (f"| {row['method']} | {tokens} | {row['gflops_per_image']:.3f} | {speed} | "
            f"{_percent(row['top1'], random_weights)} | {_percent(row['top5'], random_weights)} | "
            f"{100 * row['agreement']:.1f}% |")
    if papers:
      published = (row.get("paper") or {}).get("top1")
      delta = None if random_weights else paper_delta(row)
      line += (f" {'-' if published is None else f'{published:.2f}%'} |"
               f" {'-' if delta is None else f'{delta:+.2f}'} |")
    lines.append(line)
  return "\n".join(lines)


def first_images(data: EvalData, count: int) -> np.ndarray:
  """The first `count` evaluation images (padding dropped), as the batches give them."""
  out = []
  for batch in data.batches():
    out.extend(np.asarray(batch["image"])[np.asarray(batch["mask"], bool)][:count - len(out)])
    if len(out) >= count:
      break
  return np.stack(out)


def calibration_batches(data: EvalData, loaded: Loaded, count: int) -> list[jax.Array]:
  """The first `count` eval batches' images (padding dropped), as model inputs: what calibrate_dtome reads."""
  input_fn, out = loaded.input_fn(), []
  for batch in data.batches():
    images = np.asarray(batch["image"])[np.asarray(batch["mask"], bool)]
    if len(images):
      out.append(input_fn(jnp.asarray(images)))
    if len(out) >= count:
      break
  return out


def evaluate(args: argparse.Namespace, *, progress: bool = True) -> dict[str, Any]:
  """Runs the evaluation of parsed `args`; writes the outputs and returns results.json's dict plus "table",
  "out" and "predictions" (row method -> (N,) int32 top-1 predictions, in the data's order)."""
  from tokax.bench import measure, tradeoff

  specs = reduction_specs(args)
  papers, omitted = paper_values(args), left_out(args)
  workdir = args.model if os.path.isdir(args.model) else None
  if workdir is not None:
    from tokax.train.tasks import base
    base.read_config(workdir)  # a directory without a run fails here, before --out is checked
  out = resolve_out(args.out, workdir)
  loaded = load_model(args)
  data = load_data(args, loaded)
  check_classes(data, loaded, args.data or "the run's data")
  dtype_name = resolve_dtype(args.dtype)
  dtype = jnp.dtype(dtype_name)
  model = loaded.model.clone(dtype=dtype, attention=None if args.attention == "auto" else args.attention)
  variables = jax.device_put(measure.cast_floating(loaded.variables, dtype))
  input_fn = loaded.input_fn()
  bar = None
  if progress:
    from tqdm import tqdm

    steps = -(-data.num_examples // args.batch_size)
    bar = lambda label: (lambda it: tqdm(it, total=steps, desc=label, unit="batch", leave=False))
  rows: list[dict[str, Any]] = []
  predictions: dict[str, np.ndarray] = {}  # (N,) top-1 per row; returned, not written
  dense_predictions = None
  bench_batch = args.bench_batch_size or args.batch_size
  posts = sum(measure.is_post(method) for _, method in specs)
  arch = model.arch
  tokens = (model.image_size // arch.patch_size) ** 2 + 1
  # one pass of the dense model gives the dense row and the encoder outputs every post row reduces, when they fit
  share = posts > 0 and data.num_examples * tokens * arch.width * dtype.itemsize <= args.encoder_cache_gb * 2 ** 30
  assigns: dict[str, np.ndarray] = {}  # row method -> (merge_images, N0) token assignment (--merge_images)
  notes: dict[str, str] = {}
  calibrate = [label for label, method in specs if getattr(method, "needs_calibration", False)]
  images = calibration_batches(data, loaded, args.calibration_batches) if calibrate else []
  for i, (label, method) in enumerate(specs):  # calibrate first: every row's executable is then compiled at once
    if label in calibrate:
      specs[i] = (label, reductions.calibrate_dtome(model, variables, images, method))
      notes[label] = f"calibrated on the first {sum(len(b) for b in images)} eval images (labels unused)"
  executables = {}  # label -> the row's executable (None: the encoder pass's)
  first = next(iter(data.batches()))["image"]
  if bench_batch == first.shape[0]:  # one executable per row for the accuracy pass and the timing
    direct = [(None, None)] if share else []  # rows read off the encoder pass have none of their own
    direct += [(label, method) for label, method in specs
               if not (share and (method is None or measure.is_post(method)))]
    programs = [measure.encoder_row_forward(model, input_fn, args.merge_images) if label is None else
                measure.row_forward(model, method, input_fn, args.merge_images) for label, method in direct]
    try:
      compiled = measure.compile_programs(programs, variables, first.shape, first.dtype)
      executables = {label: c for (label, _), c in zip(direct, compiled)}
    except flax.errors.ScopeParamNotFoundError:
      pass  # the row that lacks its parameters fails below, naming itself
  encoder = None  # the dense model's pass: the dense row's outputs and the encoder outputs the post rows reduce
  if share:
    encoder = measure.encoder_pass(model, variables, data.batches, input_fn=input_fn, bench_batch_size=bench_batch,
                                   dtype=dtype, warmup=args.warmup, repeats=args.repeats, keep_assign=args.merge_images,
                                   executable=executables.get(None), time_on_data=args.timing == "data")
  for label, method in specs:
    note = notes.get(label)
    try:
      row = measure.reduction_row(model, variables, method, data.batches, dense_predictions,
                                  method="dense" if method is None else label, input_fn=input_fn,
                                  bench_batch_size=bench_batch, dtype=dtype, warmup=args.warmup, repeats=args.repeats,
                                  progress=bar and bar(label), encoder=encoder, keep_assign=args.merge_images,
                                  executable=executables.get(label), time_on_data=args.timing == "data")
    except flax.errors.ScopeParamNotFoundError as e:  # a method with learned modules (Slim) on a model without them
      raise ValueError(f"--reduction {label}: the model has no parameters for {type(method).__name__}'s modules "
                       f"({e}); it learns them in training: train with --config.reduction={label} and evaluate "
                       "that run") from None
    if dense_predictions is None:
      dense_predictions = row["predictions"]
    predictions[row["method"]] = row.pop("predictions")
    if args.merge_images:
      assigns[row["method"]] = row.pop("assign")
    row.update(spec=label, note=note)
    if label in papers:
      row["paper"] = papers[label]
    rows.append(row)
    print(f"[{len(rows)}/{len(specs)}] {row['method']}: {row['tokens']} tokens, top-1 {_percent(row['top1'], loaded.random_weights)}, "
          f"{row['images_per_s'] or 0:,.0f} images/s", file=sys.stderr, flush=True)
  device = jax.devices()[0].device_kind
  caption = (f"{loaded.description}: ViT {model.variant} (width {arch.width}, depth {arch.depth}) at "
             f"{model.image_size} px on {data.description}; images/s at batch {args.bench_batch_size or args.batch_size}, "
             f"{dtype_name}, on {device} (jax {jax.__version__})"
             + ("; random weights: accuracy is not meaningful" if loaded.random_weights else ""))
  if data.bad_examples is not None:
    caption += f"; {data.bad_examples()} images that do not decode left out (--skip_bad_images)"
  result = {"caption": caption, "model": args.model, "data": data.description, "device": device,
            "random_weights": loaded.random_weights, "num_examples": data.num_examples, "rows": rows}
  if data.bad_examples is not None:
    result["bad_examples"] = data.bad_examples()
  if omitted:
    result["left_out"] = omitted
  table = to_markdown(rows, random_weights=loaded.random_weights)
  notes = [f"{row['method']}: {row['note']}" for row in rows if row.get("note")]
  notes += [f"{row['method']} paper top-1: {row['paper']['source']}" for row in rows if row.get("paper")]
  notes += [f"left out: {name}: {reason}" for name, reason in omitted.items()]
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as f:
    json.dump(result, f, indent=1)
  with open(os.path.join(out, "results.md"), "w", encoding="utf-8") as f:
    f.write("\n".join([caption, "", table, *notes]) + "\n")
  tradeoff.plot_accuracy_vs_gflops(rows, os.path.join(out, "accuracy_vs_gflops.png"), title=data.description)
  if args.merge_images:
    tradeoff.plot_merge_maps(first_images(data, args.merge_images), {k: v for k, v in assigns.items() if k != "dense"},
                             model.arch.patch_size, os.path.join(out, "merges.png"))
  result.update(table=table, notes=notes, out=out, predictions=predictions)
  return result


# --- command line --------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m tokax.evaluate", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", help="a tokax run's workdir, a timm .safetensors/.pth file (with --timm_name), a "
                      "big_vision .npz, pretrained:<name> (a model that ships with tokax, or a timm name with a "
                      "weights tag: its weights from the Hugging Face hub or its cache) or timm:<name> (random "
                      "weights); required unless --config sets it")
  parser.add_argument("--pretrained_dir", help="where pretrained:<name>'s NAME.json / NAME.safetensors are "
                      "(default: the models that ship with tokax)")
  parser.add_argument("--timm_name", help="timm architecture of a .safetensors/.pth file, e.g. vit_small_patch16_224")
  parser.add_argument("--variant", help="ViT variant of an .npz (e.g. B/16); default: read off its shapes")
  parser.add_argument("--image_size", type=int, help="default: read off the weights' position embedding")
  parser.add_argument("--num_classes", type=int, help="default: read off the weights' head")
  parser.add_argument("--data", help=f"{'/'.join(embedded.DATASETS)}, folder:<root> or tfds:<name>[:split]; "
                      "default for a workdir: its own data")
  parser.add_argument("--split", help="default: test (embedded, tfds, a workdir's data) or val (folder)")
  parser.add_argument("--data_dir", help="tfds data_dir")
  parser.add_argument("--num_examples", type=int, help="evaluate the first N examples only")
  parser.add_argument("--reduction", action="append", help="a tokax.reduction spec (tome:8, evit:0.7, ...); repeat")
  parser.add_argument("--config", help="a config file.py[:arg] or tokax:<name>.py[:arg] whose get_config() sets "
                      "these flags' values (fields named as the flags) and `reductions` (rows, with their published "
                      "top-1); --config.<field>=value overrides a field, and a flag given here overrides both")
  parser.add_argument("--out", help="output directory (default for a workdir: <workdir>/evaluate)")
  parser.add_argument("--batch_size", type=int, default=64, help="evaluation batch")
  parser.add_argument("--bench_batch_size", type=int, help="images/s timing batch (default: --batch_size)")
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "auto"],
                      help="auto: bfloat16 on a GPU / TPU, float32 on a CPU")
  parser.add_argument("--attention", default="auto", choices=["auto", "xla", "cudnn"])
  parser.add_argument("--calibration_batches", type=int, default=4, help="eval batches that calibrate dtome")
  parser.add_argument("--num_threads", type=int, default=8, help="input pipeline threads (folder / tfds)")
  parser.add_argument("--skip_bad_images", action="store_true", help="folder data: leave out (and count) images "
                      "that do not decode instead of failing on the first")
  parser.add_argument("--allow_unknown_keys", action="store_true", help="a big_vision .npz: load it even though it "
                      "has arrays the ViT does not read (they are dropped)")
  parser.add_argument("--encoder_cache_gb", type=float, default=2.0,
                      help="the dense row and the post-encoder reducers share one pass of the dense model when its "
                      "encoder outputs fit in this many GiB of host memory (0: each row runs the encoder)")
  parser.add_argument("--timing", default="random", choices=["random", "data"],
                      help="images/s from --repeats extra calls on random batches (random) or from the accuracy "
                      "pass's own calls (data: no extra calls; the first is left out)")
  parser.add_argument("--merge_images", type=int, default=0,
                      help="also write merges.png: the token groups every method leaves on the first N images")
  parser.add_argument("--no_progress", action="store_true", help="no progress bar")
  return parser


_CONFIG_ONLY = ("reductions", "left_out")  # config fields that are no flag
_NOT_IN_CONFIG = ("config", "reduction")  # flags a config does not set (its rows are `reductions`)


def _config_overrides(extra: Sequence[str]) -> tuple[list[tuple[str, str]], list[str]]:
  """(["--config.a.b=v" / "--config.a.b v" as (a.b, v)], the arguments that are neither)."""
  overrides, unknown, i = [], [], 0
  while i < len(extra):
    item = extra[i]
    if item.startswith("--config.") and "=" in item:
      key, _, value = item[len("--config."):].partition("=")
      overrides.append((key, value))
    elif item.startswith("--config.") and i + 1 < len(extra) and not extra[i + 1].startswith("--"):
      overrides.append((item[len("--config."):], extra[i + 1]))
      i += 1
    else:
      unknown.append(item)
    i += 1
  return overrides, unknown


def _override(config: Any, key: str, text: str) -> None:
  """config.<key> = text, typed by the field's current value (ml_collections' --config.x=value)."""
  import ast

  *parents, name = key.split(".")
  node = config
  for part in parents:
    node = node[part]
  if name not in node:
    raise ValueError(f"--config.{key}: the config has no field {key!r}; it has {sorted(node)}")
  current = node[name]
  if isinstance(current, str):
    value: Any = text
  elif isinstance(current, bool):
    if text.lower() not in ("true", "false", "1", "0"):
      raise ValueError(f"--config.{key}={text}: expected true or false")
    value = text.lower() in ("true", "1")
  else:
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = None if text == "None" else text
  try:
    node[name] = value
  except TypeError as e:
    raise ValueError(f"--config.{key}={text}: {e}") from None


def _given_flags(argv: Sequence[str]) -> set[str]:
  """The dests of the flags `argv` names itself (abbreviations included)."""
  parser = _parser()
  for action in parser._actions:
    action.default = argparse.SUPPRESS
  given, _ = parser.parse_known_args(list(argv))
  return set(vars(given))


def apply_config(args: argparse.Namespace, argv: Sequence[str], overrides: Sequence[tuple[str, str]]) -> None:
  """Loads --config (with its --config.x overrides) into args.config_values and takes every field it sets whose
  flag `argv` does not give itself. A field that is no flag is an error naming the flags."""
  from tokax.train.config_utils import load_config_file

  config = load_config_file(args.config)
  for key, text in overrides:
    _override(config, key, text)
  flags = {a.dest: a for a in _parser()._actions if a.dest not in ("help", *_NOT_IN_CONFIG)}
  unknown = sorted(set(config) - set(flags) - set(_CONFIG_ONLY))
  if unknown:
    raise ValueError(f"--config {args.config!r}: fields {unknown} are no tokax.evaluate flags; a config sets "
                     f"{sorted(flags)} and {list(_CONFIG_ONLY)}")
  given = _given_flags(argv)
  for key in sorted(set(config) & set(flags)):
    value, action = config[key], flags[key]
    if value is not None and action.type in (int, float) and (
        isinstance(value, bool) or not isinstance(value, (int, float) if action.type is float else int)):
      raise ValueError(f"--config {args.config!r}: {key}={value!r}; expected {action.type.__name__} (as --{key})")
    if key not in given:
      setattr(args, key, value)
  args.config_values = config


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  """The flags of `argv` (default sys.argv[1:]); with --config, the config's values where no flag is given."""
  parser = _parser()
  argv = list(sys.argv[1:] if argv is None else argv)
  args, extra = parser.parse_known_args(argv)
  overrides, unknown = _config_overrides(extra)
  if unknown:
    parser.error(f"unrecognized arguments: {' '.join(unknown)}")
  args.config_values = None
  if overrides and not args.config:
    parser.error(f"--config.{overrides[0][0]} overrides a field of --config, which is not given")
  if args.config:
    apply_config(args, argv, overrides)
  if not args.model:
    parser.error("--model is required (or a --config that sets model)")
  for action in parser._actions:
    value = getattr(args, action.dest, None)
    if action.choices is not None and value is not None and value not in action.choices:
      parser.error(f"--{action.dest} {value!r} (from --config): expected one of {list(action.choices)}")
  if args.merge_images < 0:
    parser.error(f"--merge_images must be >= 0; got {args.merge_images}")
  for name in ("num_examples", "batch_size", "repeats", "calibration_batches", "image_size", "num_classes"):
    value = getattr(args, name)
    if value is not None and value < (0 if name == "num_classes" else 1):
      parser.error(f"--{name} must be positive; got {value}")
  return args


def resolve_dtype(name: str) -> str:
  """--dtype: "auto" is bfloat16 on a GPU or TPU (the papers time in half precision), float32 on a CPU."""
  if name != "auto":
    return name
  return "float32" if jax.default_backend() == "cpu" else "bfloat16"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Parses argv, evaluates, prints the caption and the table; returns evaluate()'s result."""
  args = parse_args(argv)
  result = evaluate(args, progress=not args.no_progress)
  print("\n".join([result["caption"], "", result["table"], *result["notes"]]), flush=True)
  print(f"outputs in {result['out']}")
  return result


if __name__ == "__main__":
  try:
    main()
  except ValueError as e:  # bad input: the message names the thing and the fix
    sys.exit(f"python -m tokax.evaluate: error: {e}")
