"""Pure-jnp pieces shared by the kernel backends (Mosaic TPU, Mosaic GPU) and their dispatchers.

The dispatchers (attention.py, matching.py) and the backends (mosaic_gpu/, tpu/) import this module;
a backend never imports a dispatcher.

Attention: the kernels see padded, head-major operands: q (B, H, Np, Dp), k and v (B, H, Mp, Dp), one float32
additive key row (B, 1, Mp) that carries key_bias, key_mask and the key padding (MASK_VALUE where
a key is masked or padded), and a float32 query weight (B, Np) that is 1 for the queries the
"received" score averages over and 0 for padded (or, in self-attention, masked) queries.

Score contract (matches tokax.kernels.reference):
  cls[b, m]      = mean_h p[b, h, 0, m]
  received[b, m] = sum_h sum_n w[b, n] p[b, h, n, m] / (H * max(sum_n w[b, n], 1))
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

Array = jax.Array

# Finite, so that a tile whose keys are all masked gives exp(0) rather than exp(-inf + inf) = NaN;
# the online softmax then wipes those terms (alpha = exp(MASK_VALUE - real max) = 0) as soon as a
# real key arrives. A query with no real key at all is outside the contract (the reference gives NaN).
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


def round_up(x: int, multiple: int) -> int:
  return -(-x // multiple) * multiple


def pad_axis(x: Array, axis: int, size: int, value: float = 0) -> Array:
  """Pad `x` at the end of `axis` to `size` with `value` (no-op when already that long)."""
  extra = size - x.shape[axis]
  if extra < 0:
    raise ValueError(f"pad_axis: axis {axis} has length {x.shape[axis]} > target {size}")
  if extra == 0:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, extra)
  return jnp.pad(x, widths, constant_values=value)


def to_heads_major(x: Array, length: int, head_dim: int) -> Array:
  """(B, N, H, D) -> (B, H, length, head_dim), zero-padded on the token and head axes."""
  x = x.transpose(0, 2, 1, 3)
  return pad_axis(pad_axis(x, 2, length), 3, head_dim)


def key_row(key_bias: Array | None, key_mask: Array | None, batch: int, m: int, m_padded: int) -> Array:
  """The (B, 1, Mp) float32 additive key row: key_bias on real keys, MASK_VALUE on masked or padded ones."""
  row = jnp.zeros((batch, m), jnp.float32) if key_bias is None else key_bias.astype(jnp.float32)
  if key_mask is not None:
    row = jnp.where(key_mask, row, MASK_VALUE)
  return pad_axis(row, 1, m_padded, MASK_VALUE)[:, None, :]


def query_weight(key_mask: Array | None, batch: int, n: int, m: int, n_padded: int) -> Array:
  """(B, Np) float32: which queries the "received" score averages over.

  As in the reference: in self-attention (N = M) the key mask also masks queries; padded queries
  never count.
  """
  if key_mask is not None and n == m:
    w = key_mask.astype(jnp.float32)
  else:
    w = jnp.ones((batch, n), jnp.float32)
  return pad_axis(w, 1, n_padded)


def finalize_scores(names: tuple[str, ...], m: int, weight: Array, cls_rows: Array | None = None,
                    received_sums: Array | None = None) -> dict[str, Array]:
  """Per-head kernel side outputs -> the (B, M) scores.

  Args:
    names: requested scores, a subset of ("cls", "received").
    m: the unpadded key count.
    weight: (B, Np) the query weights (query_weight).
    cls_rows: (B, H, Mp) normalised attention row of query 0 per head, when "cls" is requested.
    received_sums: (B, H, Mp) sum_n w[n] p[h, n, m] per head, when "received" is requested.
  """
  out = {}
  for name in names:
    if name == "cls":
      out["cls"] = cls_rows[:, :, :m].mean(axis=1)
    elif name == "received":
      heads = received_sums.shape[1]
      total = jnp.maximum(weight.sum(-1, keepdims=True), 1.0)
      out["received"] = received_sums[:, :, :m].sum(axis=1) / (heads * total)
    else:
      raise ValueError(f"finalize_scores: unknown score {name!r}; expected 'cls' or 'received'")
  return out


# --- bipartite matching (tokax.kernels.matching and its tpu / mosaic_gpu kernels) ---------------------

@dataclasses.dataclass(frozen=True)
class MatchingBlockSizes:
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
  def for_gpu(cls) -> "MatchingBlockSizes":
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


# --- running a kernel per batch shard ---------------------------------------------------------------

# The mesh axis the dispatchers split a kernel's batch over (tokax's trainer calls it "data").
BATCH_AXIS = "data"


def _auto_axes(mesh) -> tuple[str, ...]:
  """The mesh's axes that are not manual (not already inside a shard_map over them)."""
  return tuple(name for name, kind in zip(mesh.axis_names, mesh.axis_types)
               if kind != jax.sharding.AxisType.Manual)


def batch_shards(batch: int, axis: str | None = BATCH_AXIS) -> int:
  """How many shards per_batch_shard splits a batch of `batch` rows into (1: none, or no split).

  The size of mesh axis `axis` of the mesh set by jax.set_mesh, when it has that axis, not manual,
  and it divides `batch`; else 1.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if axis is None or mesh.empty or axis not in _auto_axes(mesh):
    return 1
  size = mesh.shape[axis]
  return size if size > 1 and batch % size == 0 else 1


def per_batch_shard(fn, *args, axis: str | None = BATCH_AXIS):
  """fn(*args) run per device through jax.shard_map, each array's leading (batch) dim split over `axis`.

  A pallas_call cannot be partitioned by XLA: compiled for a TPU, a Mosaic kernel inside a jit over
  several devices is refused unless every mesh axis is manual ("Mosaic kernels cannot be
  automatically partitioned. Please wrap the call in a shard_map"); in TPU interpret mode its host
  callbacks are pinned to one device. So when a mesh is set (jax.set_mesh, as tokax's trainer does)
  over several devices, the dispatchers run the kernel under jax.shard_map over all its non-manual
  axes (Mosaic wants every axis manual): the batch split over `axis` when the mesh has it and it
  divides the batch (batch_shards), every other axis seeing replicated operands (a tensor-parallel
  "model" axis computes its data shard's attention on each of its devices). Without such a mesh this is
  fn(*args). `args` may hold None (absent masks); every output has the batch as its leading dim.
  """
  mesh = jax.sharding.get_abstract_mesh()
  axes = () if mesh.empty else _auto_axes(mesh)
  if math.prod(mesh.shape[name] for name in axes) == 1:
    return fn(*args)
  leaves = [x for x in jax.tree.leaves(args) if hasattr(x, "shape")]
  split = bool(leaves) and batch_shards(leaves[0].shape[0], axis) > 1
  spec = jax.P(axis) if split else jax.P()
  # check_vma=False: pallas_call's out_shape carries no varying-axes annotation
  return jax.shard_map(fn, in_specs=spec, out_specs=spec, axis_names=set(axes), check_vma=False)(*args)
