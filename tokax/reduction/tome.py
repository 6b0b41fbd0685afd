"""ToMe: bipartite soft matching and size-weighted merging (Bolya et al., ICLR 2023).

Equal to facebookresearch/ToMe (tome/merge.py `bipartite_soft_matching` + `merge_wavg`, and the
timm patch's placement and proportional attention) on the same weights and inputs. Deliberate
differences, none of which changes a result on valid inputs:
- argsort is stable (torch's default is not): on exact ties tokax merges the lower index first.
- a zero key vector gets similarity 0 instead of NaN (ToMe divides by the norm without an eps).
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar, Sequence, Union

import jax
import jax.numpy as jnp

from tokax.kernels import matching
from tokax.reduction import schedule
from tokax.reduction.tokens import MergePlan, Tokens, apply_plan

Array = jax.Array


def bipartite_matching_plan(metric: Array, r: int, *, has_cls: bool, has_dist: bool, implementation: str = "xla",
                            interpret: bool = False) -> MergePlan | None:
  """ToMe's bipartite soft matching as a MergePlan.

  Tokens alternate into sets A (even positions) and B (odd). Each A token's best B partner by
  cosine similarity gives an edge; the r A tokens with the strongest edges merge into their
  partners. Output order is ToMe's: kept A tokens (original order with a class token, else by
  descending edge score), then all B tokens; with a distillation token [cls, dist, ...].

  Args:
    metric: (B, N, D) matching features (keys averaged over heads).
    r: tokens to remove, clipped to (N - protected) // 2.
    has_cls: token 0 is a class token (never merged away).
    has_dist: token 1 is a distillation token (never merged into).
    implementation: how each A token's best B partner is found (kernels.matching): "xla" forms
      the (B, |A|, |B|) similarities (float32 accumulation, full float32 for float32 features; the
      official code runs this matmul in fp16 under autocast), "pallas" the fused kernel that never
      writes them, "auto" picks.
    interpret: run the Pallas kernel in interpret mode (CPU tests).

  Returns:
    a MergePlan with num_out = N - r, or None when nothing merges.
  """
  n = metric.shape[1]
  r = schedule.clip_r(r, n, int(has_cls) + int(has_dist))
  if r <= 0:
    return None
  node_max, node_idx = matching.bipartite_matching(
      metric, has_cls=has_cls, has_dist=has_dist, implementation=implementation, interpret=interpret)
  num_a, num_b = node_max.shape[1], n // 2
  num_kept = num_a - r
  if has_cls:  # kept A tokens keep their original order: the r best edges are all we need
    _, src = jax.lax.top_k(node_max, r)  # ties: lower index first, as a stable sort
    is_src = jax.vmap(lambda row, i: row.at[i].set(True))(jnp.zeros(node_max.shape, bool), src)
    kept_pos = jnp.cumsum(~is_src, axis=-1, dtype=jnp.int32) - 1
  else:  # kept A tokens come in descending edge order
    edge_order = jnp.argsort(-node_max, axis=-1, stable=True)
    rank = jax.vmap(lambda order: jnp.zeros_like(order).at[order].set(jnp.arange(order.shape[0])))(edge_order)
    is_src = rank < r
    kept_pos = (rank - r).astype(jnp.int32)
  pos_a = jnp.where(is_src, num_kept + node_idx, kept_pos)
  pos_b = jnp.broadcast_to(num_kept + jnp.arange(num_b, dtype=jnp.int32), pos_a.shape[:1] + (num_b,))
  if has_dist:  # [unm[0], dst[0], unm[1:], dst[1:]]
    pos_a, pos_b = (_dist_layout(p, num_kept) for p in (pos_a, pos_b))
  if num_b < num_a:  # odd N: A has one more token; interleave [a0, b0, a1, b1, ..., a_last]
    pos_b = jnp.pad(pos_b, ((0, 0), (0, 1)))
  dst = jnp.stack([pos_a, pos_b], axis=-1).reshape(pos_a.shape[0], -1)[:, :n]
  return MergePlan(dst=dst, weight=None, num_out=n - r)


def check_matching(value: str, owner: str) -> None:
  """A reducer's `matching` field names a kernels.matching implementation."""
  if value not in matching.IMPLEMENTATIONS:
    raise ValueError(f"{owner}.matching: expected one of {matching.IMPLEMENTATIONS}; got {value!r}")


def _dist_layout(pos: Array, num_kept: int) -> Array:
  """Map positions of the [kept A, B] layout to ToMe's [unm0, dst0, unm1.., dst1..] layout."""
  first_b = num_kept
  return jnp.where(pos == 0, 0, jnp.where(pos == first_b, 1, jnp.where(pos < first_b, pos + 1, pos)))


RSpec = Union[int, Sequence[int], tuple[int, float]]


@dataclasses.dataclass(frozen=True)
class ToMe:
  """Token merging, placed between the attention residual and the MLP of every block.

  Attributes:
    r: tokens merged per layer, in any of ToMe's forms: an int (constant), a list (explicit
      per-layer counts, padded with zeros) or a tuple (r, inflection): (16, -1) is the paper's
      decreasing schedule. Normalised at construction into `r`, `inflection` and `per_layer`.
    prop_attn: proportional attention (add log size to each key's logit); ToMe's default for
      off-the-shelf evaluation of supervised models; off for MAE and for training.
    inflection: see r.
    per_layer: explicit per-layer counts (set by passing a list as r).
    merge: how merged groups are summed: "auto", "scatter" or "matmul" (see apply_plan).
    matching: how best partners are found: "xla" (dense similarities), "pallas" (the fused
      kernels.matching kernel) or "auto"; the plan is the same.
    interpret: run the Pallas matching kernel in interpret mode (how the CPU runs it).
  """
  placement: ClassVar[str] = "mid"
  scores: ClassVar[tuple[str, ...]] = ()
  strength_field: ClassVar[str] = "r"
  needs_calibration: ClassVar[bool] = False
  variable_tokens: ClassVar[bool] = False

  r: RSpec = 0
  prop_attn: bool = True
  inflection: float = 0.0
  per_layer: tuple[int, ...] | None = None
  merge: str = "auto"
  matching: str = "xla"
  interpret: bool = False

  def __post_init__(self):
    check_matching(self.matching, "ToMe")
    r, inflection, per_layer = self.r, self.inflection, self.per_layer
    if isinstance(r, list):
      r, per_layer = 0, tuple(r)
    elif isinstance(r, tuple):
      if len(r) != 2:
        raise ValueError(f"ToMe.r: a tuple means (r, inflection); got {r!r}. Pass a list for per-layer counts")
      r, inflection = r
    if isinstance(r, bool) or not isinstance(r, int):
      raise ValueError(f"ToMe.r: expected an int, a list of ints or an (r, inflection) tuple; got {self.r!r}")
    if per_layer is not None and any(isinstance(v, bool) or not isinstance(v, int) for v in per_layer):
      raise ValueError(f"ToMe.r: per-layer counts must be ints; got {per_layer!r}")
    if r < 0 or (per_layer is not None and min(per_layer, default=0) < 0):
      raise ValueError(f"ToMe.r: merge counts must be >= 0; got {self.r!r}")
    if not -1.0 <= float(inflection) <= 1.0:
      raise ValueError(f"ToMe.r: inflection must be in [-1, 1]; got {inflection}")
    object.__setattr__(self, "r", int(r))
    object.__setattr__(self, "inflection", float(inflection))
    object.__setattr__(self, "per_layer", None if per_layer is None else tuple(int(v) for v in per_layer))

  def layer_r(self, depth: int) -> tuple[int, ...]:
    """Merge count of every layer before clipping: ToMe's parse_r."""
    return schedule.parse_r(depth, self.r, self.inflection, self.per_layer)

  def token_counts(self, num_tokens: int, depth: int, num_prefix: int = 1) -> tuple[int, ...]:
    """(depth,) tokens after each block for N = num_tokens input tokens, num_prefix of them protected."""
    return schedule.token_counts(num_tokens, num_prefix, self.layer_r(depth))

  def reduce(self, tokens: Tokens, metrics: dict[str, Array], *, layer: int, depth: int) -> Tokens:
    plan = bipartite_matching_plan(
        metrics["keys"], self.layer_r(depth)[layer], has_cls=tokens.has_cls, has_dist=tokens.has_dist,
        implementation=self.matching, interpret=self.interpret)
    return tokens if plan is None else apply_plan(tokens, plan, method=self.merge)
