"""EViT and FasterVLM: keep the tokens the [CLS] token attends to most.

EViT (Liang et al., ICLR 2022) prunes inside the ViT: at chosen blocks, between the attention
residual and the MLP, it keeps the k = ceil(keep_rate * (N - 1)) patch tokens with the largest
head-averaged [CLS] attention of that block, and (with `fuse_token`) appends one token that is the
attention-weighted sum of the dropped ones. Equal to youweiliang/evit (`evit.py` Attention.forward
/ Block.forward, `helpers.py` complement_idx) at 5ca95a7.

- Output order is the official one: [CLS], the kept tokens in DESCENDING attention order (topk with
  sorted=True, not spatial order), then the fused token. A fused token from an earlier layer
  competes like any other token: kept, it sits among the kept; dropped, it is fused again.
- The fused token is sum_j a_j x_j over the dropped tokens j with a_j their raw [CLS] attention
  (not renormalised: the weights sum to less than one). As a plan this is a DensePlan whose last
  row holds a_j; apply_plan gives the fused token the summed sizes of the tokens it covers.
- Where the keep count reaches every candidate (ceil(keep_rate * (N - 1)) == N - 1) the layer is
  the identity and no fused token is appended, as in the official code.

FasterVLM (Zhang et al., arXiv 2412.01818) prunes after the vision tower: from the penultimate
CLIP layer it keeps the T patch tokens with the largest head-averaged [CLS] attention of that
same layer, in their ORIGINAL order, and drops the [CLS] token (Theia-4869/FasterVLM at f5d5f12,
clip_encoder.py feature_select + llava_arch.py encode_images; reference §8). `cls_select_plan`
is that selection; `cls_select` applies it to a Tokens state.

Deliberate differences from the official code (none changes a result on untied inputs):
- Ties: jax.lax.top_k prefers the lower index among equal scores; torch.topk leaves tie order
  unspecified (on CPU it picks e.g. 102, 110, 109, ... out of 196 zeros). On tied scores the kept
  set or the order of kept tokens can therefore differ; the reduced features do not when the tied
  tokens are themselves equal (duplicate tokens, constant images), which the tests check.
- A distillation token (has_dist) is protected like [CLS] here (kept, never scored). Official
  EViT scores it as a patch token (its DeiT-distilled path is otherwise unused and broken).
- Keep counts are clipped to [1, number of candidates]: official EViT asserts keep_rate in (0, 1]
  (ceil then gives >= 1) and torch.topk rejects T larger than the token count.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from typing import ClassVar

import jax
import jax.numpy as jnp

from tokax.reduction.tokens import DensePlan, SelectPlan, Tokens, apply_plan

Array = jax.Array


def evit_num_keep(keep_rate: float, num_tokens: int, num_prefix: int = 1) -> int:
  """Tokens EViT keeps out of the N - num_prefix candidates: ceil(keep_rate * (N - P)), clipped.

  The product is evaluated in Python floats exactly as the official `math.ceil(keep_rate * (N - 1))`
  (e.g. 0.7 at N = 197, 140, 100 gives 138, 98, 70), then clipped to [1, N - P] (0 if no candidate).
  """
  candidates = num_tokens - num_prefix
  if candidates <= 0:
    return 0
  return min(candidates, max(1, math.ceil(keep_rate * candidates)))


def _top_k_index(scores: Array, k: int) -> Array:
  """(B, M) -> (B, k) int32 indices of the k largest scores, descending; ties: lower index first."""
  _, index = jax.lax.top_k(scores, k)
  return index.astype(jnp.int32)


def _prefix_index(batch: int, num_prefix: int) -> Array:
  return jnp.broadcast_to(jnp.arange(num_prefix, dtype=jnp.int32), (batch, num_prefix))


def evit_plan(cls_attn: Array, num_keep: int, *, num_prefix: int = 1, fuse_token: bool = True,
              mask: Array | None = None) -> SelectPlan | DensePlan | None:
  """EViT's top-k [CLS]-attention selection (and fused inattentive token) as a plan.

  Args:
    cls_attn: (B, N) head-averaged attention of the [CLS] query to every token (post-softmax; column
      0 is [CLS] -> [CLS] and is never used). tokax's attention returns it as metrics["cls"].
    num_keep: k, patch tokens kept (see evit_num_keep); k >= N - num_prefix means no reduction.
    num_prefix: leading protected tokens ([CLS], distillation), always kept first, in order.
    fuse_token: append the attention-weighted sum of the dropped tokens as one extra token.
    mask: (B, N) bool valid tokens, or None; invalid tokens are chosen last and never fused.

  Returns:
    None when nothing is dropped; else a SelectPlan (no fusion) with index (B, P + k): prefix, then
    the kept tokens by descending attention; or a DensePlan (fusion) with matrix (B, P + k + 1, N):
    the same one-hot rows plus a last row holding the raw attention of every dropped token.
  """
  batch, n = cls_attn.shape
  if num_keep < 1:
    raise ValueError(f"evit_plan: num_keep must be >= 1; got {num_keep}")
  if num_keep >= n - num_prefix:
    return None
  scores = cls_attn[:, num_prefix:].astype(jnp.float32)
  if mask is not None:
    scores = jnp.where(mask[:, num_prefix:], scores, -jnp.inf)
  index = jnp.concatenate([_prefix_index(batch, num_prefix), _top_k_index(scores, num_keep) + num_prefix], axis=1)
  if not fuse_token:
    return SelectPlan(index=index)
  rows = jax.nn.one_hot(index, n, dtype=jnp.float32)  # (B, P + k, N)
  dropped = rows.sum(axis=1) == 0  # (B, N)
  if mask is not None:
    dropped = dropped & mask
  fused = jnp.where(dropped, cls_attn.astype(jnp.float32), 0.0)
  return DensePlan(matrix=jnp.concatenate([rows, fused[:, None, :]], axis=1))


def default_layers(depth: int) -> tuple[int, ...]:
  """EViT's pruning blocks (3, 6, 9) of a 12-block ViT, scaled to `depth`: round(depth * (1/4, 1/2, 3/4))."""
  return tuple(sorted({min(depth - 1, max(0, round(depth * f))) for f in (0.25, 0.5, 0.75)}))


def _check_real(value, field: str, fix: str) -> float:
  if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(float(value)):
    raise ValueError(f"{field}: expected a real number; got {value!r}. {fix}")
  return float(value)


@dataclasses.dataclass(frozen=True)
class EViT:
  """EViT token pruning with optional fusion, between the attention residual and the MLP.

  Attributes:
    keep_rate: fraction of the patch tokens (incl. an earlier fused token) kept at each of `layers`,
      in (0, 1]; 1.0 is the identity. The official DeiT-S setting is 0.7 at blocks 3, 6, 9 (0-based).
    layers: 0-based blocks that prune. A list is accepted and stored as a tuple. None (default): the
      paper's quarter points of the model's depth, default_layers(depth): (3, 6, 9) at depth 12.
    fuse_token: append one token fusing the dropped ones, weighted by their [CLS] attention.
    prop_attn: proportional attention (add log size to the key logits) once tokens are reduced.
      Not part of EViT (default False); available because fused tokens carry a size.
  """
  placement: ClassVar[str] = "mid"
  scores: ClassVar[tuple[str, ...]] = ("cls",)
  strength_field: ClassVar[str] = "keep_rate"
  needs_calibration: ClassVar[bool] = False
  variable_tokens: ClassVar[bool] = False

  keep_rate: float = 0.7
  layers: tuple[int, ...] | None = None
  fuse_token: bool = True
  prop_attn: bool = False

  def __post_init__(self):
    rate = _check_real(self.keep_rate, "EViT.keep_rate", "Pass a fraction in (0, 1], e.g. 0.7")
    if not 0.0 < rate <= 1.0:
      raise ValueError(f"EViT.keep_rate: must be in (0, 1] (the official code asserts 0 < keep_rate <= 1); "
                       f"got {self.keep_rate!r}. Use 1.0 for no pruning")
    for field in ("fuse_token", "prop_attn"):
      if not isinstance(getattr(self, field), bool):
        raise ValueError(f"EViT.{field}: expected a bool; got {getattr(self, field)!r}")
    object.__setattr__(self, "keep_rate", rate)
    if self.layers is None:
      return
    layers = self.layers
    if isinstance(layers, (int, numbers.Integral)) and not isinstance(layers, bool):
      layers = (layers,)
    try:
      layers = tuple(layers)
    except TypeError:
      raise ValueError(f"EViT.layers: expected a sequence of block indices; got {self.layers!r}") from None
    if any(isinstance(l, bool) or not isinstance(l, numbers.Integral) or l < 0 for l in layers):
      raise ValueError(f"EViT.layers: expected non-negative int block indices (0-based); got {self.layers!r}")
    if len(set(layers)) != len(layers):
      raise ValueError(f"EViT.layers: duplicate block indices in {self.layers!r}; list each block once")
    object.__setattr__(self, "layers", tuple(int(l) for l in layers))

  def pruning_layers(self, depth: int) -> tuple[int, ...]:
    """The blocks that prune in a depth-`depth` model: `layers`, or default_layers(depth) for None."""
    layers = default_layers(depth) if self.layers is None else self.layers
    outside = [l for l in layers if l >= depth]
    if outside:
      raise ValueError(f"EViT.layers: blocks {outside} do not exist in a depth-{depth} model; "
                       f"use indices in [0, {depth}) or layers=None for the paper's quarter points")
    return layers

  def layer_scores(self, *, layer: int, depth: int) -> tuple[str, ...]:
    """Scores block `layer` needs: the [CLS] row only in its pruning blocks, so others keep flash attention."""
    return ("cls",) if layer in self.pruning_layers(depth) else ()

  def layer_keep_rates(self, depth: int) -> tuple[float, ...]:
    """(depth,) keep rate of every block: keep_rate at the pruning blocks, 1.0 elsewhere."""
    layers = self.pruning_layers(depth)
    return tuple(self.keep_rate if i in layers else 1.0 for i in range(depth))

  def token_counts(self, num_tokens: int, depth: int, num_prefix: int = 1) -> tuple[int, ...]:
    """Token count after every block for N = num_tokens input tokens (static, no tracing)."""
    counts = []
    for rate in self.layer_keep_rates(depth):
      if rate < 1.0:
        k = evit_num_keep(rate, num_tokens, num_prefix)
        if k < num_tokens - num_prefix:
          num_tokens = num_prefix + k + int(self.fuse_token)
      counts.append(num_tokens)
    return tuple(counts)

  def reduce(self, tokens: Tokens, metrics: dict[str, Array], *, layer: int, depth: int) -> Tokens:
    rate = self.layer_keep_rates(depth)[layer]
    if rate >= 1.0:
      return tokens
    if not tokens.has_cls:
      raise ValueError("EViT needs a class token: it ranks tokens by their [CLS] attention. "
                       "Build the ViT with class_token=True")
    k = evit_num_keep(rate, tokens.num_tokens, tokens.num_prefix)
    if k >= tokens.num_tokens - tokens.num_prefix:
      return tokens
    plan = evit_plan(metrics["cls"], k, num_prefix=tokens.num_prefix, fuse_token=self.fuse_token,
                     mask=tokens.mask)
    return apply_plan(tokens, plan)


def cls_select_plan(cls_attn: Array, num_keep: int, *, num_prefix: int = 1) -> SelectPlan:
  """FasterVLM: the num_keep patch tokens with the largest [CLS] attention, in original order.

  Args:
    cls_attn: (B, N) head-averaged [CLS] attention over all N tokens (column 0 = [CLS] -> [CLS],
      unused), from the same layer as the features (LLaVA: the penultimate CLIP layer).
    num_keep: T, tokens kept; clipped to the N - num_prefix patch tokens.
    num_prefix: leading non-patch tokens ([CLS]) that are dropped, as FasterVLM drops [CLS].

  Returns:
    SelectPlan with index (B, T), ascending positions in [num_prefix, N).
  """
  if isinstance(num_keep, bool) or not isinstance(num_keep, numbers.Integral) or num_keep < 1:
    raise ValueError(f"cls_select: num_keep must be an int >= 1 (tokens kept); got {num_keep!r}")
  candidates = cls_attn.shape[1] - num_prefix
  if candidates < 1:
    raise ValueError(f"cls_select: no patch tokens after {num_prefix} prefix tokens (N = {cls_attn.shape[1]})")
  k = min(int(num_keep), candidates)
  index = _top_k_index(cls_attn[:, num_prefix:].astype(jnp.float32), k)
  return SelectPlan(index=jnp.sort(index, axis=1) + num_prefix)


def cls_select(tokens: Tokens, cls_attn: Array, num_keep: int) -> Tokens:
  """FasterVLM's post-encoder selection on a Tokens state: keeps num_keep patch tokens in original
  order and drops the prefix ([CLS], distillation) tokens. cls_attn: (B, N), see cls_select_plan."""
  if not tokens.has_cls:
    raise ValueError("cls_select needs tokens with a class token (has_cls=True): it ranks patch tokens "
                     "by their [CLS] attention")
  plan = cls_select_plan(cls_attn, num_keep, num_prefix=tokens.num_prefix)
  return apply_plan(tokens, plan).replace(has_cls=False, has_dist=False)
