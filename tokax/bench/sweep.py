r"""Every reduction method at several strengths on one model: one table and one plot.

  python -m tokax.bench.sweep --config configs/sweep_vit_b16.py --workdir /tmp/sweep_b16
  python -m tokax.bench.sweep --config configs/sweep_cluttered_digits.py --workdir /tmp/sweep_digits

For each (method, strength) row, tokax.bench.measure.reduction_row (the row of tokax.evaluate and
the main job): tokens after the last block (the mean valid count for masked methods), GFLOPs per
image (XLA's count of the forward with XLA attention lowered for the CPU, because XLA:GPU does not
count cuDNN's custom calls), images/s of the configured forward (median of timed calls, rotating
random batches), and with an eval split top-1, top-5 and the agreement with the dense row's
predictions. Added here: the speed-up over dense and the speed-up that the GFLOPs predict.

Methods: config.methods (and config.post_methods, read the same way) map a registry name
(tokax.reduction.METHODS), or "<name>_noprop" for the method without proportional attention, to
its strengths: values of the class's strength_field (tome r, evit keep_rate, ...). The method's
placement decides between block rows and post-encoder rows; a method that needs calibration
(dtome) is calibrated on the calibration split (random batches without a checkpoint).

Where the time goes (rows of the configured "overhead" strengths): the same per-block token
counts are also run with the plan replaced by slicing the token array ("bound" models, bench
only), once with the attention scores the method asks for and once without. Then
  bound speed-up = dense / bound          (the most any plan could give with these token counts)
  plan ms  = method - bound with scores   (computing and applying the plans)
  score ms = bound with scores - bound    (getting the metric from attention: probabilities
                                           materialised where the method needs them)
Post-encoder reducers (DivPrune, ToDRE, DCT, FasterVLM's [CLS] selection) leave the encoder's
compute unchanged; they get their own rows: the reducer's time on the encoder's output tokens
against the dense forward, and (measure.reduction_row, measure.post_forward) the tokens it keeps,
the GFLOPs of encoder + reducer + head and, with an eval split, the head's top-1 on its tokens.

Trained rows (config.trained: name -> dict(workdir) of a finished fine-tuning run, e.g. SiT,
MCTF consistency, DeiT distillation): each run's model with the reduction it was trained with, restored
by tokax.train.restore.load_run (its config.json and latest checkpoint) and measured like the off-the-shelf rows, on the same eval split; their
method reads "<name> (trained)" and they carry fine_tuned=True. The closing lines compare each trained
row with the best off-the-shelf row at no more GFLOPs, and ToMe with and without proportional attention
("tome" vs "tome_noprop") at each r.

Writes sweep.json, sweep.md and sweep.png into --workdir and prints the tables.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import textwrap
from typing import Any, Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tokax.bench import measure
from tokax.models.vit import ViT
from tokax.reduction import METHODS, Tokens, build, calibrate_dtome
from tokax.reduction.base import layer_scores

NOPROP = "_noprop"  # "<method>_noprop": the method with prop_attn=False (e.g. tome_noprop)


# --- methods at a strength ---------------------------------------------------------------------


def method_spec(method: str, strength: Any) -> dict[str, Any]:
  """The registry spec of a sweep method at `strength`: METHODS[method] with its strength_field set.

  A method is a registry name (tokax.reduction.METHODS), or "<name>_noprop" for a method with a
  prop_attn field run without proportional attention ("tome_noprop").
  """
  name, noprop = (method[:-len(NOPROP)], True) if method.endswith(NOPROP) else (method, False)
  if name not in METHODS:
    raise ValueError(f"sweep config: unknown method {method!r}; expected a registry name {sorted(METHODS)}, "
                     f"optionally with the suffix {NOPROP!r}")
  cls = METHODS[name]
  spec = {"name": name, cls.strength_field: strength}
  if noprop:
    if "prop_attn" not in {f.name for f in dataclasses.fields(cls)}:
      raise ValueError(f"sweep config: {method!r}: {cls.__name__} has no prop_attn field to turn off")
    spec["prop_attn"] = False
  return spec


def method_order(method: str) -> int:
  """Registry order (ToMe first), so a sweep cut short keeps the ToMe rows."""
  names = list(METHODS)
  name = method[:-len(NOPROP)] if method.endswith(NOPROP) else method
  return 2 * names.index(name) + method.endswith(NOPROP) if name in names else 2 * len(names)


def with_matching(reduction: Any, implementation: str) -> Any:
  """`reduction` with its bipartite matching run by `implementation` ("xla" or "pallas"), where it has one."""
  if any(f.name == "matching" for f in dataclasses.fields(reduction)):
    return dataclasses.replace(reduction, matching=implementation)
  return reduction


# --- the same token counts with no plan (bench only) ---------------------------------------------


@dataclasses.dataclass(frozen=True)
class ScheduleBound:
  """Bench only: keeps a method's per-block token counts, but drops the surplus tokens by slicing.

  What a method would cost if its plans were free: the blocks see the same token counts at the
  same places. With `scores` (or placement "pre", which reads the attention probabilities) the
  attention also produces the metric the method consumes, so the difference to the method is
  the plan's cost alone.

  Attributes:
    num_tokens: tokens entering the first block.
    counts: tokens after each block.
    placement: "mid", "pre" or "end" (tokax.reduction.base).
    layer_scores_: attention scores each block requests ("mid" only), as the method's layer_scores.
    prop_attn: proportional attention once the count dropped, as the method.
  """
  num_tokens: int
  counts: tuple[int, ...]
  placement: str = "mid"
  layer_scores_: tuple[tuple[str, ...], ...] = ()
  prop_attn: bool = False

  @property
  def scores(self) -> tuple[str, ...]:
    return tuple(sorted({name for names in self.layer_scores_ for name in names}))

  def layer_scores(self, *, layer: int, depth: int) -> tuple[str, ...]:
    return self.layer_scores_[layer] if self.layer_scores_ else ()

  def token_counts(self, num_tokens: int, depth: int, num_prefix: int = 1) -> tuple[int, ...]:
    del num_tokens, depth, num_prefix
    return self.counts

  def _before(self, layer: int) -> int:
    return self.counts[layer - 1] if layer else self.num_tokens

  @staticmethod
  def _keep(tokens: Tokens, n: int) -> Tokens:
    return tokens if n == tokens.num_tokens else tokens.replace(x=tokens.x[:, :n], size=tokens.size[:, :n])

  def reduce(self, tokens: Tokens, metrics: dict[str, jax.Array], *, layer: int, depth: int) -> Tokens:
    return self._keep(tokens, self.counts[layer])

  def attention_layer(self, *, layer: int, depth: int) -> bool:
    return self.counts[layer] < self._before(layer)

  def reduce_with_attention(self, tokens: Tokens, probs: jax.Array, *, layer: int, depth: int):
    n = self.counts[layer]
    return self._keep(tokens, n), probs[..., :n, :n]

  def module(self, *, layer: int, depth: int) -> Callable[..., Tokens] | None:
    n = self.counts[layer]
    return None if n == self._before(layer) else (lambda tokens, deterministic=True: self._keep(tokens, n))


layer_token_counts = measure.block_counts  # token slots after each block of a model (its own reduction); shapes only


def bounds(model: ViT, counts: tuple[int, ...], num_tokens: int) -> tuple[ViT, ViT]:
  """(with scores, without scores) ScheduleBound models for `model`'s reduction and token counts."""
  reduction = model.reduction
  placement = reduction.placement
  prop_attn = bool(getattr(reduction, "prop_attn", False))
  if reduction.variable_tokens:  # masked slots: the count never changes, the bound is the dense model
    return model.clone(reduction=None), model.clone(reduction=None)
  depth = len(counts)
  scores = tuple(layer_scores(reduction, layer=i, depth=depth) for i in range(depth)) if placement == "mid" else ()
  with_scores = ScheduleBound(num_tokens, counts, placement, scores, prop_attn)
  # Without scores, a "pre" method's count change moves to the block's middle: the attention then
  # runs on the block's input tokens (as MCTF's, which merges the probabilities, not the keys).
  plain = ScheduleBound(num_tokens, counts, "mid" if placement == "pre" else placement, (), prop_attn)
  return model.clone(reduction=with_scores), model.clone(reduction=plain)


# --- measurements --------------------------------------------------------------------------------


forward_gflops = measure.vit_forward_gflops


def params_for(model: ViT, params: Any, image_shape: Sequence[int]) -> tuple[Any, bool]:
  """`params` completed for `model` (a reducer with parameters, e.g. Slim, gets fresh ones).

  Returns (params, trained): trained is False when parameters had to be initialised.
  """
  import flax.traverse_util as traverse

  shapes = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, *image_shape), jnp.float32))
  want, have = traverse.flatten_dict(shapes), traverse.flatten_dict(params)
  missing = [k for k in want if k not in have]
  if not missing:
    return params, True
  fresh = traverse.flatten_dict(jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, *image_shape), jnp.float32)))
  dtype = jax.tree.leaves(params)[0].dtype
  merged = {k: have[k] if k in have else fresh[k].astype(dtype) for k in want}
  return traverse.unflatten_dict(merged), False


@dataclasses.dataclass(frozen=True)
class Settings:
  """How rows are measured: timing batch (B, H, W, 3), its dtype, warm-up and timed calls; the eval split.

  data: the eval split (images in [0, 1]) for top-1 / top-5 / agreement, or None (random weights);
  dense_predictions: the dense row's (N,) top-1 predictions once it is measured (the agreement column).
  """
  batch_shape: tuple[int, ...]
  dtype: Any
  warmup: int
  repeats: int
  data: Any = None
  eval_batch_size: int = 64
  dense_predictions: np.ndarray | None = None

  def row(self, model: ViT, params: Any, reduction: Any, *, method: str, timed: bool = True) -> dict[str, Any]:
    """measure.reduction_row of `model` with `reduction` in these settings (without an eval split: no accuracy keys)."""
    row = measure.reduction_row(model, params, reduction, self.data, self.dense_predictions, method=method,
                                eval_batch_size=self.eval_batch_size, bench_batch_size=self.batch_shape[0],
                                dtype=self.dtype, warmup=self.warmup, repeats=self.repeats, timed=timed,
                                image_shape=self.batch_shape[1:])
    if self.data is None:  # random weights: nothing to be accurate about
      for key in ("top1", "top5", "agreement", "num_examples"):
        row.pop(key)
    return row

  def time(self, model: ViT, params: Any) -> dict[str, float]:
    """{"images_per_s", "median_ms"} of `model` (with its reduction) timed as a row's forward (measure.time_row)."""
    return measure.time_row(model, params, model.reduction, self.batch_shape, self.dtype, warmup=self.warmup,
                            repeats=self.repeats)


def block_row(model: ViT, params: Any, settings: Settings, *, method: str, strength: Any, dense: dict[str, Any],
              overhead: bool, trained: bool = True, with_predictions: bool = False) -> dict[str, Any]:
  """One table row for `model` (a ViT with its reduction); `dense` is the dense row of the same run.

  Tokens, GFLOPs, images/s and (with an eval split) top-1, top-5 and agreement with dense are
  measure.reduction_row's; added here: the speed-ups against `dense` and, with `overhead`, the
  no-plan bounds. trained=False (a reducer with freshly initialised parameters): no accuracy.
  with_predictions: the row keeps reduction_row's (N,) "predictions" (pop them before saving).
  """
  measured = settings.row(model, params, model.reduction, method=method)
  predictions = measured.pop("predictions")
  row = {"method": method, "strength": strength, **{k: v for k, v in measured.items() if k != "method"},
         "trained": trained}
  if with_predictions:
    row["predictions"] = predictions
  if not trained and "top1" in row:
    row.update(top1=None, top5=None, agreement=None)
  if dense:
    row["speedup"] = row["images_per_s"] / dense["images_per_s"]
    row["predicted_speedup"] = dense["gflops_per_image"] / row["gflops_per_image"]
    row["speedup_vs_predicted"] = row["speedup"] / row["predicted_speedup"]
  if overhead:
    image_shape = settings.batch_shape[1:]
    num_tokens = layer_token_counts(model.clone(reduction=None), params, image_shape)[0]
    with_scores, plain = bounds(model, tuple(row["layer_tokens"]), num_tokens)
    scored_ms = settings.time(with_scores, params)["median_ms"]
    plain_ms = settings.time(plain, params)["median_ms"]
    if dense:
      row["bound_speedup"] = dense["median_ms"] / plain_ms
    row.update(bound_ms=plain_ms, bound_scores_ms=scored_ms, plan_ms=row["median_ms"] - scored_ms,
               score_ms=scored_ms - plain_ms, plan_fraction=(row["median_ms"] - scored_ms) / row["median_ms"])
  return row


def post_row(model: ViT, params: Any, reducer: Any, settings: Settings, *, method: str, strength: Any,
             dense_ms: float) -> dict[str, Any]:
  """A post-encoder reducer on `model`'s dense encoder output.

  reducer_ms: the reducer alone (measure.call_seconds) on (B, tokens, width) random tokens with a
  random [CLS] attention row; tokens and GFLOPs (and, with an eval split, top-1 / top-5 / agreement
  with dense of the head on the pooled reduced tokens, measure.post_forward) from measure.reduction_row.
  """
  batch, width = settings.batch_shape[0], model.arch.width
  num_tokens = layer_token_counts(model, params, settings.batch_shape[1:])[-1]  # the dense encoder's output
  kx, ks = jax.random.split(jax.random.key(2))
  x = jax.random.normal(kx, (batch, num_tokens, width), jnp.float32).astype(settings.dtype)
  cls = jax.nn.softmax(jax.random.normal(ks, (batch, num_tokens), jnp.float32), axis=-1)
  forward = jax.jit(lambda x, cls: reducer(Tokens.create(x), {"cls": cls}))
  jax.block_until_ready(forward(x, cls))  # compiles
  ms = float(np.median(measure.call_seconds(lambda args: forward(*args), [(x, cls)], warmup=0,
                                            repeats=settings.repeats))) * 1e3
  row = settings.row(model, params, reducer, method=method, timed=False)
  accuracy = {k: row[k] for k in ("top1", "top5", "agreement", "num_examples") if k in row}
  return {"method": method, "strength": strength, "tokens": row["tokens"], "reducer_ms": ms,
          "fraction_of_dense": ms / dense_ms, "gflops_per_image": row["gflops_per_image"], **accuracy}


# --- the sweep -------------------------------------------------------------------------------------


@dataclasses.dataclass
class Setup:
  """What the sweep runs on: the dense model, its params, and (with a checkpoint) the eval data."""
  model: ViT
  params: Any
  description: str
  eval_data: Any = None  # tokax.data.offline.ArrayDataset, images in [0, 1]
  calibration_images: np.ndarray | None = None  # (N, H, W, 3) in [0, 1]


def _overrides(config: Any) -> dict[str, Any]:
  return dict(dtype=jnp.dtype(config.dtype), attention=None if config.attention == "auto" else config.attention,
              gelu_approximate=config.gelu_approximate)


def setup_from_config(config: Any) -> Setup:
  """The model of config.checkpoint (trained, or restored from its workdir) or a random config.model.

  With checkpoint.train False the workdir's latest checkpoint is evaluated as it is (a run stopped
  early included; the run is rebuilt from its config.json); otherwise the run of checkpoint.config
  is trained (or finished) there first.
  """
  dtype = jnp.dtype(config.dtype)
  overrides = _overrides(config)
  train = config.checkpoint.get("train", True)
  if config.checkpoint.workdir or (train and config.checkpoint.get("config")):
    from tokax.train import config_utils, run, restore
    from tokax.train.tasks import classifier

    if not config.checkpoint.workdir:
      raise ValueError("sweep config: checkpoint.workdir is empty; give the training run's --workdir "
                       "(it is trained there first if it holds no finished run)")
    if train:
      if not config.checkpoint.get("config"):
        raise ValueError("sweep config: checkpoint.train=True trains checkpoint.config into checkpoint.workdir; "
                         "name the config file, or set checkpoint.train=False to evaluate the workdir's run")
      train_config = config_utils.load_config_file(config.checkpoint.config)
      result = run.train(train_config, config.checkpoint.workdir)
      model, params, step = result.model, result.params, result.step
    else:
      restored = restore.load_run(config.checkpoint.workdir)
      train_config, model, params, step = restored.config, restored.model, restored.variables, restored.step
    model = model.clone(reduction=None, **overrides)
    evaluation = classifier.load_split(train_config, config.eval_split)
    calibration = classifier.load_split(train_config, config.calibration_split)
    return Setup(model, measure.cast_floating(params, dtype),
                 f"{train_config.data.name} checkpoint at step {step} ({config.checkpoint.workdir})",
                 evaluation, calibration.images)
  model = ViT(**{k: v for k, v in config.model.items()}, **overrides)
  image = jnp.zeros((1, model.image_size, model.image_size, 3), jnp.float32)
  params = measure.cast_floating(jax.jit(model.init)(jax.random.key(config.seed), image), dtype)
  return Setup(model, params, "random weights")


def _strengths(values: Any) -> list[Any]:
  return list(values) if isinstance(values, (list, tuple)) else [values]


def _overhead_strengths(strengths: list[Any], mode: str) -> list[Any]:
  if mode == "all":
    return strengths
  if mode == "middle":
    return [strengths[len(strengths) // 2]] if strengths else []
  if mode == "none":
    return []
  raise ValueError(f"sweep config: overhead must be 'middle', 'all' or 'none'; got {mode!r}")


def reduction_label(reduction: Any) -> str:
  """A short strength label for a trained run's reduction: "r=8", "keep 0.5 x 4 stages", "-" (none)."""
  if reduction is None:
    return "-"
  if hasattr(reduction, "keeping_ratio"):  # Slim
    stages = reduction.stage_blocks
    return f"keep {reduction.keeping_ratio}" + (f" x {len(stages)} stages" if stages else " x 4 stages")
  r = getattr(reduction, "r", None)
  return f"r={r}" if r is not None else type(reduction).__name__


def trained_rows(config: Any, setup: Setup, settings: Settings, dense: dict[str, Any]) -> Iterable[dict[str, Any]]:
  """One row per config.trained entry with a workdir: the run's model with its own reduction, fine_tuned=True.

  Each run is rebuilt from its own config.json (tokax.train.restore.load_run); a run without a
  checkpoint (stopped before its first save) is logged and skipped.
  """
  from tokax.train import restore

  for name, spec in (config.get("trained") or {}).items():
    if spec.get("config"):
      raise ValueError(f"sweep config: trained.{name}.config is no longer needed: the run in trained.{name}.workdir "
                       f"is rebuilt from its own config.json; remove the field")
    if not spec.get("workdir"):
      continue
    try:
      restored = restore.load_run(spec.workdir)
    except restore.RunError as e:
      logging.warning("trained.%s skipped: %s", name, e)
      continue
    model, variables, step = restored.model, restored.variables, restored.step
    if model.image_size != setup.model.image_size:
      raise ValueError(f"sweep config: trained.{name} runs at {model.image_size} px, the dense checkpoint at "
                       f"{setup.model.image_size} px; the rows must share the eval images")
    model = model.clone(**_overrides(config))
    row = block_row(model, measure.cast_floating(variables, settings.dtype), settings, method=f"{name} (trained)",
                    strength=reduction_label(model.reduction), dense=dense, overhead=False)
    row.update(fine_tuned=True, run=spec.workdir, step=step)
    logging.info("%s (trained): %s", name, row)
    yield row


def run(config: Any, workdir: str) -> dict[str, Any]:
  """Runs the sweep of `config` (see configs/sweep_*.py); writes sweep.json/.md/.png into `workdir`."""
  os.makedirs(workdir, exist_ok=True)
  setup = setup_from_config(config)
  model, params = setup.model, setup.params
  depth = model.arch.depth
  image_shape = (model.image_size, model.image_size, 3)
  settings = Settings((config.batch_size, *image_shape), jnp.dtype(config.dtype), config.warmup, config.repeats,
                      setup.eval_data, config.eval_batch_size)

  def calibration_batches():
    size = config.calibration_batch_size
    if setup.calibration_images is not None:
      from tokax.train.model import normalize_images

      images = setup.calibration_images
      count = min(len(images) // size, config.calibration_batches)
      return [normalize_images(jnp.asarray(images[i * size:(i + 1) * size], settings.dtype)) for i in range(count)]
    shape = (size, *image_shape)
    return measure.random_batches(shape, settings.dtype, count=config.calibration_batches, seed=3)

  device = jax.devices()[0].device_kind
  arch = model.arch
  caption = (f"ViT {model.variant} (width {arch.width}, depth {depth}, {arch.num_heads} heads) at {model.image_size} px, "
             f"{setup.description}; batch {config.batch_size}, {config.dtype}, attention {config.attention}, "
             f"on {device} (jax {jax.__version__})")
  rows: list[dict[str, Any]] = []
  post_rows: list[dict[str, Any]] = []
  result = {"caption": caption, "device": device, "jax": jax.__version__, "rows": rows, "post_rows": post_rows,
            "config": json.loads(config.to_json_best_effort())}

  def save() -> None:  # after every row, so a sweep stopped by a time limit leaves the rows it measured
    with open(os.path.join(workdir, "sweep.json"), "w", encoding="utf-8") as f:
      json.dump(result, f, indent=1)
    with open(os.path.join(workdir, "sweep.md"), "w", encoding="utf-8") as f:
      f.write(to_markdown(result) + "\n")

  dense = block_row(model, params, settings, method="dense", strength="-", dense={}, overhead=False,
                    with_predictions=True)
  settings = dataclasses.replace(settings, dense_predictions=dense.pop("predictions"))  # every row's agreement
  dense.update(speedup=1.0, predicted_speedup=1.0, speedup_vs_predicted=1.0)
  rows.append(dense)
  logging.info("dense: %s", dense)
  for row in trained_rows(config, setup, settings, dense):
    rows.append(row)
    save()
  methods = {**config.methods, **config.get("post_methods", {})}  # post_methods: the same names, kept apart for reading
  for method in methods:  # a mistyped name fails before anything is measured
    method_spec(method, None)
  for method, values in sorted(methods.items(), key=lambda item: method_order(item[0])):
    strengths = _strengths(values)
    timed_overhead = _overhead_strengths(strengths, config.overhead)
    for strength in strengths:
      reduction = build(method_spec(method, strength))
      if reduction.placement == "post":
        post_rows.append(post_row(model, params, reduction, settings, method=method, strength=strength,
                                  dense_ms=dense["median_ms"]))
        save()
        continue
      if reduction.needs_calibration:
        reduction = calibrate_dtome(model, params, calibration_batches(), reduction)
      reduction = with_matching(reduction, config.get("matching", "xla"))
      reduced = model.clone(reduction=reduction)
      reduced_params, trained = params_for(reduced, params, image_shape)
      row = block_row(reduced, reduced_params, settings, method=method, strength=strength, dense=dense,
                      overhead=strength in timed_overhead, trained=trained)
      rows.append(row)
      save()
      logging.info("%s %s: %s", method, strength, row)

  save()
  plot(rows, os.path.join(workdir, "sweep.png"), title=caption)
  return result


# --- output ----------------------------------------------------------------------------------------


def _fmt(value: Any, spec: str, scale: float = 1.0) -> str:
  return "-" if value is None else format(value * scale, spec)


def to_markdown(result: dict[str, Any]) -> str:
  """The caption, the block-method table, the post-encoder table and the target checks."""
  rows = result["rows"]
  lines = [result["caption"], "",
           "| method | strength | tokens (last block) | GFLOPs/img | images/s | speed-up | GFLOPs-predicted | "
           "achieved / predicted | no-plan bound speed-up | plan ms (% of forward) | score ms | top-1 | top-5 | "
           "same prediction as dense |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for row in rows:
    plan = "-" if "plan_ms" not in row else f"{row['plan_ms']:.2f} ({100 * row['plan_fraction']:.1f}%)"
    untrained = not row.get("trained", True) and "top1" in row
    top1 = "untrained reducer" if untrained else _fmt(row.get("top1"), ".1f", 100)
    accuracy = f"{top1} | {_fmt(row.get('top5'), '.1f', 100)} | {_fmt(row.get('agreement'), '.1f', 100)}"
    tokens = row["tokens"] if isinstance(row["tokens"], int) else f"{row['tokens']:.1f} (mean valid)"
    lines.append(f"| {row['method']} | {row['strength']} | {tokens} | {row['gflops_per_image']:.2f} | "
                 f"{row['images_per_s']:,.0f} | {row['speedup']:.2f}x | {row['predicted_speedup']:.2f}x | "
                 f"{100 * row['speedup_vs_predicted']:.0f}% | {_fmt(row.get('bound_speedup'), '.2f')} | {plan} | {_fmt(row.get('score_ms'), '.2f')} | {accuracy} |")
  if result["post_rows"]:
    lines += ["", "Post-encoder reducers on the encoder's output tokens (the encoder's compute is the dense row's):", "",
              "| method | kept fraction | tokens out | reducer ms | % of the dense forward | GFLOPs/img | top-1 | "
              "same prediction as dense |", "|---|---|---|---|---|---|---|---|"]
    for row in result["post_rows"]:
      lines.append(f"| {row['method']} | {row['strength']} | {row['tokens']} | {row['reducer_ms']:.3f} | "
                   f"{100 * row['fraction_of_dense']:.1f}% | {_fmt(row.get('gflops_per_image'), '.2f')} | "
                   f"{_fmt(row.get('top1'), '.1f', 100)} | {_fmt(row.get('agreement'), '.1f', 100)} |")
  lines += ["", *target_checks(rows), *ordering_checks(rows)]
  return "\n".join(lines)


def ordering_checks(rows: list[dict[str, Any]]) -> list[str]:
  """The published orderings, read off the rows' top-1 (rows without top-1 are skipped).

  Each trained row against the best off-the-shelf row at no more GFLOPs (trained reduction >= off the
  shelf at equal FLOPs), and ToMe with vs without proportional attention at each r (prop-attn helps
  supervised ToMe).
  """
  scored = [r for r in rows if r.get("top1") is not None]
  shelf = [r for r in scored if not r.get("fine_tuned") and r["method"] != "dense"]
  lines = []
  for row in (r for r in scored if r.get("fine_tuned")):
    rivals = [r for r in shelf if r["gflops_per_image"] <= row["gflops_per_image"] * 1.02]
    if not rivals:
      lines.append(f"{row['method']} ({row['gflops_per_image']:.2f} GFLOPs, top-1 {100 * row['top1']:.1f}%): "
                   "no off-the-shelf row at <= its GFLOPs")
      continue
    best = max(rivals, key=lambda r: r["top1"])
    verdict = "holds" if row["top1"] >= best["top1"] else "does not hold"
    lines.append(f"{row['method']} ({row['gflops_per_image']:.2f} GFLOPs): top-1 {100 * row['top1']:.1f}% vs best "
                 f"off-the-shelf at <= its GFLOPs {best['method']} {best['strength']} ({best['gflops_per_image']:.2f}"
                 f" GFLOPs) {100 * best['top1']:.1f}%: trained >= off-the-shelf {verdict}")
  tome = {r["strength"]: r for r in scored if r["method"] == "tome"}
  for row in (r for r in scored if r["method"] == "tome_noprop" and r["strength"] in tome):
    with_prop = tome[row["strength"]]
    verdict = "helps" if with_prop["top1"] > row["top1"] else ("ties" if with_prop["top1"] == row["top1"] else "hurts")
    lines.append(f"ToMe r={row['strength']}: top-1 {100 * with_prop['top1']:.1f}% with proportional attention, "
                 f"{100 * row['top1']:.1f}% without: prop-attn {verdict}")
  return lines


def target_checks(rows: list[dict[str, Any]]) -> list[str]:
  """Lines naming the rows that miss speed-up >= 90% of the GFLOPs prediction, or plan time > 10%."""
  reduced = [r for r in rows if r["method"] != "dense"]
  slow = [f"{r['method']} {r['strength']} ({100 * r['speedup_vs_predicted']:.0f}%)" for r in reduced
          if r["speedup_vs_predicted"] < 0.9]
  costly = [f"{r['method']} {r['strength']} ({100 * r['plan_fraction']:.1f}%)" for r in reduced
            if "plan_fraction" in r and r["plan_fraction"] > 0.1]
  timed = sum("plan_fraction" in r for r in reduced)
  return [f"Speed-up >= 90% of the GFLOPs prediction: {len(reduced) - len(slow)}/{len(reduced)} rows"
          + (f"; below: {', '.join(slow)}" if slow else ""),
          f"Plan time <= 10% of the forward: {timed - len(costly)}/{timed} timed rows"
          + (f"; above: {', '.join(costly)}" if costly else "")]


def plot(rows: list[dict[str, Any]], path: str, *, title: str = "") -> None:
  """images/s (and top-1 when measured) against GFLOPs per image, one line per method, as a PNG."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  panels = [("images_per_s", "images/s")]
  if any(r.get("top1") is not None for r in rows):
    panels.append(("top1", "top-1 accuracy (%)"))
  fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.5), dpi=120, squeeze=False)
  methods = list(dict.fromkeys(r["method"] for r in rows))
  for ax, (key, label) in zip(axes[0], panels):
    for method in methods:
      points = [(r["gflops_per_image"], r[key]) for r in rows if r["method"] == method and r.get(key) is not None]
      if not points:
        continue
      xs, ys = zip(*points)
      ys = [100 * y for y in ys] if key == "top1" else ys
      marker = "*" if method == "dense" else ("s" if method.endswith("(trained)") else "o-")
      ax.plot(xs, ys, marker, ms=10 if marker in ("*", "s") else 5, label=method)
    ax.set_xlabel("GFLOPs per image (XLA cost analysis)")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
  axes[0][0].legend(fontsize=8)
  fig.suptitle(textwrap.fill(title, 60 * len(panels)), fontsize=7)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


# --- command line ------------------------------------------------------------------------------------


def main(argv: Sequence[str]) -> None:
  from absl import app

  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  result = run(_CONFIG.value, _WORKDIR.value)
  print(to_markdown(result))
  print(f"outputs in {_WORKDIR.value}")


if __name__ == "__main__":
  from absl import app, flags
  from ml_collections import config_flags

  _CONFIG = config_flags.DEFINE_config_file("config", None, "Sweep config file, with an optional ':arg'.",
                                            lock_config=True)
  _WORKDIR = flags.DEFINE_string("workdir", None, "Directory for sweep.json, sweep.md and sweep.png.")
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
