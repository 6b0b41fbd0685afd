"""The Tokens state and plans: every reduction is a token matrix T with X' = T X.

A method computes a *plan* from the tokens and a metric; `apply_plan` applies it. Three plan forms:

- `SelectPlan` (one-to-one): keep rows `index` (pruning).
- `MergePlan` (many-to-one): every input token goes to one output slot `dst`; each slot is the
  weighted mean of its inputs (weights default to the token sizes: ToMe's size-weighted average).
- `DensePlan` (many-to-many): an explicit (B, N', N) matrix (slimming, DCT, fused tokens).

`plan_matrix` turns any plan into the dense T, which tests compare (T does not depend on the order
in which ties are broken) and visualisations draw.
"""
from __future__ import annotations

from typing import Union

import flax.struct
import jax
import jax.numpy as jnp

Array = jax.Array


@flax.struct.dataclass
class Tokens:
  """Token features with their bookkeeping.

  Attributes:
    x: (B, N, C) features.
    size: (B, N) float32, how many original tokens each token stands for.
    assign: (B, N0) int32, the token each original token now lives in (-1 once pruned away).
    mask: (B, N) bool valid tokens, only for methods with data-dependent counts; else None.
    num_prefix: static count of protected leading tokens ([CLS], distillation).
    has_cls: static, whether token 0 is a class token.
    has_dist: static, whether token 1 is a distillation token.
  """
  x: Array
  size: Array
  assign: Array
  mask: Array | None = None
  has_cls: bool = flax.struct.field(pytree_node=False, default=True)
  has_dist: bool = flax.struct.field(pytree_node=False, default=False)

  @property
  def num_prefix(self) -> int:
    return int(self.has_cls) + int(self.has_dist)

  @property
  def num_tokens(self) -> int:
    return self.x.shape[1]

  @classmethod
  def create(cls, x: Array, *, has_cls: bool = True, has_dist: bool = False) -> "Tokens":
    """Fresh state for (B, N, C) features: unit sizes, identity assignment, no mask."""
    batch, n = x.shape[:2]
    return cls(
        x=x,
        size=jnp.ones((batch, n), jnp.float32),
        assign=jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (batch, n)),
        mask=None,
        has_cls=has_cls,
        has_dist=has_dist,
    )


@flax.struct.dataclass
class SelectPlan:
  """Keep rows: X' = X[index]. index: (B, N') int32."""
  index: Array

  @property
  def num_out(self) -> int:
    return self.index.shape[1]


@flax.struct.dataclass
class MergePlan:
  """Many-to-one: input token n goes to output slot dst[n].

  Attributes:
    dst: (B, N) int32 in [0, num_out).
    weight: (B, N) merge weights, or None for the token sizes (size-weighted mean).
    num_out: static N'.
  """
  dst: Array
  weight: Array | None = None
  num_out: int = flax.struct.field(pytree_node=False, default=0)


@flax.struct.dataclass
class DensePlan:
  """Many-to-many: X' = T X with an explicit T of shape (B, N', N).

  Attributes:
    matrix: T (B, N', N).
    sizes: how token sizes follow: "support" (size' = (T != 0) size: an output stands for every
      input it uses; pruning, fused tokens, DCT) or "mass" (each input's size is spread over the
      outputs in proportion to |T|, so totals are kept; soft slimming).
  """
  matrix: Array
  sizes: str = flax.struct.field(pytree_node=False, default="support")

  @property
  def num_out(self) -> int:
    return self.matrix.shape[1]


Plan = Union[SelectPlan, MergePlan, DensePlan]
MERGE_METHODS = ("auto", "scatter", "matmul")
_HIGHEST = jax.lax.Precision.HIGHEST


def segment_sum(values: Array, dst: Array, num_out: int) -> Array:
  """Per-batch segment sum: (B, N, ...) summed into (B, num_out, ...) by dst (B, N)."""
  return jax.vmap(lambda v, d: jax.ops.segment_sum(v, d, num_segments=num_out))(values, dst)


def _remap_assign(assign: Array, new_index_of_old: Array) -> Array:
  """assign (B, N0) through a (B, N) old->new map; -1 stays -1."""
  safe = jnp.maximum(assign, 0)
  mapped = jnp.take_along_axis(new_index_of_old, safe, axis=1)
  return jnp.where(assign < 0, -1, mapped)


def _merge_method(method: str) -> str:
  if method not in MERGE_METHODS:
    raise ValueError(f"apply_plan: method must be one of {MERGE_METHODS}; got {method!r}")
  if method == "auto":  # a (B, N', N) x (B, N, C) matmul on the matrix units beats a scatter on accelerators
    return "scatter" if jax.default_backend() == "cpu" else "matmul"
  return method


def _size_shares(matrix: Array) -> Array:
  """(B, N', N) share of every input's size that each output receives: |T| over its column sum."""
  a = jnp.abs(matrix.astype(jnp.float32))
  total = a.sum(axis=1, keepdims=True)
  return a / jnp.where(total > 0, total, 1.0)


def soft_sizes(matrix: Array, size: Array) -> Array:
  """Sizes after a many-to-many plan when each input's size is spread over the outputs by |T|.

  size'_m = sum_n |T_mn| / (sum_k |T_kn|) size_n: totals are kept, and for one-hot or merge plans
  (one nonzero per column) this is the group count S size of MergePlan / SelectPlan.

  Args:
    matrix: T (B, N', N); size: (B, N) input sizes.

  Returns:
    (B, N') float32.
  """
  return jnp.einsum("bmn,bn->bm", _size_shares(matrix), size.astype(jnp.float32), precision=_HIGHEST)


def apply_plan(tokens: Tokens, plan: Plan, *, method: str = "auto") -> Tokens:
  """Apply a plan to the tokens: features, sizes, assignment and mask move together.

  Args:
    tokens: the current state, x (B, N, C).
    plan: a SelectPlan, MergePlan or DensePlan over N inputs.
    method: how a MergePlan sums its groups: "scatter" (segment sum), "matmul" (one-hot token
      matrix times X, in the features' dtype with float32 accumulation) or "auto" (scatter on
      CPU, matmul elsewhere). Both compute the same weighted means.

  Returns:
    the reduced state with N' = plan.num_out tokens.
  """
  x, size = tokens.x, tokens.size
  if isinstance(plan, SelectPlan):
    idx = plan.index
    # old -> new position (or -1 when dropped)
    new_of_old = jnp.full(size.shape, -1, jnp.int32)
    new_of_old = jax.vmap(lambda row, i: row.at[i].set(jnp.arange(i.shape[0], dtype=jnp.int32)))(new_of_old, idx)
    mask = None if tokens.mask is None else jnp.take_along_axis(tokens.mask, idx, axis=1)
    return tokens.replace(
        x=jnp.take_along_axis(x, idx[..., None], axis=1),
        size=jnp.take_along_axis(size, idx, axis=1),
        assign=_remap_assign(tokens.assign, new_of_old),
        mask=mask,
    )
  if isinstance(plan, MergePlan):
    weight = size if plan.weight is None else plan.weight
    if tokens.mask is not None:
      weight = weight * tokens.mask
    weight = weight.astype(jnp.float32)
    live_size = size if tokens.mask is None else size * tokens.mask
    if _merge_method(method) == "matmul":
      total = segment_sum(weight, plan.dst, plan.num_out)  # (B, N')
      total = jnp.where(total > 0, total, 1.0)
      share = weight / jnp.take_along_axis(total, plan.dst, axis=1)  # each input's weight in its group
      matrix = jnp.where(plan.dst[:, None, :] == jnp.arange(plan.num_out)[None, :, None], share[:, None, :], 0)
      new_x = jnp.einsum("bmn,bnc->bmc", matrix.astype(x.dtype), x, preferred_element_type=jnp.float32,
                         precision=_HIGHEST if x.dtype == jnp.float32 else None)
      new_size = segment_sum(live_size, plan.dst, plan.num_out)
    else:
      summed = segment_sum(x.astype(jnp.float32) * weight[..., None], plan.dst, plan.num_out)
      total = segment_sum(weight, plan.dst, plan.num_out)
      new_x = summed / jnp.where(total > 0, total, 1.0)[..., None]
      new_size = segment_sum(live_size, plan.dst, plan.num_out)
    mask = None if tokens.mask is None else segment_sum(tokens.mask.astype(jnp.int32), plan.dst, plan.num_out) > 0
    return tokens.replace(
        x=new_x.astype(x.dtype),
        size=new_size,
        assign=_remap_assign(tokens.assign, plan.dst),
        mask=mask,
    )
  if isinstance(plan, DensePlan):
    t = plan.matrix
    new_x = jnp.einsum("bmn,bnc->bmc", t.astype(jnp.float32), x.astype(jnp.float32),
                       precision=_HIGHEST if x.dtype == jnp.float32 else None).astype(x.dtype)
    support = (t != 0).astype(jnp.float32)
    new_size = (soft_sizes(t, size) if plan.sizes == "mass"
                else jnp.einsum("bmn,bn->bm", support, size, precision=_HIGHEST))
    # where each input mostly went; -1 for inputs no output row uses
    new_of_old = jnp.where((t != 0).any(axis=1), jnp.argmax(jnp.abs(t), axis=1), -1).astype(jnp.int32)
    mask = None if tokens.mask is None else jnp.einsum("bmn,bn->bm", support, tokens.mask.astype(jnp.float32)) > 0
    return tokens.replace(x=new_x, size=new_size, assign=_remap_assign(tokens.assign, new_of_old), mask=mask)
  raise TypeError(f"apply_plan: expected a SelectPlan, MergePlan or DensePlan, got {type(plan).__name__}")


def plan_matrix(plan: Plan, size: Array) -> Array:
  """The dense token matrix T (B, N', N) of a plan, so that X' = T X.

  Args:
    plan: any plan over N inputs.
    size: (B, N) the input token sizes (merge weights default to them).
  """
  if isinstance(plan, SelectPlan):
    return jax.nn.one_hot(plan.index, size.shape[1], dtype=jnp.float32)
  if isinstance(plan, MergePlan):
    weight = (size if plan.weight is None else plan.weight).astype(jnp.float32)
    groups = jax.nn.one_hot(plan.dst, plan.num_out, dtype=jnp.float32).transpose(0, 2, 1)  # S (B, N', N)
    weighted = groups * weight[:, None, :]
    return weighted / jnp.maximum(weighted.sum(-1, keepdims=True), 1e-30)
  if isinstance(plan, DensePlan):
    return plan.matrix
  raise TypeError(f"plan_matrix: expected a plan, got {type(plan).__name__}")


def source_matrix(assign: Array, num_tokens: int) -> Array:
  """0/1 matrix S (B, N, N0): S[b, i, j] = 1 when original token j lives in token i."""
  return jax.nn.one_hot(assign, num_tokens, dtype=jnp.float32).transpose(0, 2, 1)
