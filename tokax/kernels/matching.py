"""Fused bipartite matching: each A token's best B partner without the (B, |A|, |B|) score matrix.

ToMe, PiToMe and DToMe split tokens into A (even positions) and B (odd), score every A-B pair by
cosine similarity and keep, per A token, the best score and its B index (torch.max / jnp.argmax:
the first index on ties). `bipartite_matching` is the one entry point:

- "xla": `matching_reference`, the dense computation the reduction methods always did (the score
  matrix is formed, then max and argmax). Always available.
- "pallas": a blockwise kernel that keeps a running row max and argmax over B tiles, so the score
  matrix never leaves the chip: Mosaic TPU (tokax.kernels.tpu.matching) on TPU and in interpret
  mode on the CPU, Mosaic GPU (tokax.kernels.mosaic_gpu.matching) on NVIDIA GPUs (half
  precision only).
- "auto" / None: "pallas" where a compiled kernel applies on the `backend` passed (default
  jax.default_backend(); pallas_applies): any metric on "tpu", a bf16/f16 metric on "gpu"; or when
  `interpret` is given; else "xla".

Under jax.set_mesh over several devices the kernel runs once per batch shard through jax.shard_map
(common.per_batch_shard): XLA cannot partition a pallas_call itself.

The results select merges and carry no gradient: the "pallas" path stops the metric's gradient
(pallas_call has no derivative rule), so a model with a Pallas matching trains; every reduction
uses node_max only to order and compare, so its gradients equal the "xla" path's.

Normalisation happens here, outside the kernels, with the reference's exact expression (float32
norm, a zero vector stays zero, so its similarity to everything is 0 rather than NaN; cast back
to the metric's dtype). Both paths therefore multiply the same numbers; the kernels see
normalised A and B operands, an additive (B, |B|) column bias (0 or -inf) and nothing else.
Protected and masked tokens are handled as ToMe and DToMe do: the class token's row (A[0]) and
the distillation token's column (B[0]) are -inf, masked rows and columns are -inf; a row with no
finite score gets max -inf and index 0 (jnp.argmax of an all -inf row).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from tokax.kernels import common

Array = jax.Array

IMPLEMENTATIONS = ("xla", "pallas", "auto")


# The helpers the kernels share live in tokax.kernels.common (the backends import them, never this module).
BlockSizes = common.MatchingBlockSizes
normalize, valid_sets = common.normalize, common.valid_sets
round_up, kernel_operands, finish = common.round_up, common.kernel_operands, common.finish


def matching_reference(metric: Array, *, has_cls: bool, has_dist: bool = False, key_mask: Array | None = None,
                       normalized: bool = False) -> tuple[Array, Array]:
  """The dense computation: (B, |A|, |B|) cosine similarities, then max and argmax over B.

  Args:
    metric: (B, N, C) matching features (keys averaged over heads).
    has_cls: token 0 is a class token (its row is -inf).
    has_dist: token 1 is a distillation token (its column is -inf).
    key_mask: (B, N) bool valid tokens, or None; masked rows and columns are -inf.
    normalized: the metric rows are already unit (or zero) vectors; skip `normalize`.

  Returns:
    node_max (B, |A|) float32 best score of each A token, node_idx (B, |A|) int32 its B index
    (the first maximal one).
  """
  precise = metric.dtype == jnp.float32
  if not normalized:
    metric = normalize(metric)
  a, b = metric[:, 0::2], metric[:, 1::2]
  scores = jnp.einsum("bid,bjd->bij", a, b, preferred_element_type=jnp.float32,
                      precision=jax.lax.Precision.HIGHEST if precise else None)
  if has_cls:
    scores = scores.at[:, 0, :].set(-jnp.inf)
  if has_dist:
    scores = scores.at[:, :, 0].set(-jnp.inf)
  if key_mask is not None:
    valid = key_mask.astype(bool)
    scores = jnp.where(valid[:, 0::2, None] & valid[:, 1::2][:, None, :], scores, -jnp.inf)
  return scores.max(axis=-1), jnp.argmax(scores, axis=-1).astype(jnp.int32)


def pallas_applies(metric: Array, backend: str | None = None) -> bool:
  """Whether a compiled Pallas matching kernel serves this metric on `backend` (default: the default one)."""
  backend = jax.default_backend() if backend is None else backend
  if backend == "tpu":
    return True
  return backend == "gpu" and metric.dtype in (jnp.bfloat16, jnp.float16)


def bipartite_matching(
    metric: Array,
    *,
    has_cls: bool,
    has_dist: bool = False,
    key_mask: Array | None = None,
    normalized: bool = False,
    implementation: str | None = None,
    block_sizes: BlockSizes | None = None,
    interpret=None,
    backend: str | None = None,
    batch_axis: str | None = common.BATCH_AXIS,
) -> tuple[Array, Array]:
  """Each A token's best B partner by cosine similarity (ToMe's node_max / node_idx).

  Args:
    metric: (B, N, C) matching features; A = metric[:, 0::2], B = metric[:, 1::2].
    has_cls: token 0 is a class token (A[0] never matches: max -inf, index 0).
    has_dist: token 1 is a distillation token (B[0] is never a partner).
    key_mask: (B, N) bool valid tokens (DToMe padding), or None.
    normalized: rows are already unit or zero vectors (PiToMe normalises its own way).
    implementation: "xla", "pallas" or "auto"/None (see the module docstring).
    block_sizes: kernel tiles (default BlockSizes() on TPU, BlockSizes.for_gpu() on GPU).
    interpret: run the Pallas kernel in interpret mode: True (the TPU kernel under
      pltpu.InterpretParams(), which is how the CPU runs it) or a pltpu.InterpretParams.
    backend: the platform whose "auto" rule applies and whose kernel "pallas" runs ("tpu", "gpu",
      "cpu"); default jax.default_backend().
    batch_axis: the mesh axis the batch is split over under jax.set_mesh over several devices
      (common.per_batch_shard); None: the kernel sees the whole batch on every device.

  Returns:
    node_max (B, |A|) float32 and node_idx (B, |A|) int32, equal to matching_reference.
  """
  if metric.ndim != 3:
    raise ValueError(f"bipartite_matching: metric must be (B, N, C); got shape {metric.shape}")
  if metric.shape[1] < 2:
    raise ValueError(f"bipartite_matching: need N >= 2 tokens to form A and B; got N = {metric.shape[1]}")
  if key_mask is not None and key_mask.shape != metric.shape[:2]:
    raise ValueError(f"bipartite_matching: key_mask must be (B, N) = {metric.shape[:2]}; got {key_mask.shape}")
  if implementation not in (None,) + IMPLEMENTATIONS:
    raise ValueError(f"bipartite_matching: unknown implementation {implementation!r}; expected one of "
                     f"{IMPLEMENTATIONS}")
  backend = jax.default_backend() if backend is None else backend
  if implementation in (None, "auto"):
    implementation = "pallas" if interpret or pallas_applies(metric, backend) else "xla"
  if implementation == "xla":
    return matching_reference(metric, has_cls=has_cls, has_dist=has_dist, key_mask=key_mask, normalized=normalized)
  if interpret or backend == "tpu":
    from tokax.kernels.tpu import matching as tpu_matching
    kernel = functools.partial(tpu_matching.bipartite_matching_tpu, block_sizes=block_sizes or BlockSizes(),
                               interpret=interpret)
  elif backend == "gpu":
    from tokax.kernels.mosaic_gpu import matching as gpu_matching
    kernel = functools.partial(gpu_matching.bipartite_matching_mgpu, block_sizes=block_sizes or BlockSizes.for_gpu())
  else:
    raise ValueError(f"bipartite_matching: implementation='pallas' has no compiled kernel on {backend!r}; pass "
                     "interpret=True (runs the TPU kernel in interpret mode) or use implementation='xla'")
  call = lambda metric, key_mask: kernel(metric, has_cls=has_cls, has_dist=has_dist, key_mask=key_mask,
                                         normalized=normalized)
  # The kernels have no derivative rule; their results only pick merges (orderings, comparisons, indices).
  return common.per_batch_shard(call, jax.lax.stop_gradient(metric), key_mask, axis=batch_axis)
