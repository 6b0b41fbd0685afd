"""Fused attention-and-select on Mosaic TPU: flash attention that also emits the selection scores.

Contract: tokax.kernels.attention's, for the key_bias / key_mask / scores arguments (no general
(N, M) mask). Design:

- Layout: q, k, v go head-major (B, H, Np, Dp). Np and Mp are padded to the block sizes; padded
  keys get MASK_VALUE in the additive key row (so they carry zero probability), padded queries get
  weight 0 in "received" and are sliced off the output.
- head_dim: zero-padded to a multiple of 128 (the TPU lane width). Zero channels change neither
  q.k nor p.v, and the scale stays D ** -0.5 of the original D. Folding two 64-wide heads into one
  128-lane tile would need a block-diagonal mask on q.k^T and gains nothing on the p.v side, so
  padding is the simpler choice; at D = 64 it spends half the MXU contraction of q.k^T on zeros.
- Forward (grid B, H, q tiles, k tiles; k innermost): online softmax with float32 m, l and
  accumulator in VMEM scratch; writes out and the per-query logsumexp (B, H, Np, 1).
- "cls": from the same tiles. On the first q tile, row 0's unnormalised probabilities
  exp(s - m_running) are written into a (1, Mp) row per (b, h); each k step first rescales the row
  by the same alpha as the accumulator, and the last k step divides by l. The q axis is then
  "arbitrary" (sequential), because that row block is resident across all q tiles of a head.
- "received": needs every query's final normaliser, which the forward only knows at its end, and
  per-query rescaling cannot be folded into column sums. So a second, light pass (grid B, H,
  k tiles, q tiles; q innermost) recomputes s = q.k^T + bias for each tile, takes p = exp(s - lse)
  with the stored logsumexp, and accumulates sum_n w[n] p[n, :] into a (1, bk) row per k tile: one
  more q.k^T matmul and exp, no p.v, nothing N x N in memory.
- Backward: a custom_vjp whose backward is the pure-jnp reference's vjp (XLA; it materialises
  the probabilities). A Pallas backward is future work.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from tokax.kernels import flash_common as fc
from tokax.kernels import reference

Array = jax.Array

LANES = 128
SUBLANES = 8


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Tile sizes of the TPU kernel: block_q queries x block_k keys.

  block_q must be a positive multiple of 8 (sublanes) and block_k a positive multiple of 128 (lanes).
  Blocks larger than the padded sequence are shrunk to it (see `for_lengths`).
  """
  block_q: int = 128
  block_k: int = 128

  def __post_init__(self):
    if not isinstance(self.block_q, int) or self.block_q <= 0 or self.block_q % SUBLANES:
      raise ValueError(f"BlockSizes: block_q must be a positive multiple of {SUBLANES}; got {self.block_q!r}")
    if not isinstance(self.block_k, int) or self.block_k <= 0 or self.block_k % LANES:
      raise ValueError(f"BlockSizes: block_k must be a positive multiple of {LANES}; got {self.block_k!r}")

  def for_lengths(self, n: int, m: int) -> "BlockSizes":
    """These sizes shrunk so that one block never exceeds the padded length."""
    return BlockSizes(min(self.block_q, fc.round_up(n, SUBLANES)), min(self.block_k, fc.round_up(m, LANES)))


def _forward_kernel(q_ref, k_ref, v_ref, row_ref, o_ref, lse_ref, *rest, scale: float, want_cls: bool,
                    block_k: int):
  """One (b, h, q tile, k tile) step. Refs: q (bq, Dp), k, v (bk, Dp), row (1, bk); out (bq, Dp),
  lse (bq, 1), [cls (1, Mp)]; scratch m, l (bq, 1), acc (bq, Dp)."""
  if want_cls:
    cls_ref, m_ref, l_ref, acc_ref = rest
  else:
    cls_ref, (m_ref, l_ref, acc_ref) = None, rest
  qi, kj = pl.program_id(2), pl.program_id(3)
  nk = pl.num_programs(3)

  @pl.when(kj == 0)
  def _init():
    m_ref[...] = jnp.full(m_ref.shape, -jnp.inf, jnp.float32)
    l_ref[...] = jnp.zeros(l_ref.shape, jnp.float32)
    acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

  q = q_ref[...]
  k = k_ref[...]
  s = jax.lax.dot_general(q, k, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
  s = s * scale + row_ref[...]  # (bq, bk)
  m_prev = m_ref[...]
  m_new = jnp.maximum(m_prev, s.max(axis=1, keepdims=True))
  alpha = jnp.exp(m_prev - m_new)
  p = jnp.exp(s - m_new)
  l_ref[...] = alpha * l_ref[...] + p.sum(axis=1, keepdims=True)
  v = v_ref[...]
  acc_ref[...] = alpha * acc_ref[...] + jnp.dot(p.astype(v.dtype), v, preferred_element_type=jnp.float32)
  m_ref[...] = m_new

  if want_cls:
    @pl.when(qi == 0)
    def _cls():
      @pl.when(kj == 0)
      def _zero():
        cls_ref[...] = jnp.zeros(cls_ref.shape, jnp.float32)
      cls_ref[...] = cls_ref[...] * alpha[0:1, :]
      start = pl.multiple_of(kj * block_k, block_k)
      cls_ref[:, pl.ds(start, block_k)] = p[0:1, :]

  @pl.when(kj == nk - 1)
  def _finish():
    l = l_ref[...]
    o_ref[...] = (acc_ref[...] / l).astype(o_ref.dtype)
    lse_ref[...] = m_ref[...] + jnp.log(l)
    if want_cls:
      @pl.when(qi == 0)
      def _cls_norm():
        cls_ref[...] = cls_ref[...] / l[0:1, :]


def _received_kernel(q_ref, k_ref, row_ref, lse_ref, w_ref, rec_ref, *, scale: float):
  """One (b, h, k tile, q tile) step: rec (1, bk) += sum_n w[n] exp(s[n, :] - lse[n])."""
  qi = pl.program_id(3)

  @pl.when(qi == 0)
  def _init():
    rec_ref[...] = jnp.zeros(rec_ref.shape, jnp.float32)

  s = jax.lax.dot_general(q_ref[...], k_ref[...], (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
  p = jnp.exp(s * scale + row_ref[...] - lse_ref[...])
  rec_ref[...] += jnp.sum(w_ref[...] * p, axis=0, keepdims=True)


def _forward_call(qh, kh, vh, row, *, scale, want_cls, blocks: BlockSizes, interpret):
  batch, heads, n_pad, d_pad = qh.shape
  m_pad = kh.shape[2]
  bq, bk = blocks.block_q, blocks.block_k
  grid = (batch, heads, n_pad // bq, m_pad // bk)
  sq = pl.squeezed
  in_specs = [
      pl.BlockSpec((sq, sq, bq, d_pad), lambda b, h, i, j: (b, h, i, 0)),
      pl.BlockSpec((sq, sq, bk, d_pad), lambda b, h, i, j: (b, h, j, 0)),
      pl.BlockSpec((sq, sq, bk, d_pad), lambda b, h, i, j: (b, h, j, 0)),
      pl.BlockSpec((sq, 1, bk), lambda b, h, i, j: (b, 0, j)),
  ]
  out_specs = [
      pl.BlockSpec((sq, sq, bq, d_pad), lambda b, h, i, j: (b, h, i, 0)),
      pl.BlockSpec((sq, sq, bq, 1), lambda b, h, i, j: (b, h, i, 0)),
  ]
  out_shape = [jax.ShapeDtypeStruct(qh.shape, qh.dtype),
               jax.ShapeDtypeStruct((batch, heads, n_pad, 1), jnp.float32)]
  if want_cls:
    out_specs.append(pl.BlockSpec((sq, sq, 1, m_pad), lambda b, h, i, j: (b, h, 0, 0)))
    out_shape.append(jax.ShapeDtypeStruct((batch, heads, 1, m_pad), jnp.float32))
  kernel = functools.partial(_forward_kernel, scale=scale, want_cls=want_cls, block_k=bk)
  q_semantics = "arbitrary" if want_cls else "parallel"  # the cls row block lives across q tiles
  return pl.pallas_call(
      kernel,
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=0,
          grid=grid,
          in_specs=in_specs,
          out_specs=out_specs,
          scratch_shapes=[pltpu.VMEM((bq, 1), jnp.float32), pltpu.VMEM((bq, 1), jnp.float32),
                          pltpu.VMEM((bq, d_pad), jnp.float32)],
      ),
      out_shape=out_shape,
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", q_semantics, "arbitrary")),
      interpret=interpret,
  )(qh, kh, vh, row)


def _received_call(qh, kh, row, lse, weight, *, scale, blocks: BlockSizes, interpret):
  batch, heads, n_pad, d_pad = qh.shape
  m_pad = kh.shape[2]
  bq, bk = blocks.block_q, blocks.block_k
  sq = pl.squeezed
  grid = (batch, heads, m_pad // bk, n_pad // bq)
  return pl.pallas_call(
      functools.partial(_received_kernel, scale=scale),
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=0,
          grid=grid,
          in_specs=[
              pl.BlockSpec((sq, sq, bq, d_pad), lambda b, h, j, i: (b, h, i, 0)),
              pl.BlockSpec((sq, sq, bk, d_pad), lambda b, h, j, i: (b, h, j, 0)),
              pl.BlockSpec((sq, 1, bk), lambda b, h, j, i: (b, 0, j)),
              pl.BlockSpec((sq, sq, bq, 1), lambda b, h, j, i: (b, h, i, 0)),
              pl.BlockSpec((sq, bq, 1), lambda b, h, j, i: (b, i, 0)),
          ],
          out_specs=pl.BlockSpec((sq, sq, 1, bk), lambda b, h, j, i: (b, h, 0, j)),
      ),
      out_shape=jax.ShapeDtypeStruct((batch, heads, 1, m_pad), jnp.float32),
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")),
      interpret=interpret,
  )(qh, kh, row, lse, weight[:, :, None])


def _forward(q, k, v, key_bias, key_mask, scores, blocks: BlockSizes, interpret):
  batch, n, heads, d = q.shape
  m = k.shape[1]
  blocks = blocks.for_lengths(n, m)
  n_pad, m_pad, d_pad = fc.round_up(n, blocks.block_q), fc.round_up(m, blocks.block_k), fc.round_up(d, LANES)
  qh, kh, vh = (fc.to_heads_major(x, length, d_pad) for x, length in ((q, n_pad), (k, m_pad), (v, m_pad)))
  row = fc.key_row(key_bias, key_mask, batch, m, m_pad)
  scale = d ** -0.5
  want_cls = "cls" in scores
  out, lse, *cls = _forward_call(qh, kh, vh, row, scale=scale, want_cls=want_cls, blocks=blocks,
                                 interpret=interpret)
  weight = fc.query_weight(key_mask, batch, n, m, n_pad)
  received = None
  if "received" in scores:
    received = _received_call(qh, kh, row, lse, weight, scale=scale, blocks=blocks, interpret=interpret)[:, :, 0]
  cls_rows = cls[0][:, :, 0] if want_cls else None
  out = out[:, :, :n, :d].transpose(0, 2, 1, 3)
  return out, fc.finalize_scores(scores, m, weight, cls_rows, received)


# The backward is the reference's vjp (no fused Pallas backward yet); options = (blocks, interpret).
_attend = reference.with_reference_backward(
    lambda q, k, v, key_bias, key_mask, mask, scores, options: _forward(q, k, v, key_bias, key_mask, scores, *options))


def flash_attention(
    q: Array,
    k: Array,
    v: Array,
    *,
    key_bias: Array | None = None,
    key_mask: Array | None = None,
    scores: tuple[str, ...] = (),
    block_sizes: BlockSizes | None = None,
    interpret=None,
) -> tuple[Array, dict[str, Array]]:
  """Attention (B, N, H, D) with the selection scores from the same tiles, on Mosaic TPU.

  Args:
    q: (B, N, H, D); k, v: (B, M, H, D).
    key_bias: (B, M) additive per-key bias, or None.
    key_mask: (B, M) bool, True for real keys, or None. Every query must keep one key.
    scores: subset of ("cls", "received"); each comes back as (B, M) float32.
    block_sizes: BlockSizes, default BlockSizes().
    interpret: passed to pallas_call; pltpu.InterpretParams() runs the kernel on CPU.

  Returns:
    out (B, N, H, D) in q's dtype and a dict of (B, M) float32 scores. Differentiable in q, k, v
    and key_bias (the backward is the reference's, in XLA).
  """
  blocks = BlockSizes() if block_sizes is None else block_sizes
  if not isinstance(blocks, BlockSizes):
    raise ValueError(f"flash_attention: block_sizes must be a tpu BlockSizes; got {type(blocks).__name__}")
  return _attend(q, k, v, key_bias, key_mask, None, tuple(scores), (blocks, interpret))
