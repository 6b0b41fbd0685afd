"""The one measurement module: the timer, the GFLOPs count and the table row of a reduction.

  seconds = median_seconds(fn, images)                       # median of timed calls after warm-up
  result = measure(apply_fn, params, (B, H, W, 3))            # images/s, median ms, compiled GFLOPs
  gflops = vit_forward_gflops(model, params, (B, H, W, 3))    # XLA's count of the CPU lowering
  row = reduction_row(model, variables, build("tome:8"), dataset, dense_predictions=dense["predictions"])

GFLOPs are counted on the CPU lowering of the forward with XLA attention: XLA:GPU analyses only
the compiled executable, where cuBLAS and cuDNN custom calls count zero FLOPs (ViT-B/16 came out at
0.07 instead of 35.3 GFLOPs on an H200). Timings are on the default device: every call until
block_until_ready, rotating among random batches, after untimed warm-up calls; the clock can be
injected (tests pass a fake one, so nothing is timed for real there).

Rows (reduction_row) are what tokax.evaluate, tokax.bench.tradeoff and scripts/main_job.py print:
method, tokens after the last block, GFLOPs per image, images/s, top-1, top-5 and the agreement
with the dense model's predictions. Post-encoder reducers (placement "post": DivPrune, ToDRE, DCT,
FasterVLM) run on the dense encoder's output tokens, called as bench/sweep.py's post rows call them,
`reducer(tokens, {"cls": last block's [CLS] attention row})`; the classifier head then reads the
pooled reduced tokens (post_forward).
"""
from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tokax.data import offline
from tokax.reduction import Tokens
from tokax.train.model import normalize_images

Clock = Callable[[], float]
Batches = Callable[[], Iterable[Mapping[str, np.ndarray]]]


# --- GFLOPs ------------------------------------------------------------------------------------------


def compiled_flops(compiled: Any) -> float:
  """FLOPs of a compiled (or lowered) XLA computation from its cost analysis (0.0 where none is given)."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # older jax: one dict per computation
    analysis = analysis[0] if analysis else {}
  return float((analysis or {}).get("flops", 0.0))


def forward_gflops_per_image(apply_fn: Callable, params: Any, batch_shape: tuple[int, ...],
                             dtype: Any = jnp.float32) -> float:
  """GFLOPs per image of jit(apply_fn)(params, images (B, H, W, 3)) compiled for the default device; nothing runs."""
  images = jax.ShapeDtypeStruct(batch_shape, jnp.dtype(dtype))
  return compiled_flops(jax.jit(apply_fn).lower(params, images).compile()) / batch_shape[0] / 1e9


def cpu_gflops_per_image(apply_fn: Callable, params: Any, batch_shape: Sequence[int],
                         dtype: Any = jnp.float32) -> float:
  """GFLOPs per image of apply_fn(params, images (B, H, W, 3)): XLA's count of its CPU lowering; nothing runs."""
  cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
  spec = lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=cpu)
  lowered = jax.jit(apply_fn).lower(jax.tree.map(spec, params),
                                    jax.ShapeDtypeStruct(tuple(batch_shape), jnp.dtype(dtype), sharding=cpu))
  return compiled_flops(lowered) / batch_shape[0] / 1e9


def vit_forward_gflops(model: Any, params: Any, batch_shape: tuple[int, ...], dtype: Any = jnp.float32) -> float:
  """GFLOPs per image of a tokax ViT's forward: XLA's count of its XLA-attention version lowered for the CPU.

  Lowered for the CPU because there the analysis runs on the HLO before compilation: XLA:GPU only
  analyses the compiled executable, where cuBLAS and cuDNN custom calls count zero FLOPs.
  """
  xla = model.clone(attention="xla")
  return cpu_gflops_per_image(lambda p, x: xla.apply(p, x), params, batch_shape, dtype)


def cast_floating(variables: Any, dtype: Any) -> Any:
  """`variables` with every floating leaf in `dtype` (the dtype to time and count in); other leaves as they are."""
  return jax.tree.map(lambda p: jnp.asarray(p, dtype) if jnp.issubdtype(jnp.result_type(p), jnp.floating) else p,
                      variables)


# --- the timer -----------------------------------------------------------------------------------------


def random_batches(batch_shape: tuple[int, ...], dtype: Any, *, count: int = 3, seed: int = 0) -> list[jax.Array]:
  """`count` different uniform [0, 1) batches (never zeros), to rotate between timed calls.

  Drawn on the host (numpy) and put on the device: nothing is compiled for them.
  """
  rng = np.random.default_rng(seed)
  return [jax.device_put(rng.random(batch_shape, np.float32).astype(jnp.dtype(dtype))) for _ in range(count)]


def call_seconds(fn: Callable[[Any], Any], inputs: Sequence[Any], *, warmup: int = 3, repeats: int = 10,
                 clock: Clock = time.perf_counter) -> list[float]:
  """Seconds of each of `repeats` timed calls fn(inputs[i % len(inputs)]) (until block_until_ready),
  after `warmup` untimed calls; `clock` reads the time (time.perf_counter)."""
  if repeats < 1:
    raise ValueError(f"measure: repeats must be >= 1; got {repeats}")
  if not inputs:
    raise ValueError("measure: give at least one input to time the calls on")
  for i in range(warmup):
    jax.block_until_ready(fn(inputs[i % len(inputs)]))
  times = []
  for i in range(repeats):
    x = inputs[i % len(inputs)]
    start = clock()
    jax.block_until_ready(fn(x))
    times.append(clock() - start)
  return times


def median_seconds(fn: Callable, *args: Any, warmup: int = 1, repeats: int = 10,
                   clock: Clock = time.perf_counter) -> float:
  """Median wall seconds of fn(*args) (each call until block_until_ready), after `warmup` calls."""
  return statistics.median(call_seconds(lambda a: fn(*a), [args], warmup=warmup, repeats=repeats, clock=clock))


def measure(apply_fn: Callable, params: Any, batch_shape: tuple[int, ...], dtype: Any = jnp.float32, *,
            warmup: int = 3, repeats: int = 10, clock: Clock = time.perf_counter) -> dict[str, float]:
  """Times jit(apply_fn)(params, images) on the default device.

  Compiles once, runs `warmup` calls, then times `repeats` calls one by one (each until
  block_until_ready), rotating among three random [0, 1) batches.

  Args:
    apply_fn: (params, images (B, H, W, C)) -> any pytree of arrays.
    params: its parameters (already on the device, in the dtype to time).
    batch_shape: (B, H, W, C).
    dtype: the images' dtype.
    warmup, repeats: untimed and timed calls.
    clock: () -> seconds.

  Returns:
    {"images_per_s": B / median, "median_ms": median call time, "gflops_per_image": XLA's count / B}
    (the compiled executable's count: on GPUs it misses cuBLAS / cuDNN calls; see vit_forward_gflops).
  """
  images = jax.ShapeDtypeStruct(tuple(batch_shape), jnp.dtype(dtype))
  compiled = jax.jit(apply_fn).lower(params, images).compile()
  return {**time_forward(compiled, params, batch_shape, dtype, warmup=warmup, repeats=repeats, clock=clock),
          "gflops_per_image": compiled_flops(compiled) / batch_shape[0] / 1e9}


def time_forward(fn: Callable, variables: Any, batch_shape: Sequence[int], dtype: Any = jnp.float32, *,
                 warmup: int = 3, repeats: int = 10, clock: Clock = time.perf_counter) -> dict[str, float]:
  """Times fn(variables, images) (fn already jitted or compiled) on three random [0, 1) batches in `dtype`.

  Returns {"images_per_s": B / median, "median_ms": median call time} (call_seconds' calls).
  """
  if repeats < 1:
    raise ValueError(f"measure: repeats must be >= 1; got {repeats}")
  batches = random_batches(tuple(batch_shape), jnp.dtype(dtype))
  median = statistics.median(call_seconds(lambda x: fn(variables, x), batches, warmup=warmup, repeats=repeats,
                                          clock=clock))
  return {"images_per_s": batch_shape[0] / median, "median_ms": median * 1e3}


# --- post-encoder reducers -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LastLayerScores:
  """Bench only: a "mid" reduction that changes nothing and asks the last block for `scores_`.

  The dense encoder with this reduction computes the same tokens, and its last block's attention
  also returns the scores a post-encoder reducer reads (the [CLS] attention row for ToDRE, FasterVLM).
  """
  scores_: tuple[str, ...] = ("cls",)
  prop_attn: bool = False
  placement = "mid"

  @property
  def scores(self) -> tuple[str, ...]:
    return self.scores_

  def layer_scores(self, *, layer: int, depth: int) -> tuple[str, ...]:
    return self.scores_ if layer == depth - 1 else ()

  def reduce(self, tokens: Tokens, metrics: dict[str, jax.Array], *, layer: int, depth: int) -> Tokens:
    return tokens

  def token_counts(self, num_tokens: int, depth: int, num_prefix: int = 1) -> tuple[int, ...]:
    return (num_tokens,) * depth


def _last_attention(module: Any, method: str) -> bool:
  return method == "__call__" and type(module).__name__ == "Attention"


def pooled_logits(model: Any, params: Any, tokens: Tokens) -> jax.Array:
  """(B, num_classes) logits of `model`'s head on `tokens` (B, N, C), pooled as the model pools.

  pool="gap": the size-weighted mean of the patch tokens (mask respected), then fc_norm (the
  tokens are the encoder's un-normed output). pool="cls": the [CLS] (and distillation) token of the
  normed output; a reducer that dropped the prefix (FasterVLM) leaves no [CLS], so the head reads
  the size-weighted mean of the normed tokens it kept.
  """
  params = params.get("params", params)
  k = tokens.num_prefix
  if model.pool == "cls" and k:
    pooled = [tokens.x[:, 0]] + ([tokens.x[:, 1]] if model.distilled else [])
  else:
    w = tokens.size[:, k:] * (1.0 if tokens.mask is None else tokens.mask[:, k:])
    mean = jnp.einsum("bnc,bn->bc", tokens.x[:, k:].astype(jnp.float32), w) / w.sum(-1, keepdims=True)
    if model.pool == "gap":
      mean = nn.LayerNorm(epsilon=1e-6).apply({"params": params["fc_norm"]}, mean)
    pooled = [mean] * (2 if model.distilled else 1)
  heads = ["head", "head_dist"][:len(pooled)]
  logits = [nn.Dense(model.num_classes).apply({"params": params[h]}, x.astype(jnp.float32))
            for h, x in zip(heads, pooled)]
  return sum(logits) / len(logits)


def post_head(model: Any, reducer: Any
              ) -> Callable[[Any, jax.Array, Mapping[str, jax.Array]], tuple[jax.Array, Tokens]]:
  """(variables, encoder output (B, N, C), {score: last block's (B, N) score}) -> (logits (B, K), reduced Tokens).

  `reducer(Tokens(encoder output), scores)` and the head on the pooled reduced tokens (pooled_logits).
  """
  scores = tuple(getattr(reducer, "scores", ()))

  def head(variables: Any, features: jax.Array, metrics: Mapping[str, jax.Array]) -> tuple[jax.Array, Tokens]:
    tokens = Tokens.create(features, has_cls=model.class_token, has_dist=model.distilled)
    reduced = reducer(tokens, {k: metrics[k] for k in scores})
    return pooled_logits(model, variables, reduced), reduced

  return head


def encoder_forward(model: Any, scores: Sequence[str] = ()) -> Callable[[Any, jax.Array], tuple[jax.Array, dict]]:
  """(variables, model inputs (B, H, W, 3)) -> (the dense encoder's output (B, N, C), {score: last block's (B, N)}).

  The encoder runs with LastLayerScores when `scores` are asked for (the [CLS] attention row: "cls").
  """
  scores = tuple(scores)
  if scores and not model.class_token:
    raise ValueError(f"a post-encoder reducer reads the [CLS] attention row {scores}; the model has no class token")
  depth = model.arch.depth
  encoder = model.clone(reduction=LastLayerScores(scores) if scores else None)

  def forward(variables: Any, images: jax.Array) -> tuple[jax.Array, dict]:
    (_, inter), state = encoder.apply(variables, images, return_intermediates=True,
                                      capture_intermediates=_last_attention, mutable=["intermediates"])
    metrics = dict(state["intermediates"][f"blocks_{depth - 1}"]["attn"]["__call__"][0][1]) if scores else {}
    return inter["features"], {k: metrics[k] for k in scores}

  return forward


def post_forward(model: Any, reducer: Any) -> Callable[[Any, jax.Array], tuple[jax.Array, Tokens]]:
  """(variables, model inputs (B, H, W, 3)) -> (logits (B, K), reduced Tokens) for a post-encoder reducer.

  The dense encoder (encoder_forward, with the scores the reducer reads), then post_head.
  """
  encoder, head = encoder_forward(model, getattr(reducer, "scores", ())), post_head(model, reducer)

  def forward(variables: Any, images: jax.Array) -> tuple[jax.Array, Tokens]:
    return head(variables, *encoder(variables, images))

  return forward


@dataclasses.dataclass(frozen=True)
class EncoderPass:
  """One pass of the dense encoder over the evaluation data, kept on the host, that every post-encoder
  reducer's accuracy pass reads instead of running the encoder again (reduction_row's `encoder`).

  Attributes:
    batches: [(encoder output (B, N, C), {score: (B, N)}, mask (B,) bool, label (B,))] in data order.
    scores: the last-block scores kept ("cls" where the model has a class token).
    seconds: median seconds of the encoder alone on a (bench_batch_size, H, W, 3) batch (None: not timed).
    bench_batch_size: that batch.
  """
  batches: list[tuple[np.ndarray, dict[str, np.ndarray], np.ndarray, np.ndarray]]
  scores: tuple[str, ...]
  seconds: float | None
  bench_batch_size: int


def encoder_pass(model: Any, variables: Any, data: Batches, *,
                 input_fn: Callable[[jax.Array], jax.Array] = normalize_images, bench_batch_size: int = 64,
                 dtype: Any = jnp.float32, warmup: int = 2, repeats: int = 5, timed: bool = True,
                 clock: Clock = time.perf_counter) -> EncoderPass:
  """The dense encoder (`model` without its reduction) over one pass of `data` (reduction_row's batches),
  with the [CLS] attention row of its last block where the model has a class token; timed as time_forward."""
  dense = model.clone(reduction=None)
  scores = ("cls",) if model.class_token else ()
  encoder = encoder_forward(dense, scores)
  run = jax.jit(lambda v, x: encoder(v, input_fn(x)))
  batches = []
  for batch in data():
    features, metrics = run(variables, jnp.asarray(batch["image"]))
    batches.append((np.asarray(features), {k: np.asarray(m) for k, m in metrics.items()},
                    np.asarray(batch["mask"], bool), np.asarray(batch["label"])))
  if not batches:
    raise ValueError("encoder_pass: the data gave no batches")
  seconds = None
  if timed:
    shape = (bench_batch_size, model.image_size, model.image_size, 3)
    seconds = time_forward(run, variables, shape, dtype, warmup=warmup, repeats=repeats, clock=clock)["median_ms"] / 1e3
  return EncoderPass(batches=batches, scores=scores, seconds=seconds, bench_batch_size=bench_batch_size)


# --- the row -------------------------------------------------------------------------------------------


def is_post(reduction: Any) -> bool:
  return getattr(reduction, "placement", None) == "post"


def forward_fn(model: Any, reduction: Any, input_fn: Callable[[jax.Array], jax.Array] = normalize_images
               ) -> Callable[[Any, jax.Array], tuple[jax.Array, Any]]:
  """(variables, images (B, H, W, 3) in [0, 1] or uint8) -> (logits (B, K), final Tokens-like with size/mask).

  A block reduction replaces the model's own; a post reducer runs on the dense encoder's output.
  input_fn maps the images to the model's inputs (normalize_images: [-1, 1]; timm: mean / std).
  """
  if getattr(reduction, "needs_calibration", False):
    raise ValueError(f"{type(reduction).__name__} is a calibration spec: calibrate it first "
                     "(tokax.reduction.calibrate_dtome) and pass the calibrated method")
  if is_post(reduction):
    post = post_forward(model.clone(reduction=None), reduction)
    return lambda v, x: post(v, input_fn(x))
  reduced = model.clone(reduction=reduction)

  def forward(variables: Any, images: jax.Array):
    logits, inter = reduced.apply(variables, input_fn(images), return_intermediates=True)
    return logits, Tokens(x=inter["features"], size=inter["size"], assign=inter["assign"], mask=inter["mask"])
  return forward


def block_counts(model: Any, variables: Any, image_shape: Sequence[int]) -> tuple[int, ...]:
  """Token slots after each block of `model` (with its own reduction) on (H, W, 3) images; shapes only, nothing runs."""
  is_block = lambda m, name: name == "__call__" and type(m).__name__ == "Block"

  def forward(v, x):
    return model.apply(v, x, capture_intermediates=is_block, mutable=["intermediates"])[1]["intermediates"]

  inter = jax.eval_shape(forward, variables, jax.ShapeDtypeStruct((1, *image_shape), jnp.float32))
  return tuple(int(inter[f"blocks_{i}"]["__call__"][0].x.shape[1]) for i in range(model.arch.depth))


def row_forward(model: Any, reduction: Any, input_fn: Callable[[jax.Array], jax.Array] = normalize_images,
                keep_assign: int = 0) -> Callable[[Any, jax.Array], tuple[jax.Array, ...]]:
  """The executable a row runs and times: jitted (variables, images) -> (top-5 classes (B, 5), valid tokens (B,)).

  forward_fn's logits reduced to their top-5 (top-k for fewer classes) and the valid token count after
  the last block (the slot count unless the method masks); keep_assign > 0 adds the first keep_assign
  images' token assignment (keep_assign, N0) (which final token each input token ended in; -1: pruned).
  """
  forward = forward_fn(model, reduction, input_fn)
  k = min(5, model.num_classes)

  @jax.jit
  def run(variables, images):
    logits, tokens = forward(variables, images)
    top, valid = _top_and_valid(logits, tokens, k)
    return (top, valid, tokens.assign[:keep_assign]) if keep_assign else (top, valid)

  return run


@dataclasses.dataclass(frozen=True)
class RowExecutable:
  """A row's executable (row_forward) compiled ahead of time for one batch shape: reduction_row's `executable`.

  Attributes:
    lowered: its jax Lowered (its cost analysis on a CPU is the row's GFLOPs count there).
    compiled: the compiled executable, called as compiled(variables, images).
    batch_shape, dtype: the images it takes (other images go through the jitted row_forward).
  """
  lowered: Any
  compiled: Any
  batch_shape: tuple[int, ...]
  dtype: Any


def compile_rows(model: Any, variables: Any, reductions: Sequence[Any], batch_shape: Sequence[int],
                 dtype: Any = jnp.float32, *, input_fn: Callable[[jax.Array], jax.Array] = normalize_images,
                 keep_assign: int = 0, workers: int | None = None) -> list[RowExecutable]:
  """Every row's executable for (B, H, W, 3) images in `dtype`: traced and lowered one after another, then
  compiled concurrently on `workers` threads (default: one per CPU core; XLA releases the GIL while it
  compiles, and compiling, not running, is most of a row's time on a CPU)."""
  import concurrent.futures  # noqa: PLC0415
  import os  # noqa: PLC0415

  images = jax.ShapeDtypeStruct(tuple(batch_shape), jnp.dtype(dtype))
  lowered = [row_forward(model, r, input_fn, keep_assign).lower(variables, images) for r in reductions]
  with concurrent.futures.ThreadPoolExecutor(max(1, workers or os.cpu_count() or 1)) as pool:
    compiled = list(pool.map(lambda low: low.compile(), lowered))
  return [RowExecutable(low, c, tuple(batch_shape), jnp.dtype(dtype)) for low, c in zip(lowered, compiled)]


def time_row(model: Any, variables: Any, reduction: Any, batch_shape: Sequence[int], dtype: Any = jnp.float32, *,
             input_fn: Callable[[jax.Array], jax.Array] = normalize_images, warmup: int = 2, repeats: int = 5,
             clock: Clock = time.perf_counter) -> dict[str, float]:
  """{"images_per_s", "median_ms"} of a row's executable (row_forward) alone: what reduction_row times.

  For timings to subtract from a row's (bench.sweep's no-plan bounds): the same executable, batches and timer.
  """
  return time_forward(row_forward(model, reduction, input_fn), variables, batch_shape, dtype, warmup=warmup,
                      repeats=repeats, clock=clock)


def _dataset_batches(dataset: offline.ArrayDataset, batch_size: int) -> Batches:
  return lambda: offline.iterate_batches(dataset, batch_size, shuffle=False, drop_remainder=False, num_epochs=1)


def _top_and_valid(logits: jax.Array, tokens: Any, k: int) -> tuple[jax.Array, jax.Array]:
  """(top-k classes (B, k), valid tokens after the last block (B,): the slot count unless the method masks)."""
  valid = (jnp.full(tokens.size.shape[:1], tokens.size.shape[1], jnp.float32) if tokens.mask is None
           else jnp.sum(tokens.mask, -1).astype(jnp.float32))
  return jax.lax.top_k(logits.astype(jnp.float32), k)[1], valid


def reduction_row(model: Any, variables: Any, reduction: Any, data: offline.ArrayDataset | Batches | None,
                  dense_predictions: np.ndarray | None = None, *, method: str | None = None,
                  input_fn: Callable[[jax.Array], jax.Array] = normalize_images, eval_batch_size: int = 64,
                  bench_batch_size: int = 64, dtype: Any = jnp.float32, warmup: int = 2, repeats: int = 5,
                  timed: bool = True, image_shape: Sequence[int] | None = None,
                  progress: Callable[[Iterable[Any]], Iterable[Any]] | None = None,
                  encoder: EncoderPass | None = None, keep_assign: int = 0,
                  executable: RowExecutable | None = None, time_on_data: bool = False,
                  clock: Clock = time.perf_counter) -> dict[str, Any]:
  """One table row: `model` (a classifier ViT; its own reduction is replaced) with `reduction`.

  Args:
    model, variables: the ViT and what its apply takes ({"params": ...}), in the dtype to time.
    reduction: a built method (tokax.reduction.build; block or "post"), or None for the dense model.
    data: an in-memory dataset (images (N, H, W, 3) in [0, 1]) or a function returning one pass of
      batches {"image": (B, H, W, 3) in [0, 1] or uint8, "label": (B,), "mask": (B,) bool (padding)};
      None: no accuracy pass (random weights): top1, top5, agreement and predictions are None, and a
      masking method's mean valid tokens are read on one random [0, 1) batch of bench_batch_size.
    dense_predictions: (N,) the dense model's top-1 predictions, for the agreement column; None:
      this is the reference row (agreement 1.0).
    method: the row's label (default: type name, "dense" for None).
    input_fn: images -> the model's inputs (normalize_images: [-1, 1]).
    eval_batch_size: batch of an in-memory dataset's accuracy pass.
    bench_batch_size, dtype, warmup, repeats, clock: the timing: the row's jitted forward (with its
      top-5) on random [0, 1) batches in `dtype`, as time_row; timed=False skips it.
    image_shape: (H, W, 3) of the images; default: the data's, or (model.image_size,) * 2 + (3,) without data.
    progress: wraps the accuracy pass's batches (a tqdm bar), or None.
    encoder: the dense encoder's outputs on `data` (encoder_pass), for a post reducer: its accuracy pass
      reduces those instead of running the encoder again, and its time is the encoder's (timed once)
      plus its reducer-and-head executable's (row "timing": "encoder + reducer"). Ignored for block methods.
    keep_assign: > 0: row["assign"] is the first keep_assign images' token assignment (keep_assign, N0)
      (tokax.reduction.visualize.draw_merges draws it); the timed executable returns it too.
    time_on_data: time the accuracy pass's own calls (each until block_until_ready; the first, which may
      compile, and batches of another size left out) instead of `repeats` extra calls on random batches:
      images/s = B / their median (row "timing": "data"). Needs two or more batches of one size.
    executable: the row's executable compiled ahead of time (compile_rows, with the same keep_assign) for
      the data's batches and the timing batch; on a CPU its lowering also gives the GFLOPs count.

  Returns:
    {"method", "tokens" (after the last block; the mean valid count for masking methods, the reducer's
    output for post reducers), "layer_tokens", "gflops_per_image", "images_per_s", "median_ms", "top1",
    "top5", "agreement", "num_examples", "predictions" ((N,) int32 numpy: pop it before serialising)}
    (+ "assign" with keep_assign, numpy: pop it too).
  """
  jitted = row_forward(model, reduction, input_fn, keep_assign)

  def evaluate(v: Any, images: jax.Array) -> tuple[jax.Array, ...]:
    if executable is not None and images.shape == executable.batch_shape and images.dtype == executable.dtype:
      return executable.compiled(v, images)
    return jitted(v, images)

  cached = encoder is not None and is_post(reduction)
  if cached:
    head_fn, k = post_head(model, reduction), min(5, model.num_classes)

    @jax.jit
    def head(v, features, metrics):
      logits, tokens = head_fn(v, features, metrics)
      top, valid = _top_and_valid(logits, tokens, k)
      return (top, valid, tokens.assign[:keep_assign]) if keep_assign else (top, valid)
  row = {"method": method or ("dense" if reduction is None else type(reduction).__name__),
         "tokens": None, "layer_tokens": None, "gflops_per_image": None, "images_per_s": None, "median_ms": None,
         "top1": None, "top5": None, "agreement": None, "num_examples": 0, "predictions": None}
  valid_counts, pass_seconds = [], []  # pass_seconds: (batch size, seconds) of timed accuracy-pass calls
  if data is not None:
    batches = _dataset_batches(data, eval_batch_size) if isinstance(data, offline.ArrayDataset) else data
    tops, labels, outputs = [], [], []
    if cached:
      for features, metrics, mask, label in (progress(encoder.batches) if progress else encoder.batches):
        outputs.append((head(variables, features, {s: metrics[s] for s in reduction.scores}), mask, label))
    for batch in () if cached else (progress(batches()) if progress else batches()):
      images = jnp.asarray(batch["image"])
      image_shape = images.shape[1:]
      if time_on_data:  # each call alone, its input already on the device (as time_forward's calls)
        start = clock()
        output = jax.block_until_ready(evaluate(variables, jax.block_until_ready(images)))
        pass_seconds.append((len(images), clock() - start))
      else:
        output = evaluate(variables, images)
      outputs.append((output, np.asarray(batch["mask"], bool), np.asarray(batch["label"])))
    if keep_assign:
      row["assign"] = np.concatenate([np.asarray(out[2])[mask[:len(out[2])]] for out, mask, _ in outputs])[:keep_assign]
    for (top, valid, *_), mask, label in outputs:
      tops.append(np.asarray(top)[mask])
      valid_counts.append(np.asarray(valid)[mask])
      labels.append(label[mask])
    if not outputs:
      raise ValueError("reduction_row: the data gave no batches")
    top, labels = np.concatenate(tops), np.concatenate(labels)
    predictions = top[:, 0].astype(np.int32)
    reference = predictions if dense_predictions is None else np.asarray(dense_predictions)
    if reference.shape != predictions.shape:
      raise ValueError(f"reduction_row: dense_predictions has {reference.shape[0]} examples, the data {len(predictions)}")
    row.update(top1=float(np.mean(predictions == labels)),
               top5=float(np.mean(np.any(top == labels[:, None], axis=1))),
               agreement=float(np.mean(predictions == reference)), num_examples=int(len(predictions)),
               predictions=predictions)
  image_shape = tuple(image_shape or (model.image_size, model.image_size, 3))
  variable_tokens = getattr(reduction, "variable_tokens", False)
  if data is None and variable_tokens:
    batch = random_batches((bench_batch_size, *image_shape), dtype, count=1, seed=1)[0]
    valid_counts.append(np.asarray(evaluate(variables, batch)[1]))

  if executable is not None and jax.default_backend() == "cpu":  # its own CPU lowering (+ input scaling and top-5)
    row["gflops_per_image"] = compiled_flops(executable.lowered) / executable.batch_shape[0] / 1e9
  else:
    xla_model = model.clone(attention="xla")
    row["gflops_per_image"] = cpu_gflops_per_image(
        lambda v, x: forward_fn(xla_model, reduction, input_fn)(v, x)[0], variables, (1, *image_shape), dtype)
  row["layer_tokens"] = list(block_counts(model.clone(reduction=None if is_post(reduction) else reduction), variables,
                                          image_shape))
  forward = forward_fn(model, reduction, input_fn)
  row["tokens"] = int(jax.eval_shape(lambda v, x: forward(v, x)[1].size, variables,
                                     jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)).shape[1])
  if variable_tokens:
    row["tokens"] = float(np.mean(np.concatenate(valid_counts)))
  if timed and cached:  # the encoder's time (encoder_pass) + the reducer-and-head executable's, on random tokens
    if encoder.seconds is None or encoder.bench_batch_size != bench_batch_size:
      raise ValueError(f"reduction_row: the encoder pass was timed at batch {encoder.bench_batch_size} "
                       f"({'not timed' if encoder.seconds is None else 'timed'}); this row times batch {bench_batch_size}")
    features = encoder.batches[0][0]
    scores = {s: jnp.full((bench_batch_size, features.shape[1]), 1.0 / features.shape[1], jnp.float32)
              for s in reduction.scores}
    reducer = time_forward(lambda v, f: head(v, f, scores), variables, (bench_batch_size, *features.shape[1:]), dtype,
                           warmup=warmup, repeats=repeats, clock=clock)
    seconds = encoder.seconds + reducer["median_ms"] / 1e3
    row.update(images_per_s=bench_batch_size / seconds, median_ms=seconds * 1e3, timing="encoder + reducer")
  elif timed and time_on_data and len(pass_seconds) > 2:
    size = pass_seconds[0][0]
    median = statistics.median(t for b, t in pass_seconds[1:] if b == size)
    row.update(images_per_s=size / median, median_ms=median * 1e3, timing="data")
  elif timed:  # the accuracy pass's executable, on random batches (the same shapes compile once)
    row.update(time_forward(evaluate, variables, (bench_batch_size, *image_shape), dtype, warmup=warmup,
                            repeats=repeats, clock=clock))
  return row
