"""PiToMe: energy-protected token merging (Tran et al., NeurIPS 2024).

Equal to hchautran/PiToMe (algo/pitome/merge.py `pitome_vision`, `pitome`, `pitome_bsm` +
`merge_wavg`, and the DeiT / MAE timm patches' placement, margin and mode schedules) on the same
weights and inputs.

Per layer, with T the non-prefix tokens and r = floor(T - T * ratio) tokens removed:

  m = keys / max(||keys||, 1e-12)                   (F.normalize)
  energy_i = mean_j ELU(m_i . m_j - margin, alpha)  (high = inside a cluster of similar tokens)
  order = tokens by descending energy

- "pitome" (protected): the 2r highest-energy tokens alternate into A (ranks 0, 2, ..) and
  B (ranks 1, 3, ..); every A token merges into its most similar B token; the other T - 2r
  tokens are kept. Output order: [prefix, kept (descending energy), B (energy-rank order)].
- "bsm" (`pitome_bsm`): all T tokens alternate into A/B by energy rank, then ToMe's bipartite
  step: the r A tokens with the best B match merge. Output order: [prefix, unmerged A (by
  descending match score, not re-sorted), B (energy-rank order)].

Merging is the size-weighted average (merge_wavg), expressed as a MergePlan. The output order is
the official one: the traced source matrices then agree row for row, and the next layer's
tie-breaking (stable sorts by index) sees the same token order.

Deliberate differences from the official code, none of which changes a result on valid inputs:
- argsorts are stable (torch's default is not): on exact energy or score ties tokax ranks the
  lower index first. Duplicate tokens (constant images) make such ties.
- a distillation token (has_dist) is protected like the class token. The official pitome_vision
  only excludes the class token, so it would merge a DeiT distillation token like a patch.
- prop_attn defaults to False: the released timm/DeiT/MAE patches track sizes but never pass them
  to attention. prop_attn=True is offered as an option (add log size to the key logits).
- the similarities are computed in float32 whatever the metric's dtype.
- a layer too small to merge anything while ratio < 1 (r = 0, e.g. T < 20 at ratio 0.95): the
  official pitome_bsm still reorders the tokens, and tokax does the same (a permutation plan);
  the official `pitome` fails there (max over an empty axis), tokax reorders as it would have:
  [prefix, tokens by descending energy]. Fewer than 2 mergeable tokens: identity.

MAE global pooling: the official MAE patch pools sum(size * x) / 3 (it reads T = x.shape[1] before
patch_embed, i.e. the image channels; reference §3.5). tokax's ViT(pool="gap") divides by the summed
sizes, the number of patches: the intended size-weighted mean. fc_norm follows, and LayerNorm is
scale-invariant up to its eps, so the logits differ only by the factor
sqrt((var + eps) / (var + eps (3/P)^2)) on the normalised part (~1e-6 relative for O(1) features;
tests/reduction/test_pitome.py quantifies it and checks the official pooled vector).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import ClassVar, Sequence, Union

import jax
import jax.numpy as jnp

from tokax.kernels import matching
from tokax.reduction.tome import check_matching
from tokax.reduction.tokens import MergePlan, Tokens, apply_plan

Array = jax.Array

MODES = ("pitome", "bsm")
SCHEDULES = ("deit", "mae")
NORMALIZE_EPS = 1e-12  # torch.nn.functional.normalize


def merge_count(num_tokens: int, ratio: float) -> int:
  """Tokens removed from T mergeable tokens: floor(T - T * ratio), 0 when ratio >= 1 (merge.py)."""
  if ratio >= 1.0:
    return 0
  return max(0, math.floor(num_tokens - num_tokens * ratio))


def layer_margin(m0: float, layer: int, depth: int) -> float:
  """m_l = m0 (1 - l / L), evaluated as the DeiT/MAE patches do (m0 - m0 * (l / L)) in float64."""
  return m0 - m0 * (layer / depth)


def schedule_modes(mode: str | Sequence[str], depth: int) -> tuple[str, ...]:
  """Per-layer merge mode: "deit" = first ceil(L/2) layers "bsm", the rest "pitome"; "mae" the opposite."""
  if isinstance(mode, str):
    if mode not in SCHEDULES:
      raise ValueError(f"PiToMe.mode: expected one of {SCHEDULES} or a per-layer tuple of {MODES}; got {mode!r}")
    first = math.ceil(depth * 0.5)
    head, tail = ("bsm", "pitome") if mode == "deit" else ("pitome", "bsm")
    return (head,) * first + (tail,) * (depth - first)
  modes = tuple(mode)
  if len(modes) != depth:
    raise ValueError(f"PiToMe.mode: the per-layer tuple has {len(modes)} entries but the model has {depth} "
                     f"layers; give one of {MODES} per layer or use 'deit' / 'mae'")
  return modes


def normalize(metric: Array) -> Array:
  """(B, T, D) -> float32 rows divided by max(||row||, 1e-12) (F.normalize)."""
  m = metric.astype(jnp.float32)
  return m / jnp.maximum(jnp.linalg.norm(m, axis=-1, keepdims=True), NORMALIZE_EPS)


def energy_scores(metric: Array, margin: float, alpha: float = 1.0) -> tuple[Array, Array]:
  """PiToMe's energy score.

  Args:
    metric: (B, T, D) features of the mergeable tokens (keys averaged over heads).
    margin: ELU margin m of this layer.
    alpha: ELU alpha.

  Returns:
    energy (B, T) = mean_j ELU(cos_ij - margin), and the cosine similarities sim (B, T, T), both
    float32. A zero vector has similarity 0 to everything (F.normalize's eps), never NaN.
  """
  m = normalize(metric)
  sim = jnp.einsum("bid,bjd->bij", m, m, precision=jax.lax.Precision.HIGHEST)
  energy = jax.nn.elu(sim - jnp.float32(margin), alpha=alpha).mean(axis=-1)
  return energy, sim


def _inverse_permutation(order: Array) -> Array:
  """(B, T) permutations -> (B, T) inverse: rank[b, order[b, p]] = p."""
  positions = jnp.arange(order.shape[-1], dtype=jnp.int32)
  return jax.vmap(lambda o: jnp.zeros_like(o).at[o].set(positions))(order)


def _submatrix(sim: Array, rows: Array, cols: Array) -> Array:
  """sim (B, T, T), rows (B, R), cols (B, K) -> sim[b, rows[b]][:, cols[b]] (B, R, K)."""
  return jax.vmap(lambda s, i, j: s[i][:, j])(sim, rows, cols)


def rank_edges(sim: Array, metric: Array, order: Array, count: int, *, implementation: str = "xla",
               interpret: bool = False) -> tuple[Array, Array]:
  """Best B partner of every A token when the first `count` energy ranks alternate into A and B.

  A = order[:, 0:count:2], B = order[:, 1:count:2]. "xla" reads the scores off the similarity
  matrix the energy already needed; "pallas" runs kernels.matching on the energy-sorted,
  normalised metric (the T x T similarities are still formed for the energy; the kernel saves
  the gather of the |A| x |B| block and its reductions).

  Args:
    sim: (B, T, T) cosine similarities; metric: (B, T, D) features; order: (B, T) by energy.

  Returns:
    node_max (B, |A|) float32 and node_idx (B, |A|) int32 (a position in B, first on ties).
  """
  if implementation == "xla":
    scores = _submatrix(sim, order[:, 0:count:2], order[:, 1:count:2])
    return scores.max(axis=-1), jnp.argmax(scores, axis=-1).astype(jnp.int32)  # first maximum, as torch.max
  ranked = jnp.take_along_axis(normalize(metric), order[:, :count, None], axis=1)
  return matching.bipartite_matching(ranked, has_cls=False, normalized=True, implementation=implementation,
                                     interpret=interpret)


def _protected_slots(dst_idx: Array | None, order: Array, r: int, offset: int) -> Array:
  """Output slot of the token at each energy rank for `pitome` (merge.py L73-107).

  Args:
    dst_idx: (B, r) B partner of each A token (rank_edges over the first 2r ranks), None if r = 0.
    order: (B, T) tokens by descending energy.
    r: merges (2r <= T); offset: prefix tokens before the first output slot.

  Returns:
    (B, T) int32: the output slot of the token at energy rank p. Slots after the prefix hold the
    kept tokens (ranks >= 2r, in rank order), then B (odd ranks < 2r); A (even ranks < 2r) share
    the slot of their most similar B token.
  """
  batch, t = order.shape
  kept = offset + jnp.arange(t - 2 * r, dtype=jnp.int32)
  kept = jnp.broadcast_to(kept, (batch, t - 2 * r))
  if r == 0:
    return kept
  first_b = offset + t - 2 * r
  slot_b = jnp.broadcast_to(first_b + jnp.arange(r, dtype=jnp.int32), (batch, r))
  merging = jnp.stack([first_b + dst_idx, slot_b], axis=-1).reshape(batch, 2 * r)  # ranks 0, 1, 2, ...
  return jnp.concatenate([merging, kept], axis=1)


def _bsm_slots(node_max: Array, node_idx: Array, order: Array, r: int, offset: int) -> Array:
  """Output slot of the token at each energy rank for `pitome_bsm` (merge.py L110-145).

  Args:
    node_max, node_idx: (B, |A|) best B partner of each A token (rank_edges over all T ranks).
    order: (B, T) tokens by descending energy.
    r: merges (r <= ceil(T/2)); offset: prefix tokens before the first output slot.

  Returns:
    (B, T) int32: the output slot of the token at energy rank p. Slots after the prefix hold the
    unmerged A tokens (even ranks) by descending best-match score, then B (odd ranks); the r best
    matched A tokens share the slot of their B partner.
  """
  batch, t = order.shape
  num_a, num_b = node_max.shape[1], t // 2
  edge_rank = _inverse_permutation(jnp.argsort(-node_max, axis=-1, stable=True).astype(jnp.int32))
  first_b = offset + num_a - r
  slot_a = jnp.where(edge_rank < r, first_b + node_idx, offset + edge_rank - r)
  slot_b = jnp.broadcast_to(first_b + jnp.arange(num_b, dtype=jnp.int32), (batch, num_b))
  if num_b < num_a:
    slot_b = jnp.concatenate([slot_b, jnp.zeros((batch, num_a - num_b), jnp.int32)], axis=1)
  return jnp.stack([slot_a, slot_b], axis=-1).reshape(batch, 2 * num_a)[:, :t]


def pitome_plan(metric: Array, ratio: float, margin: float, *, alpha: float = 1.0, bsm: bool = False,
                num_prefix: int = 1, matching_implementation: str = "xla", interpret: bool = False) -> MergePlan | None:
  """PiToMe's merge of one layer as a MergePlan (merge.py pitome_vision).

  Args:
    metric: (B, N, D) matching features (keys averaged over heads), prefix tokens first.
    ratio: fraction of the T = N - num_prefix mergeable tokens kept, in [0.5, 1].
    margin: ELU margin of this layer.
    alpha: ELU alpha.
    bsm: `pitome_bsm` (energy-ordered bipartite matching) instead of `pitome` (protected).
    num_prefix: leading tokens ([CLS], distillation) that never merge and keep their slots.
    matching_implementation: how A tokens find their B partner: "xla", "pallas" or "auto" (rank_edges).
    interpret: run the Pallas matching kernel in interpret mode (CPU tests).

  Returns:
    a MergePlan with num_out = N - floor(T - T * ratio), or None for ratio >= 1 (identity).
  """
  if not 0.5 <= ratio:
    raise ValueError(f"PiToMe.ratio: PiToMe keeps at least half the tokens per layer (2r <= T); got {ratio}. "
                     "Use a ratio in [0.5, 1]")
  n = metric.shape[1]
  t = n - num_prefix
  if ratio >= 1.0 or t < 2:
    return None
  r = merge_count(t, ratio)
  energy, sim = energy_scores(metric[:, num_prefix:], margin, alpha)
  order = jnp.argsort(-energy, axis=-1, stable=True).astype(jnp.int32)
  edges = functools.partial(rank_edges, sim, metric[:, num_prefix:], order, implementation=matching_implementation,
                            interpret=interpret)
  if bsm:
    slots = _bsm_slots(*edges(t), order, r, num_prefix)  # (B, T) per rank
  else:
    slots = _protected_slots(edges(2 * r)[1] if r else None, order, r, num_prefix)
  dst = jnp.take_along_axis(slots, _inverse_permutation(order), axis=1)  # (B, T) per token
  prefix = jnp.broadcast_to(jnp.arange(num_prefix, dtype=jnp.int32), (dst.shape[0], num_prefix))
  return MergePlan(dst=jnp.concatenate([prefix, dst], axis=1), weight=None, num_out=n - r)


RatioSpec = Union[float, Sequence[float]]
ModeSpec = Union[str, Sequence[str]]


@dataclasses.dataclass(frozen=True)
class PiToMe:
  """PiToMe token merging, placed between the attention residual and the MLP of every block.

  Attributes:
    ratio: fraction of the mergeable tokens kept per layer, in [0.5, 1] (1 = no merging); a float
      for every layer, or one per layer (a list or tuple of depth floats).
    m0: margin of the first layer; layer l uses m0 (1 - l / L). 0.75 for DeiT/MAE (the official
      AugReg/BLIP patches use 0.9, LAVIS-CLIP 0.95).
    alpha: ELU alpha of the energy score.
    mode: which merge each layer uses: "deit" (first ceil(L/2) layers "bsm", the rest "pitome"),
      "mae" (the opposite), or a per-layer tuple of "pitome" / "bsm".
    prop_attn: proportional attention once tokens merged. False as in the released patches,
      which track sizes but never pass them to attention.
    merge: how merged groups are summed: "auto", "scatter" or "matmul" (see apply_plan).
    matching: how A tokens find their B partner: "xla", "pallas" (kernels.matching) or "auto".
    interpret: run the Pallas matching kernel in interpret mode (how the CPU runs it).
  """
  placement: ClassVar[str] = "mid"
  scores: ClassVar[tuple[str, ...]] = ()
  strength_field: ClassVar[str] = "ratio"
  needs_calibration: ClassVar[bool] = False
  variable_tokens: ClassVar[bool] = False

  ratio: RatioSpec = 0.9
  m0: float = 0.75
  alpha: float = 1.0
  mode: ModeSpec = "deit"
  prop_attn: bool = False
  merge: str = "auto"
  matching: str = "xla"
  interpret: bool = False

  def __post_init__(self):
    check_matching(self.matching, "PiToMe")
    ratios = (self.ratio,) if isinstance(self.ratio, (int, float)) else tuple(self.ratio)
    for value in ratios:
      if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.5 <= value <= 1.0:
        raise ValueError(f"PiToMe.ratio: expected fractions kept per layer in [0.5, 1] (PiToMe merges at most "
                         f"half the tokens of a layer, 2r <= T); got {self.ratio!r}")
    if not ratios:
      raise ValueError("PiToMe.ratio: the per-layer tuple is empty; give one ratio per layer or a float")
    ratio = float(self.ratio) if isinstance(self.ratio, (int, float)) else tuple(float(v) for v in ratios)
    object.__setattr__(self, "ratio", ratio)
    if not math.isfinite(self.m0):
      raise ValueError(f"PiToMe.m0: expected a finite margin (0.75 for DeiT/MAE); got {self.m0!r}")
    if not (math.isfinite(self.alpha) and self.alpha > 0):
      raise ValueError(f"PiToMe.alpha: expected a positive ELU alpha (1.0 in the paper); got {self.alpha!r}")
    if isinstance(self.mode, str):
      if self.mode not in SCHEDULES:
        raise ValueError(f"PiToMe.mode: expected one of {SCHEDULES} or a per-layer tuple of {MODES}; "
                         f"got {self.mode!r}")
    else:
      modes = tuple(self.mode)
      if not modes or any(m not in MODES for m in modes):
        raise ValueError(f"PiToMe.mode: a per-layer tuple must hold only {MODES}; got {self.mode!r}")
      object.__setattr__(self, "mode", modes)

  def layer_ratios(self, depth: int) -> tuple[float, ...]:
    """Per-layer kept fraction."""
    if isinstance(self.ratio, float):
      return (self.ratio,) * depth
    if len(self.ratio) != depth:
      raise ValueError(f"PiToMe.ratio: the per-layer tuple has {len(self.ratio)} entries but the model has "
                       f"{depth} layers; give one ratio per layer or a single float")
    return self.ratio

  def layer_modes(self, depth: int) -> tuple[str, ...]:
    """Per-layer merge mode, "pitome" or "bsm"."""
    return schedule_modes(self.mode, depth)

  def token_counts(self, num_tokens: int, depth: int, num_prefix: int = 1) -> tuple[int, ...]:
    """Token count after each layer (static): e.g. (197, 12) at ratio 0.9 -> 178, 161, ..., 60."""
    counts = []
    for ratio in self.layer_ratios(depth):
      num_tokens -= merge_count(num_tokens - num_prefix, ratio) if num_tokens - num_prefix >= 2 else 0
      counts.append(num_tokens)
    return tuple(counts)

  def reduce(self, tokens: Tokens, metrics: dict[str, Array], *, layer: int, depth: int) -> Tokens:
    plan = pitome_plan(
        metrics["keys"], self.layer_ratios(depth)[layer], layer_margin(self.m0, layer, depth), alpha=self.alpha,
        bsm=self.layer_modes(depth)[layer] == "bsm", num_prefix=tokens.num_prefix,
        matching_implementation=self.matching, interpret=self.interpret)
    return tokens if plan is None else apply_plan(tokens, plan, method=self.merge)
