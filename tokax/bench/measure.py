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
pooled reduced tokens (post_forward). A row traces its model once, to lower its executable (compile_rows,
whose CPU lowering is also its GFLOPs count there; on a GPU one more lowering, for the CPU, counts them);
its token counts are the method's own static counts (row_tokens); one pass of the dense model
(encoder_pass) gives both the dense row and the encoder outputs that every post row reduces.
"""
from __future__ import annotations

import dataclasses
import functools
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

# XLA:CPU's older elemental emitters instead of its fusion emitters: the same HLO and float32 operations
LEGACY_CPU_EMITTERS = {"xla_cpu_use_fusion_emitters": False}


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


def encoder_forward(model: Any, scores: Sequence[str] = ()
                    ) -> Callable[[Any, jax.Array], tuple[jax.Array, Tokens, dict[str, jax.Array]]]:
  """(variables, model inputs (B, H, W, 3)) -> (the dense model's logits (B, K), its output Tokens (x: the
  encoder's output (B, N, C)), {score: last block's (B, N)}).

  The encoder runs with LastLayerScores when `scores` are asked for (the [CLS] attention row: "cls").
  """
  scores = tuple(scores)
  if scores and not model.class_token:
    raise ValueError(f"a post-encoder reducer reads the [CLS] attention row {scores}; the model has no class token")
  depth = model.arch.depth
  encoder = model.clone(reduction=LastLayerScores(scores) if scores else None)

  def forward(variables: Any, images: jax.Array) -> tuple[jax.Array, Tokens, dict[str, jax.Array]]:
    (logits, inter), state = encoder.apply(variables, images, return_intermediates=True,
                                           capture_intermediates=_last_attention, mutable=["intermediates"])
    metrics = dict(state["intermediates"][f"blocks_{depth - 1}"]["attn"]["__call__"][0][1]) if scores else {}
    tokens = Tokens(x=inter["features"], size=inter["size"], assign=inter["assign"], mask=inter["mask"])
    return logits, tokens, {k: metrics[k] for k in scores}

  return forward


def post_forward(model: Any, reducer: Any) -> Callable[[Any, jax.Array], tuple[jax.Array, Tokens]]:
  """(variables, model inputs (B, H, W, 3)) -> (logits (B, K), reduced Tokens) for a post-encoder reducer.

  The dense encoder (encoder_forward, with the scores the reducer reads), then post_head.
  """
  encoder, head = encoder_forward(model, getattr(reducer, "scores", ())), post_head(model, reducer)

  def forward(variables: Any, images: jax.Array) -> tuple[jax.Array, Tokens]:
    _, tokens, metrics = encoder(variables, images)
    return head(variables, tokens.x, metrics)

  return forward


def encoder_row_forward(model: Any, input_fn: Callable[[jax.Array], jax.Array] = normalize_images,
                        keep_assign: int = 0) -> Callable[[Any, jax.Array], tuple[Any, ...]]:
  """The encoder pass's executable: jitted (variables, images (B, H, W, 3)) -> (the dense row's outputs
  (row_outputs), encoder output (B, N, C), {"cls": last block's (B, N)} where the model has a class token).

  The dense model (its reduction dropped) with the scores post-encoder reducers read: one call gives the dense
  row and what every post row reduces.
  """
  dense = model.clone(reduction=None)
  encoder = encoder_forward(dense, ("cls",) if model.class_token else ())
  k = min(5, model.num_classes)

  @functools.partial(jax.jit, compiler_options=row_compiler_options(None))
  def run(variables, images):
    logits, tokens, metrics = encoder(variables, input_fn(images))
    return row_outputs(logits, tokens, k, keep_assign), tokens.x, metrics

  return run


@dataclasses.dataclass(frozen=True)
class EncoderPass:
  """One pass of the dense model over the evaluation data, kept on the host: the dense row's outputs and the
  encoder's output tokens, which every post-encoder reducer's accuracy pass reads instead of running the
  encoder again (reduction_row's `encoder`).

  Attributes:
    batches: [(encoder output (B, N, C), {score: (B, N)}, mask (B,) bool, label (B,))] in data order.
    dense: [the dense row's outputs (row_outputs with keep_assign) of each batch], in data order.
    seconds: median seconds of one call of the pass's executable (encoder_row_forward) on a
      (bench_batch_size, H, W, 3) batch (None: not timed).
    bench_batch_size: that batch.
    keep_assign: the assignments kept in `dense`.
    executable: the pass's executable where it was compiled ahead of time (compile_programs), else None.
  """
  batches: list[tuple[np.ndarray, dict[str, np.ndarray], np.ndarray, np.ndarray]]
  dense: list[tuple[np.ndarray, ...]]
  seconds: float | None
  bench_batch_size: int
  keep_assign: int = 0
  executable: RowExecutable | None = None


def encoder_pass(model: Any, variables: Any, data: Batches, *,
                 input_fn: Callable[[jax.Array], jax.Array] = normalize_images, bench_batch_size: int = 64,
                 dtype: Any = jnp.float32, warmup: int = 2, repeats: int = 5, timed: bool = True,
                 keep_assign: int = 0, executable: RowExecutable | None = None, time_on_data: bool = False,
                 clock: Clock = time.perf_counter) -> EncoderPass:
  """The dense model (`model` without its reduction; encoder_row_forward) over one pass of `data`
  (reduction_row's batches): the dense row's outputs and the encoder's output tokens, with the [CLS] attention
  row of its last block where the model has a class token.

  Timed as time_forward on random batches, or with time_on_data on the pass's own calls as reduction_row
  times them (where the data's batches are bench_batch_size). executable: encoder_row_forward compiled ahead
  of time (compile_programs, with the same keep_assign) for the data's batches.
  """
  jitted = encoder_row_forward(model, input_fn, keep_assign)
  run = lambda v, images: _call(executable, jitted, v, images)
  batches, dense, pass_seconds = [], [], []
  for batch in data():
    outputs, features, metrics = _pass_call(run, variables, jnp.asarray(batch["image"]),
                                            clock if time_on_data else None, pass_seconds)
    batches.append((np.asarray(features), {k: np.asarray(m) for k, m in metrics.items()},
                    np.asarray(batch["mask"], bool), np.asarray(batch["label"])))
    dense.append(tuple(np.asarray(o) for o in outputs))
  if not batches:
    raise ValueError("encoder_pass: the data gave no batches")
  seconds = None
  on_data = _pass_median(pass_seconds)
  if timed and on_data is not None and on_data[0] == bench_batch_size:
    seconds = on_data[1]
  elif timed:
    shape = (bench_batch_size, model.image_size, model.image_size, 3)
    seconds = time_forward(run, variables, shape, dtype, warmup=warmup, repeats=repeats, clock=clock)["median_ms"] / 1e3
  return EncoderPass(batches=batches, dense=dense, seconds=seconds, bench_batch_size=bench_batch_size,
                     keep_assign=keep_assign, executable=executable)


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


def row_tokens(model: Any, variables: Any, reduction: Any, image_shape: Sequence[int],
               input_fn: Callable[[jax.Array], jax.Array] = normalize_images) -> tuple[tuple[int, ...], int]:
  """(token slots after each block, tokens the head reads) of `model` with `reduction` (block, post or None)
  on (H, W, 3) images.

  For a tokax ViT, the method's own static counts (token_counts, which every block method has; output_tokens
  after the dense blocks for a post reducer), which the registry's tests hold equal to the forward's shapes:
  nothing is traced. Another model (T2T-ViT) is traced (block_counts; jax.eval_shape for a post reducer's output).
  """
  from tokax.models import ViT  # noqa: PLC0415

  post = is_post(reduction)
  block = None if post else reduction
  if isinstance(model, ViT):
    prefix = int(model.class_token) + int(model.distilled)
    patch, depth = model.arch.patch_size, model.arch.depth
    num_tokens = (image_shape[0] // patch) * (image_shape[1] // patch) + prefix
    counts = (num_tokens,) * depth if block is None else block.token_counts(num_tokens, depth, prefix)
    layers = tuple(int(n) for n in counts)
    return layers, int(reduction.output_tokens(num_tokens, prefix)) if post else layers[-1]
  layers = block_counts(model.clone(reduction=block), variables, image_shape)
  if not post:
    return layers, layers[-1]
  forward = forward_fn(model, reduction, input_fn)
  size = jax.eval_shape(lambda v, x: forward(v, x)[1].size, variables,
                        jax.ShapeDtypeStruct((1, *image_shape), jnp.float32))
  return layers, int(size.shape[1])


def row_gflops(model: Any, variables: Any, reduction: Any, image_shape: Sequence[int], dtype: Any = jnp.float32, *,
               input_fn: Callable[[jax.Array], jax.Array] = normalize_images, lowered: Any = None,
               batch: int = 1) -> float:
  """GFLOPs per image of a row, from one lowering.

  On a CPU with `lowered` (the row's executable lowered for `batch` images): its cost analysis / batch (input
  scaling and top-5 included). Else XLA's count of the row's logits lowered for the CPU on one image with XLA
  attention (cpu_gflops_per_image): XLA:GPU's count of the executable misses cuBLAS / cuDNN calls.
  """
  if lowered is not None and jax.default_backend() == "cpu":
    return compiled_flops(lowered) / batch / 1e9
  forward = forward_fn(model.clone(attention="xla"), reduction, input_fn)
  return cpu_gflops_per_image(lambda v, x: forward(v, x)[0], variables, (1, *image_shape), dtype)


@functools.cache
def legacy_cpu_emitters() -> dict[str, Any]:
  """LEGACY_CPU_EMITTERS where this XLA knows the option (a one-op compile, once per process), else {}."""
  try:
    jax.jit(lambda x: x + 1, compiler_options=LEGACY_CPU_EMITTERS).lower(np.float32(0)).compile()
  except Exception:  # noqa: BLE001 - an XLA without the option compiles as configured
    return {}
  return dict(LEGACY_CPU_EMITTERS)


def row_compiler_options(reduction: Any) -> dict[str, Any]:
  """XLA options of a row's executable: on a CPU, for ToMe, PiToMe and MCTF, XLA:CPU's older elemental emitters
  instead of its fusion emitters (LEGACY_CPU_EMITTERS: the same HLO and float32 operations, without fast-math).

  Their rows of the ViT-Ti/16 at 112 px, batch 250, compiled in 16, 19 and 31 CPU seconds instead of 21, 25 and
  42; the dense model, EViT and DToMe's masked forward compiled slower that way, so they keep the default.
  {} on other backends and where this XLA lacks the option.
  """
  from tokax.reduction import MCTF, PiToMe, ToMe  # noqa: PLC0415

  if jax.default_backend() != "cpu" or not isinstance(reduction, (ToMe, PiToMe, MCTF)):
    return {}
  return legacy_cpu_emitters()


def row_outputs(logits: jax.Array, tokens: Any, k: int, keep_assign: int = 0) -> tuple[jax.Array, ...]:
  """What a row's executable returns: (top-k classes (B, k), valid tokens after the last block (B,)) (the slot
  count unless the method masks), + with keep_assign > 0 the first keep_assign images' token assignment
  (keep_assign, N0) (which final token each input token ended in; -1: pruned)."""
  valid = (jnp.full(tokens.size.shape[:1], tokens.size.shape[1], jnp.float32) if tokens.mask is None
           else jnp.sum(tokens.mask, -1).astype(jnp.float32))
  top = jax.lax.top_k(logits.astype(jnp.float32), k)[1]
  return (top, valid, tokens.assign[:keep_assign]) if keep_assign else (top, valid)


def row_forward(model: Any, reduction: Any, input_fn: Callable[[jax.Array], jax.Array] = normalize_images,
                keep_assign: int = 0) -> Callable[[Any, jax.Array], tuple[jax.Array, ...]]:
  """The executable a row runs and times: jitted (variables, images) -> row_outputs: (top-5 classes (B, 5), valid
  tokens (B,)) (+ (keep_assign, N0) assignments), of forward_fn's logits (top-k for fewer than 5 classes).

  Compiled with row_compiler_options(reduction).
  """
  forward = forward_fn(model, reduction, input_fn)
  k = min(5, model.num_classes)

  @functools.partial(jax.jit, compiler_options=row_compiler_options(reduction))
  def run(variables, images):
    return row_outputs(*forward(variables, images), k, keep_assign)

  return run


@dataclasses.dataclass(frozen=True)
class RowExecutable:
  """A jitted program (row_forward, encoder_row_forward) compiled ahead of time for one batch shape:
  reduction_row's and encoder_pass's `executable`.

  Attributes:
    lowered: its jax Lowered (its cost analysis on a CPU is the row's GFLOPs count there).
    compiled: the compiled executable, called as compiled(variables, images).
    batch_shape, dtype: the images it takes (other images go through the jitted program).
  """
  lowered: Any
  compiled: Any
  batch_shape: tuple[int, ...]
  dtype: Any


def compile_programs(programs: Sequence[Callable], variables: Any, batch_shape: Sequence[int],
                     dtype: Any = jnp.float32, *, workers: int | None = None) -> list[RowExecutable]:
  """Jitted programs (variables, images (B, H, W, 3) in `dtype`) compiled ahead of time: traced and lowered one
  after another in this thread, each compiled on one of `workers` threads as soon as it is lowered (default: one
  per CPU core; XLA releases the GIL while it compiles, and compiling, not running, is most of a row's time on a
  CPU)."""
  import concurrent.futures  # noqa: PLC0415
  import os  # noqa: PLC0415

  images = jax.ShapeDtypeStruct(tuple(batch_shape), jnp.dtype(dtype))
  with concurrent.futures.ThreadPoolExecutor(max(1, workers or os.cpu_count() or 1)) as pool:
    lowered = []
    try:
      for program in programs:
        low = program.lower(variables, images)
        lowered.append((low, pool.submit(low.compile)))
    except BaseException:
      pool.shutdown(cancel_futures=True)
      raise
    return [RowExecutable(low, compiled.result(), tuple(batch_shape), jnp.dtype(dtype)) for low, compiled in lowered]


def compile_rows(model: Any, variables: Any, reductions: Sequence[Any], batch_shape: Sequence[int],
                 dtype: Any = jnp.float32, *, input_fn: Callable[[jax.Array], jax.Array] = normalize_images,
                 keep_assign: int = 0, workers: int | None = None) -> list[RowExecutable]:
  """Every row's executable (row_forward) for (B, H, W, 3) images in `dtype`, compiled concurrently
  (compile_programs)."""
  return compile_programs([row_forward(model, r, input_fn, keep_assign) for r in reductions], variables, batch_shape,
                          dtype, workers=workers)


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


def _call(executable: RowExecutable | None, jitted: Callable, variables: Any, images: jax.Array) -> Any:
  """executable.compiled(variables, images) where it takes these images (shape and dtype), else jitted(...)."""
  if executable is not None and images.shape == executable.batch_shape and images.dtype == executable.dtype:
    return executable.compiled(variables, images)
  return jitted(variables, images)


def _pass_call(fn: Callable, variables: Any, images: jax.Array, clock: Clock | None,
               seconds: list[tuple[int, float]]) -> Any:
  """fn(variables, images) of an accuracy pass; with a clock, timed alone (its input already on the device,
  until block_until_ready, as time_forward's calls), (batch, seconds) appended to `seconds`."""
  if clock is None:
    return fn(variables, images)
  start = clock()
  output = jax.block_until_ready(fn(variables, jax.block_until_ready(images)))
  seconds.append((len(images), clock() - start))
  return output


def _pass_median(seconds: Sequence[tuple[int, float]]) -> tuple[int, float] | None:
  """(batch, median seconds) of an accuracy pass's timed calls: the first (which may compile) and batches of
  another size left out; None for fewer than three calls."""
  if len(seconds) <= 2:
    return None
  size = seconds[0][0]
  return size, statistics.median(t for b, t in seconds[1:] if b == size)


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
    encoder: the dense model's pass over `data` (encoder_pass), read by the dense row (reduction None: its
      outputs are the pass's, its time the pass's executable's, row "timing": "encoder") and by a post reducer
      (its accuracy pass reduces the encoder's outputs instead of running the encoder again; its time is the
      encoder's plus its reducer-and-head executable's, row "timing": "encoder + reducer"). Ignored for
      block methods.
    keep_assign: > 0: row["assign"] is the first keep_assign images' token assignment (keep_assign, N0)
      (tokax.reduction.visualize.draw_merges draws it); the timed executable returns it too.
    time_on_data: time the accuracy pass's own calls (each until block_until_ready; the first, which may
      compile, and batches of another size left out) instead of `repeats` extra calls on random batches:
      images/s = B / their median (row "timing": "data"). Needs three or more batches of one size.
    executable: the row's executable compiled ahead of time (compile_rows, with the same keep_assign) for
      the data's batches and the timing batch; on a CPU its lowering also gives the GFLOPs count.

  Returns:
    {"method", "tokens" (after the last block; the mean valid count for masking methods, the reducer's
    output for post reducers), "layer_tokens", "gflops_per_image", "images_per_s", "median_ms", "top1",
    "top5", "agreement", "num_examples", "predictions" ((N,) int32 numpy: pop it before serialising)}
    (+ "assign" with keep_assign, numpy: pop it too).
  """
  jitted = row_forward(model, reduction, input_fn, keep_assign)
  evaluate = lambda v, images: _call(executable, jitted, v, images)
  cached = encoder is not None and (reduction is None or is_post(reduction))
  if cached and encoder.keep_assign != keep_assign:
    raise ValueError(f"reduction_row: the encoder pass kept {encoder.keep_assign} assignments; this row keeps "
                     f"{keep_assign}")
  if cached and reduction is not None:
    head_fn, k = post_head(model, reduction), min(5, model.num_classes)

    @jax.jit
    def head(v, features, metrics):
      return row_outputs(*head_fn(v, features, metrics), k, keep_assign)
  row = {"method": method or ("dense" if reduction is None else type(reduction).__name__),
         "tokens": None, "layer_tokens": None, "gflops_per_image": None, "images_per_s": None, "median_ms": None,
         "top1": None, "top5": None, "agreement": None, "num_examples": 0, "predictions": None}
  valid_counts, pass_seconds = [], []  # pass_seconds: (batch size, seconds) of timed accuracy-pass calls
  if data is not None:
    batches = _dataset_batches(data, eval_batch_size) if isinstance(data, offline.ArrayDataset) else data
    tops, labels, outputs = [], [], []
    if cached and reduction is None:  # the dense row: the encoder pass's own outputs
      outputs = [(out, mask, label) for out, (_, _, mask, label) in zip(encoder.dense, encoder.batches)]
    elif cached:
      for features, metrics, mask, label in (progress(encoder.batches) if progress else encoder.batches):
        outputs.append((head(variables, features, {s: metrics[s] for s in reduction.scores}), mask, label))
    for batch in () if cached else (progress(batches()) if progress else batches()):
      images = jnp.asarray(batch["image"])
      image_shape = images.shape[1:]
      output = _pass_call(evaluate, variables, images, clock if time_on_data else None, pass_seconds)
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

  lowered, lowered_batch = (executable.lowered, executable.batch_shape[0]) if executable is not None else (None, 1)
  if cached and reduction is None and encoder.executable is not None and jax.default_backend() == "cpu":
    shape = encoder.executable.batch_shape  # the dense row's own executable, lowered (not compiled): its count
    lowered, lowered_batch = jitted.lower(variables, jax.ShapeDtypeStruct(shape, encoder.executable.dtype)), shape[0]
  row["gflops_per_image"] = row_gflops(model, variables, reduction, image_shape, dtype, input_fn=input_fn,
                                       lowered=lowered, batch=lowered_batch)
  layer_tokens, row["tokens"] = row_tokens(model, variables, reduction, image_shape, input_fn)
  row["layer_tokens"] = list(layer_tokens)
  if variable_tokens:
    row["tokens"] = float(np.mean(np.concatenate(valid_counts)))
  elif valid_counts and np.any(np.concatenate(valid_counts) != row["tokens"]):
    raise ValueError(f"reduction_row: {row['method']} states {row['tokens']} tokens after the last block "
                     f"(token_counts / output_tokens); its forward kept {np.unique(np.concatenate(valid_counts))}")
  if timed and cached:  # the encoder pass's time (+ the reducer-and-head executable's, on random tokens)
    if encoder.seconds is None or encoder.bench_batch_size != bench_batch_size:
      raise ValueError(f"reduction_row: the encoder pass was timed at batch {encoder.bench_batch_size} "
                       f"({'not timed' if encoder.seconds is None else 'timed'}); this row times batch {bench_batch_size}")
    seconds = encoder.seconds
    if reduction is not None:
      features = encoder.batches[0][0]
      scores = {s: jnp.full((bench_batch_size, features.shape[1]), 1.0 / features.shape[1], jnp.float32)
                for s in reduction.scores}
      reducer = time_forward(lambda v, f: head(v, f, scores), variables, (bench_batch_size, *features.shape[1:]),
                             dtype, warmup=warmup, repeats=repeats, clock=clock)
      seconds += reducer["median_ms"] / 1e3
    row.update(images_per_s=bench_batch_size / seconds, median_ms=seconds * 1e3,
               timing="encoder" if reduction is None else "encoder + reducer")
  elif timed and time_on_data and _pass_median(pass_seconds) is not None:
    size, median = _pass_median(pass_seconds)
    row.update(images_per_s=size / median, median_ms=median * 1e3, timing="data")
  elif timed:  # the accuracy pass's executable, on random batches (the same shapes compile once)
    row.update(time_forward(evaluate, variables, (bench_batch_size, *image_shape), dtype, warmup=warmup,
                            repeats=repeats, clock=clock))
  return row
