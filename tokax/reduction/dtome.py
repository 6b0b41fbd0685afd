"""DToMe: dynamic token merging with calibrated per-layer thresholds (DyMU, Wang et al., NeurIPS 2025).

Equal to MikeWangWZHL/dymu (src/open_clip/tome.py: `bipartite_soft_matching` with
`specified_threshold`, `batch_level_bipartite_soft_matching`, `batch_level_merge_wavg`,
`ToMEBlock.threshold_running_avg`; the same functions drive open_clip's
`ToMEResidualAttentionBlock` in transformer.py) on the same weights and inputs.

Two phases, per layer l with a ToMe-style merge target r_l:

- Calibration (`DToMeCalibration` in the model, then `calibrate_thresholds`): the official
  "batch-level" merge. Every A token's best B edge is ranked over the WHOLE batch; the top
  r_l * B edges merge (so redundant images give up more tokens), and the layer's batch threshold
  is max(score of the first edge NOT merged, 0). Thresholds are averaged over calibration
  batches: theta <- (theta * n + theta_batch) / (n + 1).
- Inference (`DToMe(thresholds=...)`): the official per-image (B == 1) path, i.e. ToMe with a
  data-dependent r per image: r = #{A tokens whose best edge > theta_l} (strict), clipped to
  (N_valid - protected) // 2 and to max_r.

Static shapes: every layer keeps N token slots. Valid tokens come first, in the official order
([kept A, B], as ToMe, then the slots emptied by merging as masked padding at the end), so the
next layer's even/odd A/B split is the official one. `Tokens.mask` marks the valid slots;
attention ignores masked keys (kernels.attention key_mask), masked tokens are never a merge
source or destination, and their sizes are 0 (so gap pooling ignores them). jit compiles once
per threshold set whatever the per-image counts are.

Compute: masking saves no FLOPs in dense attention or the MLP: every layer still processes N
slots. The saving needs compaction to a smaller static capacity (there is no exact static bound
below N: an image may merge nothing) or a kernel that skips masked tiles.

Deliberate differences from the official code, none of which changes a result on valid inputs:
- stable sorts. The official batch-level merge moves padding last with torch.argsort on a 0/1
  key, which torch does NOT do stably (CPU and GPU): valid tokens come out in an
  implementation-defined order, and later layers' A/B splits (hence merges and thresholds) depend
  on it. tokax keeps them in order: [kept A (index order), B (index order)]. The goldens were made
  with torch's argsort made stable; their json records the unpatched run's thresholds, which
  drift by up to ~2e-2 from the stable ones on the same batches.
- batch-level merges only take finite edges. Official calibration merges the top r_l * B edges
  even when fewer are finite (CLS rows, padding, rows masked by max_r): with
  max_r_per_instance_ratio < 1 it merges such tokens into B[0]; tokax leaves them (the batch
  threshold is the same: max(-inf, 0) = 0).
- calibration keeps the official x / (size + 1e-4) (`size_eps`); the running mean has no
  "threshold == 1.0 means uninitialised" sentinel (official re-initialises a mean that is
  exactly 1.0, e.g. after a batch of constant images); no DDP all-reduce (calibrate on one
  global batch, or average states yourself).
- layers with r_l = 0 (or never calibrated) get theta = +inf (never merge); the official
  buffer stays at 1.0 and the block skips merging when r_l = 0.
- zero key vectors get similarity 0 instead of NaN (no eps in the official normalisation).
- attention: the official timm block's non-fused branch adds log(size) AFTER the softmax (a bug;
  not taken with timm's default fused attention); tokax adds it to the logits, like the fused
  branch and the open_clip block.

Usage: `calibrate_dtome(model, params, batches, DToMeCalibration(r=8))` runs the steps below.
By hand (a ViT; tokax.models.vit.Block / Attention are the modules whose outputs are read):

  calib = model.clone(reduction=DToMeCalibration(r=r_schedule(12, r_total=120)))
  read = lambda mdl, method: method == "__call__" and isinstance(mdl, (Block, Attention))
  state = None
  for images in batches:
    _, inter = calib.apply(params, images, capture_intermediates=read, mutable=["intermediates"])
    blocks = [inter["intermediates"][f"blocks_{i}"] for i in range(12)]
    keys = [b["attn"]["__call__"][0][1]["keys"] for b in blocks]
    masks = [None] + [b["__call__"][0].mask for b in blocks[:-1]]
    state = calibrate_thresholds(state, keys, masks, r=calib.reduction.r, has_cls=True)
  logits = model.clone(reduction=DToMe.from_state(state)).apply(params, images)
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, Iterable, Sequence, Union

import flax.struct
import jax
import jax.numpy as jnp

from tokax.kernels import matching
from tokax.reduction.tome import check_matching
from tokax.reduction.tokens import MergePlan, Tokens, apply_plan

Array = jax.Array
MaxR = Union[int, Sequence[Union[int, None]], None]

R_SCHEDULES = ("constant", "linear", "reverse_linear")
SIZE_EPS = 1e-4  # batch_level_merge_wavg: x / (size + 1e-4)


def r_schedule(depth: int, r_total: int, schedule: str = "constant") -> tuple[int, ...]:
  """DyMU's per-layer merge targets (`_get_rs`): r_total tokens removed over `depth` layers.

  "constant": r_total // depth, the remainder added to the first layers. "linear": decreasing,
  r0 = 2 r_total // depth, s_i = int(r0 - i r0 / depth) until the sum reaches r_total (the last
  layers get 0). "reverse_linear": linear reversed.
  """
  if schedule not in R_SCHEDULES:
    raise ValueError(f"r_schedule: schedule must be one of {R_SCHEDULES}; got {schedule!r}")
  if depth < 1 or r_total < 0:
    raise ValueError(f"r_schedule: need depth >= 1 and r_total >= 0; got depth={depth}, r_total={r_total}")
  if r_total == 0:
    return (0,) * depth
  if schedule == "constant":
    base, rem = divmod(r_total, depth)
    return tuple(base + (i < rem) for i in range(depth))
  r0 = (2 * r_total) // depth
  step = r0 / depth
  s: list[int] = []
  while sum(s) + int(r0 - len(s) * step) < r_total:
    s.append(int(r0 - len(s) * step))
  if sum(s) < r_total:
    s.append(r_total - sum(s))
  if len(s) > depth:
    raise ValueError(f"r_schedule: r_total={r_total} does not fit a linear schedule over {depth} layers")
  s += [0] * (depth - len(s))
  return tuple(s) if schedule == "linear" else tuple(s[::-1])


def _edges(metric: Array, valid: Array, *, has_cls: bool, has_dist: bool, implementation: str = "xla",
           interpret: bool = False) -> tuple[Array, Array]:
  """Each A token's best B edge. metric (B, N, D), valid (B, N) -> node_max, node_idx (B, |A|).

  Cosine similarities of keys; the class token (A[0]) never leaves, the distillation token (B[0])
  never receives, masked tokens take no part: their edges are -inf.
  """
  return matching.bipartite_matching(metric, has_cls=has_cls, has_dist=has_dist, key_mask=valid,
                                     implementation=implementation, interpret=interpret)


def _descending_rank(values: Array) -> tuple[Array, Array]:
  """Stable descending sort along the last axis: (order, rank) with values[order] descending."""
  order = jnp.argsort(-values, axis=-1, stable=True)
  ranks = jnp.broadcast_to(jnp.arange(values.shape[-1], dtype=jnp.int32), values.shape)
  rank = jnp.zeros(values.shape, jnp.int32)
  rank = jnp.put_along_axis(rank, order, ranks, axis=-1, inplace=False)
  return order, rank


def _layout(valid: Array, is_src: Array, node_idx: Array, order: Array, rank: Array, reorder: Array, *,
            kept_by_index: bool, has_dist: bool) -> Array:
  """Output slot of every input token for a ToMe merge in a fixed-size masked layout.

  Valid outputs come first: [kept A, B (index order)] (with a distillation token
  [kept A0, B0, kept A1.., B1..]); kept A are in index order when kept_by_index, else in
  descending edge order (ToMe without a class token). Masked inputs follow in index order; the
  slots left over receive nothing. Images with reorder False keep the identity layout.

  Args:
    valid: (B, N) bool. is_src: (B, |A|) A tokens that merge. node_idx: (B, |A|) their B partner.
    order, rank: (B, |A|) stable descending edge order and its inverse.
    reorder: (B,) bool, whether the image's tokens move at all.

  Returns:
    dst (B, N) int32, a permutation of the slots except that sources share their partner's slot.
  """
  n = valid.shape[1]
  a_valid, b_valid = valid[:, 0::2], valid[:, 1::2]
  kept = a_valid & ~is_src
  num_kept = kept.sum(-1, dtype=jnp.int32)[:, None]
  if kept_by_index:
    kept_pos = jnp.cumsum(kept, axis=-1, dtype=jnp.int32) - 1
  else:
    kept_in_order = jnp.take_along_axis(kept, order, axis=-1)
    kept_pos = jnp.take_along_axis(jnp.cumsum(kept_in_order, axis=-1, dtype=jnp.int32) - 1, rank, axis=-1)
  pos_b = num_kept + jnp.cumsum(b_valid, axis=-1, dtype=jnp.int32) - 1
  pos_a = jnp.where(is_src, jnp.take_along_axis(pos_b, node_idx, axis=-1), kept_pos)
  if has_dist:  # [unm0, dst0, unm1.., dst1..]; padding slots (> every valid slot) stay
    dist = lambda p: jnp.where(p == 0, 0, jnp.where(p == num_kept, 1, jnp.where(p < num_kept, p + 1, p)))
    pos_a, pos_b = dist(pos_a), dist(pos_b)
  num_valid_out = num_kept + b_valid.sum(-1, dtype=jnp.int32)[:, None]
  pad = num_valid_out + jnp.cumsum(~valid, axis=-1, dtype=jnp.int32) - 1
  pos_a = jnp.where(a_valid, pos_a, pad[:, 0::2])
  pos_b = jnp.where(b_valid, pos_b, pad[:, 1::2])
  if pos_b.shape[1] < pos_a.shape[1]:  # odd N: interleave [a0, b0, a1, b1, ..., a_last]
    pos_b = jnp.pad(pos_b, ((0, 0), (0, 1)))
  dst = jnp.stack([pos_a, pos_b], axis=-1).reshape(pos_a.shape[0], -1)[:, :n]
  return jnp.where(reorder[:, None], dst, jnp.arange(n, dtype=jnp.int32)[None])


def _valid(metric: Array, mask: Array | None) -> Array:
  return jnp.ones(metric.shape[:2], bool) if mask is None else mask.astype(bool)


def threshold_plan(metric: Array, mask: Array | None, threshold: float | Array, *, has_cls: bool,
                   has_dist: bool = False, max_r: int | None = None, matching_implementation: str = "xla",
                   interpret: bool = False) -> tuple[MergePlan, Array]:
  """DyMU inference merge (the per-image B == 1 path) for a whole batch, as a fixed-size plan.

  Per image: r = #{valid A tokens whose best edge > threshold}, clipped to
  (N_valid - protected) // 2 and then to max_r; the r best edges merge (ToMe). Tokens are then
  laid out as ToMe does ([kept A, B]) with the emptied slots last; an image where no edge passes
  keeps its layout (the official call returns do_nothing).

  Args:
    metric: (B, N, D) keys averaged over heads.
    mask: (B, N) bool valid tokens (a prefix: what DToMe produces), or None for all.
    threshold: the layer's theta (+inf: nothing merges; -inf: as much as the clip allows).
    has_cls, has_dist: protected class (never merged away) / distillation (never merged into) token.
    max_r: per-image cap (official max_r_per_instance = int(ratio * r_l)), or None.
    matching_implementation: "xla" (dense similarities), "pallas" (kernels.matching) or "auto".
    interpret: run the Pallas matching kernel in interpret mode (CPU tests).

  Returns:
    MergePlan with num_out = N, and r (B,) int32 tokens merged per image.
  """
  valid = _valid(metric, mask)
  node_max, node_idx = _edges(metric, valid, has_cls=has_cls, has_dist=has_dist,
                              implementation=matching_implementation, interpret=interpret)
  protected = int(has_cls) + int(has_dist)
  n_valid = valid.sum(-1, dtype=jnp.int32)
  r = jnp.minimum((node_max > threshold).sum(-1, dtype=jnp.int32), (n_valid - protected) // 2)
  reorder = r > 0
  if max_r is not None:
    r = jnp.minimum(r, max_r)
  r = jnp.maximum(r, 0)
  order, rank = _descending_rank(node_max)
  is_src = rank < r[:, None]
  dst = _layout(valid, is_src, node_idx, order, rank, reorder, kept_by_index=has_cls, has_dist=has_dist)
  return MergePlan(dst=dst, weight=None, num_out=metric.shape[1]), r


def batch_level_plan(metric: Array, mask: Array | None, r: int, *, has_cls: bool, has_dist: bool = False,
                     max_r: int | None = None, matching_implementation: str = "xla",
                     interpret: bool = False) -> tuple[MergePlan, Array, Array]:
  """DyMU calibration merge: the top r * B edges of the whole batch merge.

  r is first clipped to (t - protected) // 2 with t the longest image's valid count (the official
  code truncates the batch to it). With max_r, an image's edges beyond its max_r best are dropped
  first. Only finite edges merge (see the module docstring). When the clipped r > 0 every image
  is laid out as [kept A (index order), B (index order), padding].

  Args:
    metric: (B, N, D) keys averaged over heads. mask: (B, N) bool or None.
    r: the layer's merge target (per image, on average). has_cls, has_dist, max_r,
      matching_implementation, interpret: as threshold_plan.

  Returns:
    (plan with num_out = N, batch threshold () float32 = max(score of the first edge not
    merged, 0), merged () bool: whether the layer merged, i.e. the threshold counts).
  """
  valid = _valid(metric, mask)
  batch, _ = valid.shape
  node_max, node_idx = _edges(metric, valid, has_cls=has_cls, has_dist=has_dist,
                              implementation=matching_implementation, interpret=interpret)
  order, rank = _descending_rank(node_max)
  if max_r is not None:
    node_max = jnp.where(rank < max_r, node_max, -jnp.inf)
  protected = int(has_cls) + int(has_dist)
  longest = valid.sum(-1, dtype=jnp.int32).max()
  r_eff = jnp.minimum(r, (longest - protected) // 2)
  merged = (r_eff > 0) & (r > 0)
  budget = r_eff * batch
  flat = node_max.reshape(-1)  # image-major, as the official (b i) flattening
  flat_order, flat_rank = _descending_rank(flat)
  is_src = (flat_rank.reshape(node_max.shape) < budget) & jnp.isfinite(node_max) & merged
  first_kept = flat[flat_order[jnp.clip(budget, 0, flat.shape[0] - 1)]]
  threshold = jnp.maximum(first_kept, 0.0)
  dst = _layout(valid, is_src, node_idx, order, rank, jnp.broadcast_to(merged, (batch,)),
                kept_by_index=True, has_dist=has_dist)
  return MergePlan(dst=dst, weight=None, num_out=metric.shape[1]), threshold, merged


def _with_mask(tokens: Tokens) -> Tokens:
  if tokens.mask is not None:
    return tokens
  return tokens.replace(mask=jnp.ones(tokens.size.shape, bool))


def _per_layer(value: MaxR, depth: int, field: str) -> tuple[int | None, ...]:
  if value is None or isinstance(value, int):
    if isinstance(value, bool) or (value is not None and value < 0):
      raise ValueError(f"{field}: expected a non-negative int, a per-layer tuple or None; got {value!r}")
    return (value,) * depth
  values = tuple(value)
  if len(values) != depth:
    raise ValueError(f"{field}: {len(values)} per-layer values for a depth-{depth} model; give one per block")
  for v in values:
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
      raise ValueError(f"{field}: per-layer values must be non-negative ints or None; got {values!r}")
  return values


def _check_max_r(max_r: MaxR, field: str) -> MaxR:
  if max_r is None or isinstance(max_r, int):
    _per_layer(max_r, 1, field)
    return max_r
  values = tuple(max_r)
  _per_layer(values, len(values), field)
  return values


@dataclasses.dataclass(frozen=True)
class DToMe:
  """Threshold merging at inference, placed between the attention residual and the MLP.

  Attributes:
    thresholds: per-layer theta_l (one per block). +inf: the layer never merges (DyMU layers
      with r_l = 0); -inf: merges as much as ToMe's clip allows. Usually
      `DToMe.from_state(calibrate_thresholds(...))`.
    max_r: per-image cap on the merges of a layer: an int for every layer, a per-layer tuple
      (DyMU: int(max_r_per_instance_ratio * r_l)) or None.
    prop_attn: proportional attention (log size added to each key's logit), as DyMU.
    merge: how merged groups are summed: "auto", "scatter" or "matmul" (see apply_plan).
    matching: how A tokens find their B partner: "xla", "pallas" (kernels.matching) or "auto".
    interpret: run the Pallas matching kernel in interpret mode (how the CPU runs it).
  """
  placement: ClassVar[str] = "mid"
  scores: ClassVar[tuple[str, ...]] = ()
  strength_field: ClassVar[str] = "thresholds"
  needs_calibration: ClassVar[bool] = False
  variable_tokens: ClassVar[bool] = True

  thresholds: tuple[float, ...]
  max_r: MaxR = None
  prop_attn: bool = True
  merge: str = "auto"
  matching: str = "xla"
  interpret: bool = False

  def __post_init__(self):
    check_matching(self.matching, "DToMe")
    try:
      thresholds = tuple(float(t) for t in self.thresholds)
    except (TypeError, ValueError):
      raise ValueError(f"DToMe.thresholds: expected a sequence of floats (one per block); got {self.thresholds!r}")
    if not thresholds or any(math.isnan(t) for t in thresholds):
      raise ValueError(f"DToMe.thresholds: need one non-NaN float per block (+inf = no merging); got {thresholds!r}")
    object.__setattr__(self, "thresholds", thresholds)
    object.__setattr__(self, "max_r", _check_max_r(self.max_r, "DToMe.max_r"))

  @classmethod
  def from_state(cls, state: "ThresholdState", **kwargs) -> "DToMe":
    """Inference thresholds from calibration: layers never calibrated get +inf."""
    thresholds = [float(t) if int(c) > 0 else math.inf for t, c in zip(jax.device_get(state.thresholds),
                                                                         jax.device_get(state.counts))]
    return cls(thresholds=tuple(thresholds), **kwargs)

  def token_counts(self, num_tokens: int, depth: int, num_prefix: int = 1) -> tuple[int, ...]:
    """(depth,) token slots after each block: always N (the valid tokens, at most N, are marked by the mask)."""
    del num_prefix
    return (num_tokens,) * depth

  def reduce(self, tokens: Tokens, metrics: dict[str, Array], *, layer: int, depth: int) -> Tokens:
    if len(self.thresholds) != depth:
      raise ValueError(f"DToMe.thresholds: {len(self.thresholds)} thresholds for a depth-{depth} model; "
                       "give one per block (+inf for blocks that never merge)")
    theta = self.thresholds[layer]
    if theta == math.inf:
      return tokens
    plan, _ = threshold_plan(metrics["keys"], tokens.mask, theta, has_cls=tokens.has_cls, has_dist=tokens.has_dist,
                             max_r=_per_layer(self.max_r, depth, "DToMe.max_r")[layer],
                             matching_implementation=self.matching, interpret=self.interpret)
    return apply_plan(_with_mask(tokens), plan, method=self.merge)


@dataclasses.dataclass(frozen=True)
class DToMeCalibration:
  """The batch-level merge DyMU runs while calibrating thresholds (training / update_threshold).

  Run the model with this reduction on calibration batches, read each block's keys and input
  mask, and fold them into the running thresholds with `calibrate_thresholds` (see its doc).

  The registry's "dtome" entry: `build("dtome:8")` is DToMeCalibration(r=8), which
  `calibrate_dtome(model, params, batches, calibration)` turns into DToMe (needs_calibration).

  Attributes:
    r: merge targets: an int for the same target in every block (r_schedule(depth, r * depth)),
      or per-layer targets, e.g. r_schedule(depth, r_total, "linear").
    max_r: per-image cap, as DToMe.max_r.
    prop_attn: proportional attention.
    size_eps: the official batch-level merge divides the summed features by (size + 1e-4), not
      size; 0 gives the exact size-weighted mean.
    merge: "auto", "scatter" or "matmul" (see apply_plan).
    matching, interpret: as DToMe.
  """
  placement: ClassVar[str] = "mid"
  scores: ClassVar[tuple[str, ...]] = ()
  strength_field: ClassVar[str] = "r"
  needs_calibration: ClassVar[bool] = True
  variable_tokens: ClassVar[bool] = True

  r: int | tuple[int, ...] = 8
  max_r: MaxR = None
  prop_attn: bool = True
  size_eps: float = SIZE_EPS
  merge: str = "auto"
  matching: str = "xla"
  interpret: bool = False

  def __post_init__(self):
    check_matching(self.matching, "DToMeCalibration")
    scalar = isinstance(self.r, int) and not isinstance(self.r, bool)
    try:
      r = (self.r,) if scalar else tuple(self.r)
    except TypeError:
      r = ()
    if not r or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in r):
      raise ValueError(f"DToMeCalibration.r: expected tokens merged per block, an int >= 0 or a per-layer tuple of "
                       f"them (see r_schedule); got {self.r!r}")
    r = r[0] if scalar else r
    if not self.size_eps >= 0:
      raise ValueError(f"DToMeCalibration.size_eps: expected >= 0; got {self.size_eps!r}")
    object.__setattr__(self, "r", r)
    object.__setattr__(self, "max_r", _check_max_r(self.max_r, "DToMeCalibration.max_r"))

  def layer_r(self, depth: int) -> tuple[int, ...]:
    """(depth,) merge target of every block."""
    if isinstance(self.r, int):
      return r_schedule(depth, self.r * depth)
    if len(self.r) != depth:
      raise ValueError(f"DToMeCalibration.r: {len(self.r)} values for a depth-{depth} model; give one per block "
                       "or an int for every block")
    return self.r

  def token_counts(self, num_tokens: int, depth: int, num_prefix: int = 1) -> tuple[int, ...]:
    """(depth,) token slots after each block: always N (merged-away slots are masked)."""
    del num_prefix
    self.layer_r(depth)
    return (num_tokens,) * depth

  def reduce(self, tokens: Tokens, metrics: dict[str, Array], *, layer: int, depth: int) -> Tokens:
    r = self.layer_r(depth)[layer]
    if r == 0:
      return tokens
    plan, _, merged = batch_level_plan(metrics["keys"], tokens.mask, r, has_cls=tokens.has_cls,
                                       has_dist=tokens.has_dist,
                                       max_r=_per_layer(self.max_r, depth, "DToMeCalibration.max_r")[layer],
                                       matching_implementation=self.matching, interpret=self.interpret)
    out = apply_plan(_with_mask(tokens), plan, method=self.merge)
    if self.size_eps:
      scale = jnp.where(merged, out.size / (out.size + self.size_eps), 1.0)
      out = out.replace(x=(out.x.astype(jnp.float32) * scale[..., None]).astype(out.x.dtype))
    return out


@flax.struct.dataclass
class ThresholdState:
  """Running per-layer thresholds. thresholds: (L,) float32 means; counts: (L,) int32 batches seen."""
  thresholds: Array
  counts: Array

  @classmethod
  def create(cls, depth: int) -> "ThresholdState":
    return cls(thresholds=jnp.full((depth,), jnp.inf, jnp.float32), counts=jnp.zeros((depth,), jnp.int32))


def calibrate_thresholds(state: ThresholdState | None, keys: Sequence[Array], masks: Sequence[Array | None], *,
                         r: Sequence[int], has_cls: bool, has_dist: bool = False,
                         max_r: MaxR = None) -> ThresholdState:
  """Fold one calibration batch into the running thresholds (pure; jit-able).

  For every layer with r_l > 0 that merged, theta_batch = max(score of the first edge not merged
  in the batch-level ranking, 0) and theta <- (theta * n + theta_batch) / (n + 1), n += 1 (the
  first batch sets theta). The inputs come from one model run with DToMeCalibration(r=r, ...):

    keys[l]:  (B, N, Dh) block l's keys averaged over heads (metrics["keys"]),
    masks[l]: (B, N) bool the tokens' mask entering block l (None before any merge).

  Args:
    state: running state, or None to start (ThresholdState.create).
    keys, masks: one entry per block. r, max_r: as in DToMeCalibration.
    has_cls, has_dist: the model's protected tokens.

  Returns:
    the updated ThresholdState.
  """
  depth = len(r)
  if len(keys) != depth or len(masks) != depth:
    raise ValueError(f"calibrate_thresholds: got {len(keys)} keys and {len(masks)} masks for {depth} layers in r; "
                     "pass one of each per block")
  state = ThresholdState.create(depth) if state is None else state
  caps = _per_layer(_check_max_r(max_r, "calibrate_thresholds max_r"), depth, "calibrate_thresholds max_r")
  batch_theta, merged = [], []
  for layer in range(depth):
    if r[layer] == 0:
      batch_theta.append(jnp.float32(0.0))
      merged.append(jnp.bool_(False))
      continue
    _, theta, did = batch_level_plan(keys[layer], masks[layer], r[layer], has_cls=has_cls, has_dist=has_dist,
                                     max_r=caps[layer])
    batch_theta.append(theta)
    merged.append(did)
  theta = jnp.stack(batch_theta).astype(jnp.float32)
  merged = jnp.stack(merged)
  n = state.counts.astype(jnp.float32)
  mean = jnp.where(state.counts == 0, theta, (state.thresholds * n + theta) / (n + 1.0))
  return ThresholdState(thresholds=jnp.where(merged, mean, state.thresholds),
                        counts=state.counts + merged.astype(jnp.int32))


def _is_block_call(module: Any, method: str) -> bool:
  """capture_intermediates filter: the __call__ of a block ("blocks_i") or of its attention ("attn")."""
  return method == "__call__" and (module.name or "").startswith(("blocks_", "attn"))


def calibrate_dtome(model: Any, params: Any, batches: Iterable[Array], calibration: DToMeCalibration) -> DToMe:
  """DToMe with thresholds calibrated by running `model` with `calibration` over `batches` (B, H, W, 3).

  DyMU's recipe: each batch's batch-level merge gives per-layer thresholds, averaged over batches.
  `model` is duck-typed (tokax.models.ViT or T2TViT: `clone(reduction=)`, `arch.depth`,
  `class_token`, `distilled`, blocks named "blocks_i" with an "attn" child returning metrics["keys"]).
  """
  depth = model.arch.depth
  r = calibration.layer_r(depth)
  calib = model.clone(reduction=calibration)
  has_cls, has_dist = bool(getattr(model, "class_token", True)), bool(getattr(model, "distilled", False))

  @jax.jit
  def update(state: ThresholdState, images: Array) -> ThresholdState:
    _, inter = calib.apply(params, images, capture_intermediates=_is_block_call, mutable=["intermediates"])
    blocks = [inter["intermediates"][f"blocks_{i}"] for i in range(depth)]
    keys = [b["attn"]["__call__"][0][1]["keys"] for b in blocks]
    masks = [None] + [b["__call__"][0].mask for b in blocks[:-1]]
    return calibrate_thresholds(state, keys, masks, r=r, has_cls=has_cls, has_dist=has_dist,
                                max_r=calibration.max_r)

  state, seen = ThresholdState.create(depth), 0
  for images in batches:
    state, seen = update(state, images), seen + 1
  if not seen:
    raise ValueError("calibrate_dtome: got no calibration batches")
  return DToMe.from_state(state, max_r=calibration.max_r, prop_attn=calibration.prop_attn,
                          merge=calibration.merge, matching=calibration.matching, interpret=calibration.interpret)
