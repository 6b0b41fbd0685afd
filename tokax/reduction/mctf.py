"""MCTF: multi-criteria token fusion with one-step-ahead attention (Lee, Choi, Kim, CVPR 2024).

Equal to mlvlab/MCTF at 2004da0 (utils/mctf.py `mctf`, `bipartite_soft_matching`, `merge_wavg`,
`merge_source`; models/modules/blocks.py `Block_DEIT` with one_step_ahead=1; models/SA/MHSA.py) on
the same weights and inputs.

Where it runs ("pre" placement, tokax.reduction.base): at the START of a block, on the residual
stream x (the block input, not LayerNorm'd, not keys). The block first computes its own attention
probabilities A = softmax(q k^T Dh^-0.5 [+ log size]) on LN1(x) (B, H, N, N); MCTF fuses the tokens
using A, merges A itself into A' (B, H, N', N'), and the block then attends with A' over the fused
tokens ("one-step-ahead": the attention of the layer the tokens are about to enter is reused).

Matching (bipartite, A = even positions, B = odd): for every (a, b) pair

  score = ((cos(x_a, x_b) + 1) / 2)^(1/tau_sim)                       similarity
          * (info_a info_b)^(1/tau_info),   info = (1/ā) / max(1/ā)   informativeness (low attention
                                                                      received ā fuses first)
          * (s_a s_b)^(1/tau_size),         s = (1/size) / max(1/size) size (small tokens fuse first)

with ā = A averaged over heads and queries (the attention each token receives). A tau of 0 turns
its criterion off (the code's exponents are 1/tau: code tau_info=20 is the paper's 1/20, issue #3).
Bidirectional fusion (`bidirection`): r//2 A tokens fuse into their best B partners (ToMe), then
r - r//2 B tokens (already holding what they absorbed) fuse into their best remaining A partners,
with the scores of the first step (not recomputed). Output order is the official one: [kept A
(class token first, original order), kept B (descending step-2 score)]; one-directional fusion
gives [kept A, all B in original order].

Fusion is a weighted mean over each group: `pooling_type` 1 (released) weighs a token by
ā * size / max(size), 0 by its size. The two steps compose into ONE many-to-one MergePlan (an A
token fused into a B token that then fuses into an A token ends in that A token's slot): the
official scatter sums of x*w and of w over both steps are the group sums of a single weighted
mean, so this is exact. The attention map is merged with the same plan:
A' = diag(S w)^-1 S diag(w) A S^T per head (keys summed, so rows still sum to one; queries
w-averaged), with S the (B, N', N) one-hot group matrix.

Per-layer amount (the official `mctf()`): an int r is a token count, a float r in [0, 1) a
fraction of the unprotected tokens, int((N - P) r); if N - r < 10 then r = N - 10; then
r <= (N - P) // 2. Only the layers in `activate_layers` fuse.

Student / teacher schedules: a reduction is a static, hashable value, so `MCTF(r=16)` and
`dataclasses.replace(m, r=r_teacher)` are two separate reductions; a training step that runs both
branches (the paper's token-reduction consistency) clones the model once per reduction, and each
distinct r compiles once (pre-compile the set of teacher r values the official code samples from).

Deliberate differences from the official code (none changes a result on valid, untied inputs):
- Distillation token (has_dist): protected as intended, never fused in either direction and kept
  at position 1 ([cls, dist, kept A..., kept B...], where the ViT's distillation head reads it).
  The official code protects `scores[:, :P, :]`, the first P ROWS of A: with P = 2 that is A[1] =
  token 2 instead of the distillation token (B[0] = token 1), which can then absorb A tokens and be
  fused into an A token, and the official output's position 1 holds token 2. (The released DeiT
  code has no distillation token, so P = 1 there and nothing differs.)
- Sorts are stable (torch.argsort / sort with descending=True are not): on exact ties the lower
  index fuses first.
- A zero vector gets cosine similarity 0 instead of NaN (official divides by the norm, no eps);
  (cos + 1) / 2 is clipped at 0 before a fractional power 1/tau_sim (rounding can make it -1e-8).
- Attention received is floored at 1e-30 before 1/ā and in the pooling-1 weights. Official: a key
  that no query attends to (exp underflow) gets 1/ā = inf, then inf/max = inf/inf = NaN scores for
  it and 0 for every other pair; a group that receives no attention at all divides 0 by 0.
- r is clipped at 0: below 10 tokens the official `r = N - 10` turns negative and the official
  code crashes (the r == 0 early exit misses it); here the layer keeps its tokens.
- `activate_layers` naming a layer >= the model depth is a ValueError (official: silently unused).
- Scores are computed in float32 whatever the features' dtype (the official code runs them under
  fp16 autocast for its throughput numbers).
- Only one_step_ahead=1 (the released setting) is implemented, with pooling types 0 and 1; types
  2 (amax) and 3 (plain mean) and one_step_ahead 0/2 (other placements) are not.
"""
from __future__ import annotations

import dataclasses
import numbers
from typing import ClassVar, Sequence

import jax
import jax.numpy as jnp

from tokax.reduction.tokens import MERGE_METHODS, MergePlan, Tokens, apply_plan

Array = jax.Array

POOLING_TYPES = (0, 1)
_FLOOR = 1e-30  # floor for attention received (1/ā, pooling weights)
_HIGHEST = jax.lax.Precision.HIGHEST


def layer_r(r: int | float, num_tokens: int, num_protected: int = 1) -> int:
  """Tokens fused in one layer, the official `mctf()` rule (clipped at 0).

  Args:
    r: int count, or float fraction in [0, 1) of the N - P unprotected tokens.
    num_tokens: N, tokens entering the layer.
    num_protected: P ([CLS] and distillation tokens).

  Returns:
    max(0, min(r', (N - P) // 2)) with r' = N - 10 if N - r < 10, else int((N - P) r) for a
    fraction, else r. E.g. 16 at N=197 -> 16; 0.35 at N=197, 129, 85 -> 68, 44, 29.
  """
  if num_tokens - r < 10:
    r = num_tokens - 10
  free = num_tokens - num_protected
  count = int(free * r) if r < 1 else int(r)
  return max(0, min(count, free // 2))


def attention_received(probs: Array) -> Array:
  """(B, H, N, N) attention probabilities -> (B, N) float32 mean over heads and queries."""
  return probs.astype(jnp.float32).mean(axis=(1, 2))


def multi_criteria_scores(x: Array, received: Array, size: Array, *, tau_sim: float = 1.0,
                          tau_info: float = 20.0, tau_size: float = 40.0) -> Array:
  """MCTF's pairwise fusion scores between sets A (even positions) and B (odd), unprotected.

  Args:
    x: (B, N, C) matching features (the block input, the residual stream).
    received: (B, N) attention each token receives (see attention_received).
    size: (B, N) token sizes (all ones before the first fusion: the size criterion is then 1).
    tau_sim, tau_info, tau_size: exponents 1/tau of the three criteria; 0 turns one off.

  Returns:
    (B, ceil(N/2), floor(N/2)) float32 scores in [0, 1].
  """
  x = x.astype(jnp.float32)
  norm = jnp.linalg.norm(x, axis=-1, keepdims=True)
  m = x / jnp.where(norm > 0, norm, 1.0)
  a, b = m[:, 0::2], m[:, 1::2]
  scores = jnp.ones((x.shape[0], a.shape[1], b.shape[1]), jnp.float32)
  if tau_sim:
    sim = (jnp.einsum("bid,bjd->bij", a, b, precision=_HIGHEST) + 1) / 2
    scores = sim if tau_sim == 1 else jnp.maximum(sim, 0.0) ** (1 / tau_sim)
  if tau_info:
    inv = 1 / jnp.maximum(received.astype(jnp.float32), _FLOOR)
    info = inv / inv.max(axis=1, keepdims=True)
    scores = scores * (info[:, 0::2, None] * info[:, None, 1::2]) ** (1 / tau_info)
  if tau_size:
    inv = 1 / size.astype(jnp.float32)
    small = inv / inv.max(axis=1, keepdims=True)
    scores = scores * (small[:, 0::2, None] * small[:, None, 1::2]) ** (1 / tau_size)
  return scores


def _inverse(order: Array) -> Array:
  """Per-row inverse permutation: (B, K) order -> (B, K) rank with rank[order[i]] = i."""
  return jnp.argsort(order, axis=-1).astype(jnp.int32)


def _descending(values: Array) -> Array:
  """Stable descending argsort along the last axis; -inf sorts last."""
  return jnp.argsort(-values, axis=-1, stable=True).astype(jnp.int32)


def bidirectional_fusion_plan(scores: Array, r: int, *, has_cls: bool = True, has_dist: bool = False,
                              bidirection: bool = True) -> MergePlan | None:
  """MCTF's (bidirectional) bipartite matching as one many-to-one plan (no weights yet).

  Step 1: the r1 = r // 2 (r without bidirection) A tokens with the best scores fuse into their
  best B partners. Step 2: the r2 = r - r1 B tokens with the best scores against the kept A tokens
  fuse into their best kept A partner (B tokens carry what they absorbed: chains A -> B -> A end
  in the final A token's slot). Slots: [kept A (original order when a token is protected, else by
  descending step-1 score), kept B (descending step-2 score; original order without
  bidirection)]; with a distillation token, [cls, dist, rest...].

  Args:
    scores: (B, |A|, |B|) multi-criteria scores (see multi_criteria_scores), unprotected.
    r: tokens to remove (already the per-layer count of layer_r).
    has_cls: token 0 (A[0]) is a class token: never fused away, never receives.
    has_dist: token 1 (B[0]) is a distillation token: never fused away, never receives.
    bidirection: two steps (MCTF's default) or step 1 only with r1 = r.

  Returns:
    MergePlan with dst (B, N) int32 and num_out = N - r (weight None), or None if r <= 0.
  """
  if r <= 0:
    return None
  batch, num_a, num_b = scores.shape
  n = num_a + num_b
  if has_dist and not has_cls:
    raise ValueError("bidirectional_fusion_plan: has_dist=True needs has_cls=True (token 1 is the "
                     "distillation token only after a class token)")
  r1, r2 = (r // 2, r - r // 2) if bidirection else (r, 0)
  if r1 > num_a - int(has_cls) or r2 > num_b - int(has_dist):
    raise ValueError(f"bidirectional_fusion_plan: r={r} is more than N={n} tokens allow; clip it with layer_r")
  if has_cls:
    scores = scores.at[:, 0, :].set(-jnp.inf)
  if has_dist:
    scores = scores.at[:, :, 0].set(-jnp.inf)
  num_kept = num_a - r1

  # Step 1: A -> B.
  node_max = scores.max(axis=-1)  # (B, |A|)
  node_idx = jnp.argmax(scores, axis=-1).astype(jnp.int32)  # first maximal index, as torch.max
  edge_order = _descending(node_max)
  is_src = _inverse(edge_order) < r1
  if has_cls or has_dist:  # official: `if num_protected: unm_idx = unm_idx.sort()`
    kept_slot = jnp.cumsum(~is_src, axis=-1, dtype=jnp.int32) - 1
    kept_index = jnp.argsort(is_src, axis=-1, stable=True)[:, :num_kept].astype(jnp.int32)
  else:
    kept_slot = _inverse(edge_order) - r1
    kept_index = edge_order[:, r1:]

  # Step 2: B -> kept A, with the step-1 scores of the kept A rows in slot order.
  if bidirection:
    step2 = jnp.take_along_axis(scores, kept_index[..., None], axis=1).transpose(0, 2, 1)  # (B, |B|, kept)
    node_max2 = step2.max(axis=-1)
    node_idx2 = jnp.argmax(step2, axis=-1).astype(jnp.int32)
    rank2 = _inverse(_descending(node_max2))
    pos_b = jnp.where(rank2 < r2, node_idx2, num_kept + rank2 - r2)
  else:
    pos_b = jnp.broadcast_to(num_kept + jnp.arange(num_b, dtype=jnp.int32), (batch, num_b))
  pos_a = jnp.where(is_src, jnp.take_along_axis(pos_b, node_idx, axis=1), kept_slot)

  if has_dist:  # move the distillation token's slot to 1: [cls, dist, kept A[1:], kept B w/o dist]
    dist_slot = pos_b[:, :1]
    pos_a, pos_b = (jnp.where(p == dist_slot, 1, jnp.where((p > 0) & (p < dist_slot), p + 1, p))
                    for p in (pos_a, pos_b))
  if num_b < num_a:  # odd N: interleave [a0, b0, a1, b1, ..., a_last]
    pos_b = jnp.pad(pos_b, ((0, 0), (0, 1)))
  dst = jnp.stack([pos_a, pos_b], axis=-1).reshape(batch, -1)[:, :n]
  return MergePlan(dst=dst, weight=None, num_out=n - r)


def fusion_weights(received: Array, size: Array, pooling_type: int = 1) -> Array:
  """Per-token fusion weights (B, N): type 1 ā * size / max(size), type 0 size."""
  size = size.astype(jnp.float32)
  if pooling_type == 1:
    return jnp.maximum(received, _FLOOR) * (size / size.max(axis=-1, keepdims=True))
  if pooling_type == 0:
    return size
  raise ValueError(f"fusion_weights: pooling_type must be one of {POOLING_TYPES}; got {pooling_type!r}")


def merge_attention(probs: Array, plan: MergePlan, dtype: jnp.dtype | None = None) -> Array:
  """One-step-ahead attention of the fused tokens: A' = diag(S w)^-1 S diag(w) A S^T per head.

  The products with the one-hot S run on the matrix units in `dtype` with float32 accumulation
  (exact in float32; a bf16 model merges its probabilities in bf16, as it attends with them):
  O(N^3) FLOPs per head, yet faster on a GPU than O(N^2) scatters, which serialise on atomics
  (an H200 sweep measured 2.2 ms per layer for scatters at B=256, N=197, 12 heads).

  Args:
    probs: (B, H, N, N) attention probabilities (rows sum to one).
    plan: MergePlan over the N tokens with weights w (B, N).
    dtype: the products' input dtype; None: the probabilities'.

  Returns:
    (B, H, N', N') float32: keys summed per group (rows still sum to one), queries w-averaged.
  """
  dtype = probs.dtype if dtype is None else dtype
  groups = jax.nn.one_hot(plan.dst, plan.num_out, dtype=jnp.float32).transpose(0, 2, 1)  # S (B, N', N)
  weight = plan.weight.astype(jnp.float32)
  total = jnp.einsum("bmn,bn->bm", groups, weight, precision=_HIGHEST)
  total = jnp.where(total > 0, total, 1.0)
  rows = groups * (weight / jnp.take_along_axis(total, plan.dst, axis=1))[:, None, :]
  keys = jnp.einsum("bhqk,bmk->bhqm", probs.astype(dtype), groups.astype(dtype), preferred_element_type=jnp.float32)
  return jnp.einsum("bpq,bhqm->bhpm", rows.astype(dtype), keys.astype(dtype), preferred_element_type=jnp.float32)


def mctf_fuse(tokens: Tokens, probs: Array, r: int, *, tau_sim: float = 1.0, tau_info: float = 20.0,
              tau_size: float = 40.0, bidirection: bool = True, pooling_type: int = 1,
              merge: str = "auto") -> tuple[Tokens, Array]:
  """One MCTF fusion of the block input with the block's own attention.

  Args:
    tokens: the block input, x (B, N, C) the residual stream.
    probs: (B, H, N, N) this block's attention probabilities on LN1(x).
    r: tokens to remove (the per-layer count of layer_r).
    tau_sim, tau_info, tau_size, bidirection, pooling_type: see MCTF.
    merge: how apply_plan sums groups ("auto", "scatter", "matmul").

  Returns:
    (tokens with N - r tokens, merged probabilities (B, H, N - r, N - r)); unchanged when r <= 0.
  """
  if r <= 0:
    return tokens, probs
  received = jax.lax.stop_gradient(attention_received(probs))  # official: no_grad
  size = jax.lax.stop_gradient(tokens.size)
  scores = multi_criteria_scores(jax.lax.stop_gradient(tokens.x), received, size,
                                 tau_sim=tau_sim, tau_info=tau_info, tau_size=tau_size)
  plan = bidirectional_fusion_plan(scores, r, has_cls=tokens.has_cls, has_dist=tokens.has_dist,
                                   bidirection=bidirection)
  plan = plan.replace(weight=fusion_weights(received, size, pooling_type))
  return apply_plan(tokens, plan, method=merge), merge_attention(probs, plan, tokens.x.dtype)


def _check_tau(name: str, value) -> float:
  if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= 0:
    raise ValueError(f"MCTF.{name}: expected a number >= 0 (0 turns the criterion off); got {value!r}")
  return float(value)


@dataclasses.dataclass(frozen=True)
class MCTF:
  """Multi-criteria token fusion with one-step-ahead attention, at the start of each active block.

  Defaults are the released evaluation config `--mctf_type [16,0,0,1,1,1,20,40,1,1,0]`, except
  `activate_layers` (None: every layer); `MCTF.released()` / `MCTF.released_fast()` give the
  released DeiT settings with their layers.

  Attributes:
    r: tokens fused per active layer: an int count, or a float in [0, 1) for a fraction of the
      unprotected tokens (see layer_r for the clipping rules).
    activate_layers: the layers (0-based) that fuse, or None for all.
    tau_sim, tau_info, tau_size: criteria exponents 1/tau (code convention); 0 turns one off.
    bidirection: fuse r//2 A -> B then r - r//2 B -> A (True), or r A -> B (False).
    pooling_type: 1 weighs tokens by attention received x size / max size, 0 by size.
    prop_attn: proportional attention (log size added to the key logits) once tokens are fused.
    merge: how apply_plan sums groups: "auto", "scatter" or "matmul".

  Student and teacher branches with different r are separate static reductions:
  `dataclasses.replace(m, r=8)`; see the module docstring.
  """
  placement: ClassVar[str] = "pre"
  scores: ClassVar[tuple[str, ...]] = ()
  strength_field: ClassVar[str] = "r"
  needs_calibration: ClassVar[bool] = False
  variable_tokens: ClassVar[bool] = False

  r: int | float = 16
  activate_layers: tuple[int, ...] | None = None
  tau_sim: float = 1.0
  tau_info: float = 20.0
  tau_size: float = 40.0
  bidirection: bool = True
  pooling_type: int = 1
  prop_attn: bool = True
  merge: str = "auto"

  def __post_init__(self):
    r = self.r
    if isinstance(r, bool) or not isinstance(r, numbers.Real):
      raise ValueError(f"MCTF.r: expected an int count or a float fraction in [0, 1); got {r!r}")
    if isinstance(r, numbers.Integral):
      if r < 0:
        raise ValueError(f"MCTF.r: a token count must be >= 0; got {r}")
      r = int(r)
    else:
      if not 0.0 <= float(r) < 1.0:
        raise ValueError(f"MCTF.r: a float r is a fraction in [0, 1); got {r!r}. Pass an int for a token count")
      r = float(r)
    layers = self.activate_layers
    if layers is not None:
      if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence):
        raise ValueError(f"MCTF.activate_layers: expected a sequence of layer indices or None; got {layers!r}")
      if any(isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 0 for v in layers):
        raise ValueError(f"MCTF.activate_layers: layer indices must be ints >= 0; got {layers!r}")
      layers = tuple(sorted({int(v) for v in layers}))
    if self.bidirection not in (True, False, 0, 1):
      raise ValueError(f"MCTF.bidirection: expected a bool; got {self.bidirection!r}")
    if self.pooling_type not in POOLING_TYPES or isinstance(self.pooling_type, bool):
      raise ValueError(f"MCTF.pooling_type: expected one of {POOLING_TYPES} (1 attention x size, 0 size; "
                       f"official types 2 and 3 are not implemented); got {self.pooling_type!r}")
    if self.merge not in MERGE_METHODS:
      raise ValueError(f"MCTF.merge: expected one of {MERGE_METHODS}; got {self.merge!r}")
    if not isinstance(self.prop_attn, bool):
      raise ValueError(f"MCTF.prop_attn: expected a bool; got {self.prop_attn!r}")
    object.__setattr__(self, "r", r)
    object.__setattr__(self, "activate_layers", layers)
    object.__setattr__(self, "bidirection", bool(self.bidirection))
    object.__setattr__(self, "pooling_type", int(self.pooling_type))
    for name in ("tau_sim", "tau_info", "tau_size"):
      object.__setattr__(self, name, _check_tau(name, getattr(self, name)))

  @classmethod
  def released(cls, depth: int = 12, **overrides) -> "MCTF":
    """The released DeiT-T/S evaluation: r = 16 on layers 1 .. depth - 1."""
    return cls(**{"r": 16, "activate_layers": tuple(range(1, depth)), **overrides})

  @classmethod
  def released_fast(cls, **overrides) -> "MCTF":
    """MCTF-Fast: 35% of the unprotected tokens on layers 3, 6 and 9."""
    return cls(**{"r": 0.35, "activate_layers": (3, 6, 9), **overrides})

  def attention_layer(self, *, layer: int, depth: int) -> bool:
    """Whether this layer fuses (static)."""
    if self.activate_layers is not None and self.activate_layers and self.activate_layers[-1] >= depth:
      raise ValueError(f"MCTF.activate_layers: {self.activate_layers} names a layer >= the model depth {depth}")
    return self.activate_layers is None or layer in self.activate_layers

  def token_counts(self, num_tokens: int, depth: int, num_prefix: int = 1) -> tuple[int, ...]:
    """Token count after each of the depth layers for N = num_tokens at the input (static)."""
    counts = []
    for layer in range(depth):
      if self.attention_layer(layer=layer, depth=depth):
        num_tokens -= layer_r(self.r, num_tokens, num_prefix)
      counts.append(num_tokens)
    return tuple(counts)

  def reduce_with_attention(self, tokens: Tokens, probs: Array, *, layer: int, depth: int) -> tuple[Tokens, Array]:
    """Fuse the block input with the block's attention probs (B, H, N, N) -> (Tokens, (B, H, N', N'))."""
    if tokens.mask is not None:
      raise ValueError("MCTF: masked token states (data-dependent counts) are not supported; run MCTF "
                       "on a model whose earlier reductions keep static counts without a mask")
    if not self.attention_layer(layer=layer, depth=depth):
      return tokens, probs
    r = layer_r(self.r, tokens.num_tokens, tokens.num_prefix)
    return mctf_fuse(tokens, probs, r, tau_sim=self.tau_sim, tau_info=self.tau_info, tau_size=self.tau_size,
                     bidirection=self.bidirection, pooling_type=self.pooling_type, merge=self.merge)
