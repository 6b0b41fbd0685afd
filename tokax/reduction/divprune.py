"""Diversity-based token selection after the encoder: DivPrune (max-min) and ToDRE (max-sum).

Both act on a (B, N, C) feature sequence after the vision encoder (LLaVA applies them to the
projected visual tokens), not inside the ViT blocks, and keep a subset of tokens in their original
order: a SelectPlan.

DivPrune (Alvar et al., CVPR 2025) equals vbdi/divprune `LlavaMetaForCausalLM.DivPrune`
(LLaVA/llava/model/llava_arch.py) on the same
features:
- distance D = 1 - cos(x_i, x_j) over the whole (N, N) matrix;
- first pick = the most isolated token: argmax over columns j of the 2nd-smallest D[:, j] (the
  smallest is the token's own ~0 distance), as the official `topk(2, largest=False)[1]`;
- then greedy farthest-point: argmax_j min_{i chosen} D[i, j];
- argmax ties go to the first index (torch.argmax and jnp.argmax agree). Exact ties are common
  at the first pick: the most isolated token and its nearest neighbour score the same when they
  are each other's nearest (tokax symmetrises D so that this holds on every backend);
- k = round(ratio * N) with Python's round (half to even), default ratio 0.098 (`SUBSET_RATIO`
  of run_Divprune.sh; 576 tokens -> 56); kept tokens are returned in original order (the
  official code sorts the kept indices).
Deliberate differences, none of which changes a result on valid fp32 inputs:
- batches: the official code reads batch index [0] only (batch size 1) and applies that image's
  selection to every row; tokax makes one plan per image (equal to the official code run image by
  image; tests/reduction/test_divprune.py checks it against goldens made that way).
- a zero feature vector has cosine similarity 0 with every token, itself included (distance 1),
  instead of NaN (the official norm has no eps).
- a chosen token is never chosen again. The official loop can re-pick one when every remaining
  token duplicates a chosen one (all scores ~0), which puts the same token in the output twice.
- distances are computed in float32 for any input dtype (LLaVA runs the official code in fp16).
- k is clipped to [1, N]: more than N keeps everything, and a ratio that rounds to 0 keeps one
  token (the official code would keep none).

ToDRE (Li, Yang, Lu; arXiv 2505.18757): **no official code exists** (none found by repository and
string searches); implemented from the paper text, stage 1 only (diversity selection after the
encoder; the in-LLM relevance drop is not a token-sequence reduction). Paper v2 ("Effective
Visual Token Pruning via Token Diversity and Task Relevance") is the default: pivot = the token
with the largest [CLS] attention (an input score), then greedy max-sum diversification,
c_t = argmin_{v not chosen} sum_{c chosen} cos(x_v, x_c), with the incremental update of the sums.
Paper v1's "greedy k-center" (the same pivot, then DivPrune's farthest-point rule) is
`mode="k_center"`. k = round(ratio * N) as DivPrune (the paper keeps 288 of 2880 = 10%).
"""
from __future__ import annotations

import dataclasses
import numbers
from typing import ClassVar

import jax
import jax.numpy as jnp

from tokax.reduction.tokens import SelectPlan, Tokens, apply_plan

Array = jax.Array
_HIGHEST = jax.lax.Precision.HIGHEST
TODRE_MODES = ("max_sum", "k_center")


def keep_count(ratio: float, num_tokens: int, *, field: str = "ratio") -> int:
  """Tokens kept from num_tokens: round(ratio * N) (Python's half-to-even), clipped to [1, N].

  The official DivPrune uses int(round(ratio * N)); 0.098 * 576 -> 56.
  """
  _check_ratio(ratio, field)
  return min(max(int(round(ratio * num_tokens)), 1), num_tokens)


def _check_ratio(ratio: float, field: str) -> None:
  if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 < float(ratio) <= 1.0:
    raise ValueError(f"{field}: the fraction of tokens kept must be in (0, 1]; got {ratio!r}")


def _check_num_keep(num_keep: int, field: str = "num_keep") -> None:
  if isinstance(num_keep, bool) or not isinstance(num_keep, numbers.Integral) or num_keep < 1:
    raise ValueError(f"{field}: expected an int >= 1 (values above N keep every token); got {num_keep!r}")


def normalize(x: Array) -> Array:
  """(B, N, C) -> (B, N, C) float32 unit vectors; a zero vector stays zero (cosine 0 with anything)."""
  x = x.astype(jnp.float32)
  norm = jnp.linalg.norm(x, axis=-1, keepdims=True)
  return x / jnp.where(norm > 0, norm, 1.0)


def cosine_similarity(x: Array) -> Array:
  """(B, N, C) -> (B, N, N) float32 cosine similarities (0 for a zero vector, with itself too)."""
  unit = normalize(x)
  return jnp.einsum("bnc,bmc->bnm", unit, unit, precision=_HIGHEST)


def _max_min_greedy(dist: Array, k: int) -> Array:
  """DivPrune's greedy picks for one image: dist (N, N) cosine distances -> (k,) int32 in pick order."""
  n = dist.shape[0]
  if n >= 2:  # second-smallest distance in each column: the nearest other token
    nearest = -jax.lax.top_k(-dist.T, 2)[0][:, 1]
  else:
    nearest = dist[0]
  first = jnp.argmax(nearest).astype(jnp.int32)
  picks = jnp.zeros((k,), jnp.int32).at[0].set(first)
  chosen = jnp.zeros((n,), bool).at[first].set(True)

  def step(t, carry):
    picks, chosen, min_dist = carry
    nxt = jnp.argmax(jnp.where(chosen, -jnp.inf, min_dist)).astype(jnp.int32)
    return picks.at[t].set(nxt), chosen.at[nxt].set(True), jnp.minimum(min_dist, dist[nxt])

  picks, _, _ = jax.lax.fori_loop(1, k, step, (picks, chosen, dist[first]))
  return picks


def divprune_select(x: Array, num_keep: int) -> Array:
  """DivPrune's greedy max-min picks, in the order they are picked (the official `s`).

  Args:
    x: (B, N, C) features (any float dtype; distances are computed in float32).
    num_keep: static number of tokens to keep, clipped to N.

  Returns:
    (B, k) int32 token indices, k = min(num_keep, N), one independent selection per image.
  """
  _check_num_keep(num_keep)
  k = min(int(num_keep), x.shape[1])
  similarity = cosine_similarity(x)
  # Exactly symmetric, whatever the matmul's summation order: two mutually nearest tokens then
  # tie exactly for the first pick and the lower index wins on every backend.
  similarity = 0.5 * (similarity + jnp.swapaxes(similarity, 1, 2))
  return jax.vmap(lambda d: _max_min_greedy(d, k))(1.0 - similarity)


def _selection_plan(picks: Array, num_prefix: int) -> SelectPlan:
  """(B, k) picks among the tokens after the prefix -> SelectPlan [prefix, picks in original order]."""
  picks = jnp.sort(picks, axis=-1) + num_prefix
  prefix = jnp.broadcast_to(jnp.arange(num_prefix, dtype=jnp.int32), picks.shape[:1] + (num_prefix,))
  return SelectPlan(index=jnp.concatenate([prefix, picks.astype(jnp.int32)], axis=1))


def _check_prefix(num_prefix: int, n: int) -> None:
  if num_prefix < 0 or num_prefix >= n:
    raise ValueError(f"num_prefix: must be in [0, N) with N = {n} tokens; got {num_prefix}")


def divprune_plan(x: Array, num_keep: int, *, num_prefix: int = 0) -> SelectPlan:
  """DivPrune as a SelectPlan: the prefix tokens, then the picks in original order.

  Args:
    x: (B, N, C) features.
    num_keep: static count kept among the N - num_prefix candidates, clipped to that count.
    num_prefix: leading tokens ([CLS], distillation) that are always kept and never compared.

  Returns:
    SelectPlan with index (B, num_prefix + k), ascending.
  """
  _check_prefix(num_prefix, x.shape[1])
  return _selection_plan(divprune_select(x[:, num_prefix:], num_keep), num_prefix)


def _check_no_mask(tokens: Tokens, name: str) -> None:
  if tokens.mask is not None:
    raise ValueError(f"{name}: tokens.mask is set (padded tokens with data-dependent counts); selection would "
                     "consider the padding. Apply it to unmasked tokens")


def divprune(tokens: Tokens, ratio: float = 0.098, *, num_keep: int | None = None) -> Tokens:
  """The reduced tokens: DivPrune on the non-prefix tokens, kept count from num_keep or ratio."""
  return DivPrune(ratio=ratio, num_keep=num_keep)(tokens)


def _max_sum_greedy(unit: Array, pivot: Array, k: int) -> Array:
  """ToDRE v2 for one image: unit (N, C), pivot () -> (k,) picks; argmin of summed similarity."""
  n = unit.shape[0]
  similarity_to = lambda i: jnp.einsum("nc,c->n", unit, unit[i], precision=_HIGHEST)
  picks = jnp.zeros((k,), jnp.int32).at[0].set(pivot)
  chosen = jnp.zeros((n,), bool).at[pivot].set(True)

  def step(t, carry):
    picks, chosen, total = carry
    nxt = jnp.argmin(jnp.where(chosen, jnp.inf, total)).astype(jnp.int32)
    return picks.at[t].set(nxt), chosen.at[nxt].set(True), total + similarity_to(nxt)

  picks, _, _ = jax.lax.fori_loop(1, k, step, (picks, chosen, similarity_to(pivot)))
  return picks


def _k_center_greedy(unit: Array, pivot: Array, k: int) -> Array:
  """ToDRE v1 for one image: from the pivot, repeatedly the token farthest (1 - cos) from the chosen set."""
  n = unit.shape[0]
  distance_to = lambda i: 1.0 - jnp.einsum("nc,c->n", unit, unit[i], precision=_HIGHEST)
  picks = jnp.zeros((k,), jnp.int32).at[0].set(pivot)
  chosen = jnp.zeros((n,), bool).at[pivot].set(True)

  def step(t, carry):
    picks, chosen, min_dist = carry
    nxt = jnp.argmax(jnp.where(chosen, -jnp.inf, min_dist)).astype(jnp.int32)
    return picks.at[t].set(nxt), chosen.at[nxt].set(True), jnp.minimum(min_dist, distance_to(nxt))

  picks, _, _ = jax.lax.fori_loop(1, k, step, (picks, chosen, distance_to(pivot)))
  return picks


def todre_select(x: Array, pivot_score: Array, num_keep: int, *, mode: str = "max_sum") -> Array:
  """ToDRE's diversity selection (no official code; paper v2 max-sum by default), in pick order.

  Args:
    x: (B, N, C) features (any float dtype; similarities in float32). O(N C) per pick, no N x N matrix.
    pivot_score: (B, N) the first pick is its argmax (first index on ties); the paper uses the
      [CLS] attention of the last encoder layer.
    num_keep: static number kept, clipped to N.
    mode: "max_sum" (paper v2: argmin of the summed cosine similarity to the chosen set) or
      "k_center" (paper v1: argmax of the smallest cosine distance to the chosen set).

  Returns:
    (B, k) int32 indices, k = min(num_keep, N); picks[:, 0] is the pivot.
  """
  _check_num_keep(num_keep)
  if mode not in TODRE_MODES:
    raise ValueError(f"mode: expected one of {TODRE_MODES}; got {mode!r}")
  if pivot_score.shape != x.shape[:2]:
    raise ValueError(f"pivot_score: expected shape (B, N) = {x.shape[:2]}; got {pivot_score.shape}")
  k = min(int(num_keep), x.shape[1])
  pivot = jnp.argmax(pivot_score, axis=-1).astype(jnp.int32)
  greedy = _max_sum_greedy if mode == "max_sum" else _k_center_greedy
  return jax.vmap(lambda u, p: greedy(u, p, k))(normalize(x), pivot)


def todre_plan(x: Array, pivot_score: Array, num_keep: int, *, mode: str = "max_sum",
               num_prefix: int = 0) -> SelectPlan:
  """ToDRE as a SelectPlan: the prefix tokens, then the picks in original order.

  Args:
    x: (B, N, C) features.
    pivot_score: (B, N) over all N tokens (the prefix entries are ignored).
    num_keep: static count kept among the N - num_prefix candidates, clipped to that count.
    mode: "max_sum" (v2) or "k_center" (v1).
    num_prefix: leading tokens that are always kept and never compared.
  """
  _check_prefix(num_prefix, x.shape[1])
  if pivot_score.shape != x.shape[:2]:
    raise ValueError(f"pivot_score: expected shape (B, N) = {x.shape[:2]}; got {pivot_score.shape}")
  picks = todre_select(x[:, num_prefix:], pivot_score[:, num_prefix:], num_keep, mode=mode)
  return _selection_plan(picks, num_prefix)


def todre(tokens: Tokens, pivot_score: Array, ratio: float = 0.1, *, num_keep: int | None = None,
          mode: str = "max_sum") -> Tokens:
  """The reduced tokens: ToDRE on the non-prefix tokens, kept count from num_keep or ratio."""
  return ToDRE(ratio=ratio, num_keep=num_keep, mode=mode)(tokens, {"cls": pivot_score})


@dataclasses.dataclass(frozen=True)
class DivPrune:
  """DivPrune as a post-encoder reducer: `DivPrune()(tokens, metrics) -> Tokens` (metrics unused).

  Prefix tokens (has_cls / has_dist) are kept and excluded from the selection; the count kept
  among the others is num_keep when given (clipped to what exists), else keep_count(ratio, N).

  Attributes:
    ratio: fraction of the non-prefix tokens kept, in (0, 1]; default 0.098 (the paper's setting).
    num_keep: an explicit count instead of ratio.
  """
  placement: ClassVar[str] = "post"
  scores: ClassVar[tuple[str, ...]] = ()
  strength_field: ClassVar[str] = "ratio"
  needs_calibration: ClassVar[bool] = False
  variable_tokens: ClassVar[bool] = False

  ratio: float = 0.098
  num_keep: int | None = None

  def __post_init__(self):
    _check_ratio(self.ratio, "DivPrune.ratio")
    if self.num_keep is not None:
      _check_num_keep(self.num_keep, "DivPrune.num_keep")

  def output_tokens(self, num_tokens: int, num_prefix: int = 1) -> int:
    """Tokens out for num_tokens in: the prefix plus the kept ones."""
    return num_prefix + self.kept(num_tokens - num_prefix)

  def kept(self, num_candidates: int) -> int:
    """Tokens kept among num_candidates (static)."""
    if self.num_keep is not None:
      return min(int(self.num_keep), num_candidates)
    return keep_count(self.ratio, num_candidates, field="DivPrune.ratio")

  def plan(self, tokens: Tokens, metrics: dict[str, Array] | None = None) -> SelectPlan:
    _check_no_mask(tokens, "DivPrune")
    num_prefix = tokens.num_prefix
    return divprune_plan(tokens.x, self.kept(tokens.num_tokens - num_prefix), num_prefix=num_prefix)

  def __call__(self, tokens: Tokens, metrics: dict[str, Array] | None = None) -> Tokens:
    return apply_plan(tokens, self.plan(tokens, metrics))


@dataclasses.dataclass(frozen=True)
class ToDRE:
  """ToDRE stage 1 as a post-encoder reducer: `ToDRE()(tokens, {"cls": score}) -> Tokens`.

  No official code exists; this is paper v2's greedy max-sum (mode="max_sum", default) or v1's
  greedy k-center (mode="k_center"), see the module docstring.

  Attributes:
    ratio: fraction of the non-prefix tokens kept, in (0, 1]; default 0.1 (the paper's 10%).
    num_keep: an explicit count instead of ratio.
    mode: "max_sum" (v2) or "k_center" (v1).
  """
  placement: ClassVar[str] = "post"
  scores: ClassVar[tuple[str, ...]] = ("cls",)
  strength_field: ClassVar[str] = "ratio"
  needs_calibration: ClassVar[bool] = False
  variable_tokens: ClassVar[bool] = False

  ratio: float = 0.1
  num_keep: int | None = None
  mode: str = "max_sum"

  def __post_init__(self):
    _check_ratio(self.ratio, "ToDRE.ratio")
    if self.num_keep is not None:
      _check_num_keep(self.num_keep, "ToDRE.num_keep")
    if self.mode not in TODRE_MODES:
      raise ValueError(f"ToDRE.mode: expected one of {TODRE_MODES}; got {self.mode!r}")

  def output_tokens(self, num_tokens: int, num_prefix: int = 1) -> int:
    """Tokens out for num_tokens in: the prefix plus the kept ones."""
    return num_prefix + self.kept(num_tokens - num_prefix)

  def kept(self, num_candidates: int) -> int:
    """Tokens kept among num_candidates (static)."""
    if self.num_keep is not None:
      return min(int(self.num_keep), num_candidates)
    return keep_count(self.ratio, num_candidates, field="ToDRE.ratio")

  def plan(self, tokens: Tokens, metrics: dict[str, Array] | None = None) -> SelectPlan:
    """metrics["cls"]: (B, N) pivot score over all tokens, e.g. the [CLS] attention row."""
    if metrics is None or "cls" not in metrics:
      raise ValueError('ToDRE: metrics["cls"] (B, N) is required: the pivot is its argmax '
                       "(the paper uses the last encoder layer's [CLS] attention)")
    _check_no_mask(tokens, "ToDRE")
    num_prefix = tokens.num_prefix
    return todre_plan(tokens.x, metrics["cls"], self.kept(tokens.num_tokens - num_prefix), mode=self.mode,
                      num_prefix=num_prefix)

  def __call__(self, tokens: Tokens, metrics: dict[str, Array] | None = None) -> Tokens:
    return apply_plan(tokens, self.plan(tokens, metrics))
