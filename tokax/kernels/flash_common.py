"""Pure-jnp pieces shared by the fused attention-and-select kernels (Mosaic TPU and Mosaic GPU).

The kernels see padded, head-major operands: q (B, H, Np, Dp), k and v (B, H, Mp, Dp), one float32
additive key row (B, 1, Mp) that carries key_bias, key_mask and the key padding (MASK_VALUE where
a key is masked or padded), and a float32 query weight (B, Np) that is 1 for the queries the
"received" score averages over and 0 for padded (or, in self-attention, masked) queries.

Score contract (matches tokax.kernels.reference):
  cls[b, m]      = mean_h p[b, h, 0, m]
  received[b, m] = sum_h sum_n w[b, n] p[b, h, n, m] / (H * max(sum_n w[b, n], 1))
"""
from __future__ import annotations

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
