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
- "auto" / None: "pallas" where a compiled kernel applies (TPU; GPU with a bf16/f16 metric),
  else "xla".

Normalisation happens here, outside the kernels, with the reference's exact expression (float32
norm, a zero vector stays zero, so its similarity to everything is 0 rather than NaN; cast back
to the metric's dtype). Both paths therefore multiply the same numbers; the kernels see
normalised A and B operands, an additive (B, |B|) column bias (0 or -inf) and nothing else.
Protected and masked tokens are handled as ToMe and DToMe do: the class token's row (A[0]) and
the distillation token's column (B[0]) are -inf, masked rows and columns are -inf; a row with no
finite score gets max -inf and index 0 (jnp.argmax of an all -inf row).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

Array = jax.Array

IMPLEMENTATIONS = ("xla", "pallas", "auto")


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Tile sizes of the matching kernels.

  Attributes:
    block_a: A rows per tile (the Mosaic GPU kernel runs two warpgroups of block_a rows each; the
      TPU kernel puts A along lanes, so real TPUs want a multiple of 128 or the whole padded |A|).
    block_b: B rows per pipeline step (the reduction axis of the running max).
  Both must be positive multiples of 8; the GPU kernel needs multiples of 64 (wgmma tiles).
  """
  block_a: int = 128
  block_b: int = 128

  def __post_init__(self):
    for name in ("block_a", "block_b"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % 8:
        raise ValueError(f"BlockSizes.{name}: expected a positive multiple of 8; got {value!r}")

  @classmethod
  def for_gpu(cls) -> "BlockSizes":
    """Mosaic GPU defaults: 2 x 64 A rows per CTA (one wgmma M tile per warpgroup), 128 B per step."""
    return cls(block_a=64, block_b=128)


def normalize(metric: Array) -> Array:
  """(B, N, C) -> (B, N, C) unit rows in the metric's dtype; zero rows stay zero (no NaN).

  The expression ToMe and DToMe in tokax always used: the norm in float32, then a divide in the
  metric's dtype.
  """
  norm = jnp.linalg.norm(metric.astype(jnp.float32), axis=-1, keepdims=True)
  return (metric / jnp.where(norm > 0, norm, 1.0)).astype(metric.dtype)


def valid_sets(batch: int, n: int, key_mask: Array | None, *, has_cls: bool, has_dist: bool) -> tuple[Array, Array]:
  """Which A rows and B columns take part: (B, |A|) and (B, |B|) bool.

  A = even positions, B = odd; the class token (A[0]) never leaves, the distillation token (B[0])
  never receives, masked tokens do neither.
  """
  valid = jnp.ones((batch, n), bool) if key_mask is None else key_mask.astype(bool)
  rows, cols = valid[:, 0::2], valid[:, 1::2]
  if has_cls:
    rows = rows.at[:, 0].set(False)
  if has_dist:
    cols = cols.at[:, 0].set(False)
  return rows, cols


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


def round_up(value: int, multiple: int) -> int:
  return -(-value // multiple) * multiple


def kernel_operands(metric: Array, key_mask: Array | None, *, has_cls: bool, has_dist: bool, normalized: bool,
                    rows_multiple: int, cols_multiple: int, channels_multiple: int = 1
                    ) -> tuple[Array, Array, Array, Array]:
  """What every matching kernel takes: padded A and B, B's column bias, and A's row validity.

  Args:
    metric: (B, N, C). key_mask: (B, N) bool or None. has_cls, has_dist, normalized: as
      matching_reference.
    rows_multiple, cols_multiple: |A| and |B| are zero-padded to these multiples.
    channels_multiple: C is zero-padded to this multiple (zero channels change no dot product).

  Returns:
    a (B, |A|p, Cp) and b (B, |B|p, Cp) normalised operands in the metric's dtype; col_bias
    (B, |B|p) float32, 0 for columns that take part and -inf for the rest (padding included);
    row_valid (B, |A|) bool.
  """
  batch, n, c = metric.shape
  if not normalized:
    metric = normalize(metric)
  a, b = metric[:, 0::2], metric[:, 1::2]
  num_a, num_b = a.shape[1], b.shape[1]
  row_valid, col_valid = valid_sets(batch, n, key_mask, has_cls=has_cls, has_dist=has_dist)
  pad_c = round_up(c, channels_multiple) - c
  a = jnp.pad(a, ((0, 0), (0, round_up(num_a, rows_multiple) - num_a), (0, pad_c)))
  b = jnp.pad(b, ((0, 0), (0, round_up(num_b, cols_multiple) - num_b), (0, pad_c)))
  col_valid = jnp.pad(col_valid, ((0, 0), (0, b.shape[1] - num_b)))
  col_bias = jnp.where(col_valid, 0.0, -jnp.inf).astype(jnp.float32)
  return a, b, col_bias, row_valid


def finish(node_max: Array, node_idx: Array, row_valid: Array) -> tuple[Array, Array]:
  """Kernel rows (B, |A|p) -> (B, |A|) outputs: padding dropped, rows that take no part -inf / 0."""
  num_a = row_valid.shape[1]
  node_max, node_idx = node_max[:, :num_a], node_idx[:, :num_a].astype(jnp.int32)
  return jnp.where(row_valid, node_max, -jnp.inf), jnp.where(row_valid, node_idx, 0)


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
  if implementation in (None, "auto"):
    implementation = "pallas" if interpret or pallas_applies(metric) else "xla"
  if implementation == "xla":
    return matching_reference(metric, has_cls=has_cls, has_dist=has_dist, key_mask=key_mask, normalized=normalized)
  backend = jax.default_backend()
  if interpret or backend == "tpu":
    from tokax.kernels.tpu import matching as tpu_matching
    return tpu_matching.bipartite_matching_tpu(metric, has_cls=has_cls, has_dist=has_dist, key_mask=key_mask,
                                               normalized=normalized, block_sizes=block_sizes or BlockSizes(),
                                               interpret=interpret)
  if backend == "gpu":
    from tokax.kernels.mosaic_gpu import matching as gpu_matching
    return gpu_matching.bipartite_matching_mgpu(metric, has_cls=has_cls, has_dist=has_dist, key_mask=key_mask,
                                                normalized=normalized,
                                                block_sizes=block_sizes or BlockSizes.for_gpu())
  raise ValueError(f"bipartite_matching: implementation='pallas' has no compiled kernel on {backend!r}; pass "
                   "interpret=True (runs the TPU kernel in interpret mode) or use implementation='xla'")
