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
- Backward (backward="pallas", the default), after jax's own TPU flash attention
  (_flash_attention_bwd_dkv / _dq): the forward stores its per-query logsumexp, and two kernels
  recompute p = exp(s - lse) tile by tile, with di = rowsum(dO * O) precomputed in XLA and
  dS = p * (dO.v^T - di). The dK/dV kernel (grid B, H, k tiles, q tiles; q innermost) accumulates
  dV += p^T dO, dK += scale dS^T q and the key row's gradient colsum(dS) in float32; the dQ kernel
  (grid B, H, q tiles, k tiles) accumulates dQ += scale dS k. d(key_bias) = sum over heads of that
  row, zero on masked keys (p is 0 there). Their tiles are BlockSizes' *_dkv / *_dq fields, and N, M
  are padded again for them; padded queries get lse = +inf, so their p is exactly 0.
  The scores are differentiable in the reference; their cotangents, when not symbolically zero
  (a custom_vjp with symbolic_zeros), go through attention_reference's vjp, which materialises the
  probabilities, and add to the kernels' gradients. Scores used only for selection (argsort,
  top-k indices) give symbolic zeros, so training with them runs the kernels only.
  backward="reference" is the reference's vjp (XLA) for everything.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from tokax.kernels import common as fc
from tokax.kernels import reference

Array = jax.Array

LANES = 128
SUBLANES = 8


def _check_block(name: str, value, multiple: int, unit: str, optional: bool) -> None:
  if optional and value is None:
    return
  if not isinstance(value, int) or isinstance(value, bool) or value <= 0 or value % multiple:
    raise ValueError(f"BlockSizes: {name} must be a positive multiple of {multiple} ({unit})"
                     f"{' or None' if optional else ''}; got {value!r}")


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Tile sizes of the TPU kernels: block_q queries x block_k keys.

  block_q must be a positive multiple of 8 (sublanes) and block_k a positive multiple of 128 (lanes).
  The backward kernels have their own tiles (dK/dV: block_q_dkv x block_k_dkv, dQ: block_q_dq x
  block_k_dq), same rules; None means the forward's. Blocks larger than the padded sequence are
  shrunk to it (see `for_lengths`).
  """
  block_q: int = 128
  block_k: int = 128
  block_q_dkv: int | None = None
  block_k_dkv: int | None = None
  block_q_dq: int | None = None
  block_k_dq: int | None = None

  def __post_init__(self):
    for name in ("block_q", "block_q_dkv", "block_q_dq"):
      _check_block(name, getattr(self, name), SUBLANES, "sublanes", name != "block_q")
    for name in ("block_k", "block_k_dkv", "block_k_dq"):
      _check_block(name, getattr(self, name), LANES, "lanes", name != "block_k")

  def for_lengths(self, n: int, m: int) -> "BlockSizes":
    """These sizes shrunk so that one block never exceeds the padded length."""
    n_max, m_max = fc.round_up(n, SUBLANES), fc.round_up(m, LANES)
    shrink = lambda block, most: None if block is None else min(block, most)
    return BlockSizes(
        shrink(self.block_q, n_max), shrink(self.block_k, m_max),
        shrink(self.block_q_dkv, n_max), shrink(self.block_k_dkv, m_max),
        shrink(self.block_q_dq, n_max), shrink(self.block_k_dq, m_max))

  def backward_blocks(self, n: int, m: int) -> tuple["BlockSizes", "BlockSizes"]:
    """(dK/dV tiles, dQ tiles) for lengths n, m, each a plain (block_q, block_k) BlockSizes."""
    b = self.for_lengths(n, m)
    pick = lambda block, default: default if block is None else block
    return (BlockSizes(pick(b.block_q_dkv, b.block_q), pick(b.block_k_dkv, b.block_k)),
            BlockSizes(pick(b.block_q_dq, b.block_q), pick(b.block_k_dq, b.block_k)))


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


def _probs_and_ds(q, k, v, row, lse, d_out, di, scale):
  """Recompute one tile's probabilities and dS = p * (dP - di) (unscaled). Shapes: q, d_out (bq, Dp);
  k, v (bk, Dp); row (1, bk); lse, di (bq, 1). Returns p, ds (bq, bk) float32."""
  s = jax.lax.dot_general(q, k, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
  p = jnp.exp(s * scale + row - lse)
  dp = jax.lax.dot_general(d_out, v, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
  return p, p * (dp - di)


def _dkv_kernel(q_ref, k_ref, v_ref, row_ref, lse_ref, do_ref, di_ref, dk_ref, dv_ref, *rest, scale: float,
                want_dbias: bool):
  """One (b, h, k tile, q tile) step, q innermost: dV += p^T dO, dK += scale dS^T q, d(row) += colsum dS.
  Refs: q, dO (bq, Dp); k, v (bk, Dp); row (1, bk); lse, di (bq, 1); out dk, dv (bk, Dp),
  [dbias (1, bk)]; scratch dk, dv (bk, Dp) float32."""
  if want_dbias:
    db_ref, dk_acc, dv_acc = rest
  else:
    db_ref, (dk_acc, dv_acc) = None, rest
  qi, nq = pl.program_id(3), pl.num_programs(3)

  @pl.when(qi == 0)
  def _init():
    dk_acc[...] = jnp.zeros(dk_acc.shape, jnp.float32)
    dv_acc[...] = jnp.zeros(dv_acc.shape, jnp.float32)
    if want_dbias:
      db_ref[...] = jnp.zeros(db_ref.shape, jnp.float32)

  q, d_out = q_ref[...], do_ref[...]
  p, ds = _probs_and_ds(q, k_ref[...], v_ref[...], row_ref[...], lse_ref[...], d_out, di_ref[...], scale)
  dv_acc[...] += jnp.dot(p.T.astype(d_out.dtype), d_out, preferred_element_type=jnp.float32)
  dk_acc[...] += jnp.dot((ds * scale).T.astype(q.dtype), q, preferred_element_type=jnp.float32)
  if want_dbias:
    db_ref[...] += jnp.sum(ds, axis=0, keepdims=True)

  @pl.when(qi == nq - 1)
  def _finish():
    dk_ref[...] = dk_acc[...].astype(dk_ref.dtype)
    dv_ref[...] = dv_acc[...].astype(dv_ref.dtype)


def _dq_kernel(q_ref, k_ref, v_ref, row_ref, lse_ref, do_ref, di_ref, dq_ref, dq_acc, *, scale: float):
  """One (b, h, q tile, k tile) step, k innermost: dQ += scale dS k. Refs as _dkv_kernel's; out dq (bq, Dp)."""
  kj, nk = pl.program_id(3), pl.num_programs(3)

  @pl.when(kj == 0)
  def _init():
    dq_acc[...] = jnp.zeros(dq_acc.shape, jnp.float32)

  k = k_ref[...]
  _, ds = _probs_and_ds(q_ref[...], k, v_ref[...], row_ref[...], lse_ref[...], do_ref[...], di_ref[...], scale)
  dq_acc[...] += jnp.dot((ds * scale).astype(k.dtype), k, preferred_element_type=jnp.float32)

  @pl.when(kj == nk - 1)
  def _finish():
    dq_ref[...] = dq_acc[...].astype(dq_ref.dtype)


def _backward_specs(bq, bk, d_pad, q_tile, k_tile):
  """In specs of both backward kernels; q_tile / k_tile pick the tile indices from the grid (b, h, x, y)."""
  sq = pl.squeezed
  q_map = lambda b, h, x, y: (b, h, q_tile(x, y), 0)
  k_map = lambda b, h, x, y: (b, h, k_tile(x, y), 0)
  return [
      pl.BlockSpec((sq, sq, bq, d_pad), q_map),
      pl.BlockSpec((sq, sq, bk, d_pad), k_map),
      pl.BlockSpec((sq, sq, bk, d_pad), k_map),
      pl.BlockSpec((sq, 1, bk), lambda b, h, x, y: (b, 0, k_tile(x, y))),
      pl.BlockSpec((sq, sq, bq, 1), q_map),
      pl.BlockSpec((sq, sq, bq, d_pad), q_map),
      pl.BlockSpec((sq, sq, bq, 1), q_map),
  ]


def _dkv_call(qh, kh, vh, row, lse, doh, di, *, scale, want_dbias, blocks: BlockSizes, interpret):
  batch, heads, n_pad, d_pad = qh.shape
  m_pad = kh.shape[2]
  bq, bk = blocks.block_q, blocks.block_k
  sq = pl.squeezed
  out_specs = [pl.BlockSpec((sq, sq, bk, d_pad), lambda b, h, j, i: (b, h, j, 0))] * 2
  out_shape = [jax.ShapeDtypeStruct(kh.shape, kh.dtype), jax.ShapeDtypeStruct(vh.shape, vh.dtype)]
  if want_dbias:
    out_specs.append(pl.BlockSpec((sq, sq, 1, bk), lambda b, h, j, i: (b, h, 0, j)))
    out_shape.append(jax.ShapeDtypeStruct((batch, heads, 1, m_pad), jnp.float32))
  return pl.pallas_call(
      functools.partial(_dkv_kernel, scale=scale, want_dbias=want_dbias),
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=0,
          grid=(batch, heads, m_pad // bk, n_pad // bq),
          in_specs=_backward_specs(bq, bk, d_pad, q_tile=lambda j, i: i, k_tile=lambda j, i: j),
          out_specs=out_specs,
          scratch_shapes=[pltpu.VMEM((bk, d_pad), jnp.float32), pltpu.VMEM((bk, d_pad), jnp.float32)],
      ),
      out_shape=out_shape,
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")),
      interpret=interpret,
  )(qh, kh, vh, row, lse, doh, di)


def _dq_call(qh, kh, vh, row, lse, doh, di, *, scale, blocks: BlockSizes, interpret):
  batch, heads, n_pad, d_pad = qh.shape
  m_pad = kh.shape[2]
  bq, bk = blocks.block_q, blocks.block_k
  sq = pl.squeezed
  return pl.pallas_call(
      functools.partial(_dq_kernel, scale=scale),
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=0,
          grid=(batch, heads, n_pad // bq, m_pad // bk),
          in_specs=_backward_specs(bq, bk, d_pad, q_tile=lambda i, j: i, k_tile=lambda i, j: j),
          out_specs=pl.BlockSpec((sq, sq, bq, d_pad), lambda b, h, i, j: (b, h, i, 0)),
          scratch_shapes=[pltpu.VMEM((bq, d_pad), jnp.float32)],
      ),
      out_shape=jax.ShapeDtypeStruct(qh.shape, qh.dtype),
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")),
      interpret=interpret,
  )(qh, kh, vh, row, lse, doh, di)


def _backward_kernels(q, k, v, key_bias, key_mask, out, lse, d_out, blocks: BlockSizes, interpret):
  """Gradients of <d_out, attention(q, k, v)> through the two Pallas kernels.

  Args:
    q: (B, N, H, D); k, v: (B, M, H, D); key_bias (B, M) or None; key_mask (B, M) bool or None.
    out: (B, N, H, D) the forward's output; lse: (B, H, N) float32 its per-query logsumexp.
    d_out: (B, N, H, D) the output's cotangent.

  Returns:
    dq, dk, dv in their inputs' dtypes and d(key_bias) (B, M) float32 (None without key_bias):
    sum over heads and queries of dS, zero on masked keys.
  """
  batch, n, heads, d = q.shape
  m = k.shape[1]
  dkv_blocks, dq_blocks = blocks.backward_blocks(n, m)
  n_pad = fc.round_up(n, math.lcm(dkv_blocks.block_q, dq_blocks.block_q))
  m_pad = fc.round_up(m, math.lcm(dkv_blocks.block_k, dq_blocks.block_k))
  d_pad = fc.round_up(d, LANES)
  qh, kh, vh, doh = (fc.to_heads_major(x, length, d_pad)
                     for x, length in ((q, n_pad), (k, m_pad), (v, m_pad), (d_out.astype(q.dtype), n_pad)))
  row = fc.key_row(key_bias, key_mask, batch, m, m_pad)
  # padded queries: lse = +inf makes their p exactly 0 (their dO is 0 too), so they add nothing
  lse = fc.pad_axis(lse, 2, n_pad, jnp.inf)[..., None]
  di = jnp.sum(out.astype(jnp.float32) * d_out.astype(jnp.float32), axis=-1).transpose(0, 2, 1)
  di = fc.pad_axis(di, 2, n_pad)[..., None]  # (B, H, Np, 1)
  scale = d ** -0.5
  want_dbias = key_bias is not None
  dk, dv, *dbias = _dkv_call(qh, kh, vh, row, lse, doh, di, scale=scale, want_dbias=want_dbias,
                             blocks=dkv_blocks, interpret=interpret)
  dq = _dq_call(qh, kh, vh, row, lse, doh, di, scale=scale, blocks=dq_blocks, interpret=interpret)
  unpad = lambda x, length: x[:, :, :length, :d].transpose(0, 2, 1, 3)
  d_bias = None
  if want_dbias:
    d_bias = dbias[0][:, :, 0, :m].sum(axis=1)
    if key_mask is not None:
      d_bias = jnp.where(key_mask, d_bias, 0.0)
    d_bias = d_bias.astype(key_bias.dtype)
  return unpad(dq, n), unpad(dk, m), unpad(dv, m), d_bias


def _forward(q, k, v, key_bias, key_mask, scores, blocks: BlockSizes, interpret):
  """(out (B, N, H, D), scores dict), and the per-query logsumexp (B, H, N) float32 the backward reads."""
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
  return (out, fc.finalize_scores(scores, m, weight, cls_rows, received)), lse[:, :, :n, 0]


BACKWARDS = ("pallas", "reference")

# backward="reference": the reference's vjp (XLA, materialised probabilities); options = (blocks, interpret).
_attend_reference_backward = reference.with_reference_backward(
    lambda q, k, v, key_bias, key_mask, mask, scores, options: _forward(q, k, v, key_bias, key_mask, scores,
                                                                        *options)[0])


# backward="pallas": the same forward, the output's cotangent through the Pallas kernels and the
# scores' (when not symbolically zero) through attention_reference's vjp (reference.with_kernel_backward).
def _pallas_forward(q, k, v, key_bias, key_mask, scores, options):
  (out, score_values), lse = _forward(q, k, v, key_bias, key_mask, scores, *options)
  return (out, score_values), (out, lse)


def _pallas_backward(q, k, v, key_bias, key_mask, residuals, d_out, options):
  out, lse = residuals
  return _backward_kernels(q, k, v, key_bias, key_mask, out, lse, d_out, *options)


_attend = reference.with_kernel_backward(_pallas_forward, _pallas_backward)


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
    backward: str = "pallas",
) -> tuple[Array, dict[str, Array]]:
  """Attention (B, N, H, D) with the selection scores from the same tiles, on Mosaic TPU.

  Args:
    q: (B, N, H, D); k, v: (B, M, H, D).
    key_bias: (B, M) additive per-key bias, or None.
    key_mask: (B, M) bool, True for real keys, or None. Every query must keep one key.
    scores: subset of ("cls", "received"); each comes back as (B, M) float32.
    block_sizes: BlockSizes, default BlockSizes().
    interpret: passed to pallas_call; pltpu.InterpretParams() runs the kernel on CPU.
    backward: "pallas" (default): dQ and dK/dV/d(key_bias) by two Pallas kernels from the stored
      logsumexp (the scores' cotangents, when any, go through the reference's vjp); "reference":
      the reference's vjp in XLA for everything.

  Returns:
    out (B, N, H, D) in q's dtype and a dict of (B, M) float32 scores. Differentiable in q, k, v
    and key_bias; key_mask gets no cotangent.
  """
  blocks = BlockSizes() if block_sizes is None else block_sizes
  if not isinstance(blocks, BlockSizes):
    raise ValueError(f"flash_attention: block_sizes must be a tpu BlockSizes; got {type(blocks).__name__}")
  if backward == "reference":
    return _attend_reference_backward(q, k, v, key_bias, key_mask, None, tuple(scores), (blocks, interpret))
  if backward != "pallas":
    raise ValueError(f"flash_attention: backward must be one of {BACKWARDS}; got {backward!r}")
  return _attend(q, k, v, key_bias, key_mask, tuple(scores), (blocks, interpret))
