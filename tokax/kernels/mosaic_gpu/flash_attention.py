"""Fused attention-and-select on Mosaic GPU (Hopper): flash attention plus the selection scores.

Written without a GPU, checked on one afterwards (`python -m tokax.bench.attention_kernels --check`,
H200, jax 0.11.2: forward, both scores and the backward kernels against the float32 reference at
N = 197, 577, 1024, 4096 and head dims 64 and 128; BENCHMARKS.md). The structure follows jax's
FlashAttention-3 example (jax/experimental/pallas/ops/gpu/attention_mgpu.py,
attention_with_pipeline_emitter): plgpu.kernel with 3 warpgroups per CTA, two computing (each owns
block_q queries) and one moving K/V tiles through plgpu.emit_pipeline_warp_specialized, wgmma for
q.k^T and p.v, float32 accumulators, the online softmax in the log2 domain.

Differences from the example:
- scratch in the input dtype (the example hard-codes float16, which breaks bf16: PERFORMANCE.md);
- the softmax scale D ** -0.5 is applied (the example has none);
- a float32 key row (key_bias, key_mask and padding; block_kv per step through the same pipeline)
  is added to the logits; N and M are padded (queries to 2 * block_q, keys to 2 * block_kv) and the
  padded keys masked (tokax.kernels.common);
- "received": a second kernel over (head, key tile, batch) whose compute warpgroups hold a key tile
  and pipeline the query tiles with their stored logsumexp and query weight, accumulating
  sum_n w[n] exp2(s[m, n] - lse2[n]) per key: one more q.k^T, no p.v, nothing N x N in memory;
- "cls": the head-averaged row of query 0 is exp(q_0 . k * scale + row - lse_0), computed in XLA from
  the stored logsumexp (a (B, H, M) product, O(B M H D): one extra read of K). Writing it from the
  forward's registers would need a row slice of a WGMMA-layout tile; left for the device work.
- float32 inputs run the tensor cores in bf16 with float32 accumulation (wgmma has no fp32
  operands; tf32 is not wired): use implementation="xla" for full float32 products.
- backward: flash_attention(backward="pallas") (the default) runs two Mosaic GPU kernels after
  jax's _attention_bwd (same file): dq (each compute warpgroup holds block_q_bwd queries with dO,
  lse2 and delta = rowsum(dO * O), and pipelines K/V/key-row tiles) and dk/dv (each holds
  block_kv_bwd keys, V and their key row, and pipelines Q/dO/lse2/delta tiles), with tokax's
  scale, the log2 key row (masked and padded keys get p = 0, so no gradient) and
  d(key_bias) = sum over heads and queries of dS (per-head sums from the dk/dv kernel). The
  scores' cotangents go through the reference's vjp only when one is not a symbolic zero (the
  scores feeding a top-k's indices give none), so the semantics equal the reference's. Like
  jax's backward these kernels use Lane lowering semantics with explicit WGMMA layouts and
  (8, 64)-tiled, 128B-swizzled SMEM (the forward uses Warpgroup semantics).
  backward_tiles_reference is the same tile loop in jnp, tested in float64 on the CPU; on an H200
  the kernels' gradients are within bf16 rounding of the float32 reference's (relative 2e-3 to
  8e-3) and forward + backward takes 1.09-1.20x cuDNN's (0.75x at head dim 128).
  backward="reference" is the pure-jnp reference's vjp in XLA (materialised probabilities).
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from tokax.kernels import common as fc
from tokax.kernels.mosaic_gpu.common import (COMPUTE_WGS, row_tiles, row_vector, swizzled,
                                              warp_specialized_pipeline, warpgroup_kernel)
from tokax.kernels import reference

Array = jax.Array

LOG2E = math.log2(math.e)
LN2 = math.log(2.0)
# the log2-domain mask: finite, so an all-masked tile gives exp2(0) and is wiped by the next real key
MASK_VALUE_LOG2 = -1e30
HEAD_DIMS = (64, 128)


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Tile sizes: each of the 2 compute warpgroups owns block_q queries; K/V move in block_kv tiles,
  max_concurrent_steps deep (>= 2). block_q and block_kv are multiples of 64 (wgmma M).

  The backward's tiles: block_q_bwd queries (a dq warpgroup's rows, a dk/dv pipeline step) and
  block_kv_bwd keys (a dq pipeline step, a dk/dv warpgroup's rows: it holds dk and dv in float32
  registers, hence the smaller default)."""
  block_q: int = 64
  block_kv: int = 128
  max_concurrent_steps: int = 2
  block_q_bwd: int = 64
  block_kv_bwd: int = 64

  def __post_init__(self):
    for name in ("block_q", "block_kv", "block_q_bwd", "block_kv_bwd"):
      value = getattr(self, name)
      if not isinstance(value, int) or value <= 0 or value % 64:
        raise ValueError(f"BlockSizes: {name} must be a positive multiple of 64; got {value!r}")
    if not isinstance(self.max_concurrent_steps, int) or self.max_concurrent_steps < 2:
      raise ValueError(f"BlockSizes: max_concurrent_steps must be an int >= 2; got {self.max_concurrent_steps!r}")

  def padded_lengths(self, n: int, m: int) -> tuple[int, int]:
    """(Np, Mp): N padded to 2 * block_q (a CTA's queries), M to 2 * block_kv (a CTA's keys in the
    "received" pass, and a whole number of K/V steps in the forward); both also to the backward's
    2 * block_q_bwd and 2 * block_kv_bwd (a dq CTA's queries, a dk/dv CTA's keys)."""
    n_multiple = math.lcm(COMPUTE_WGS * self.block_q, COMPUTE_WGS * self.block_q_bwd)
    m_multiple = math.lcm(COMPUTE_WGS * self.block_kv, COMPUTE_WGS * self.block_kv_bwd)
    return fc.round_up(n, n_multiple), fc.round_up(m, m_multiple)


def log2_key_row(key_bias: Array | None, key_mask: Array | None, batch: int, m: int, m_padded: int,
                 dtype=jnp.float32) -> Array:
  """(B, Mp) key row in the log2 domain: key_bias * log2(e) (at least MASK_VALUE_LOG2), MASK_VALUE_LOG2
  where masked or padded. dtype float32 for the kernels (float64 in the algorithm test)."""
  row = jnp.zeros((batch, m), dtype) if key_bias is None else key_bias.astype(dtype) * LOG2E
  row = jnp.maximum(row, MASK_VALUE_LOG2)
  if key_mask is not None:
    row = jnp.where(key_mask, row, MASK_VALUE_LOG2)
  return fc.pad_axis(row, 1, m_padded, MASK_VALUE_LOG2)


def _forward_kernel_call(q, k, v, row, *, scale: float, blocks: BlockSizes):
  """q (B, Np, H, D), k, v (B, Mp, H, D), row (B, Mp) -> out (B, Np, H, D), lse2 (B, H, Np) (log2 units)."""
  batch, n_pad, heads, head_dim = q.shape
  m_pad = k.shape[1]
  dtype = q.dtype
  block_q, block_kv = blocks.block_q, blocks.block_kv
  kv_steps = m_pad // block_kv
  qk_scale = scale * LOG2E

  def fa_kernel(q_ref, k_ref, v_ref, row_ref, out_ref, lse_ref, smem, q_barriers, schedule_barrier):
    b = lax.axis_index("batch")
    h = lax.axis_index("heads")
    wg = lax.axis_index("wg")
    qo_smem2, lse_smem2 = smem
    q_base = lax.axis_index("q_seq") * (COMPUTE_WGS * block_q) + wg * block_q

    def schedule():
      plgpu.barrier_arrive(schedule_barrier)
      plgpu.barrier_wait(schedule_barrier)

    def compute_context(pipeline_callback):
      qo_smem = qo_smem2.at[wg]
      lse_smem = lse_smem2.at[wg]
      m_i = jnp.full((block_q,), -jnp.inf, jnp.float32)
      l_i = jnp.full((block_q,), 0, jnp.float32)
      acc = jnp.full((block_q, head_dim), 0, jnp.float32)
      plgpu.copy_gmem_to_smem(q_ref.at[b, pl.ds(q_base, block_q), h], qo_smem, q_barriers.at[wg])
      plgpu.barrier_wait(q_barriers.at[wg])
      pl.when(wg == 1)(schedule)
      acc, m_i, l_i = pipeline_callback((acc, m_i, l_i))
      pl.when(wg == 0)(schedule)
      acc /= lax.broadcast_in_dim(l_i, (block_q, head_dim), [0])
      qo_smem[...] = acc.astype(dtype)
      lse_smem[...] = m_i + jnp.log(l_i) * LOG2E
      plgpu.commit_smem()
      plgpu.copy_smem_to_gmem(qo_smem, out_ref.at[b, pl.ds(q_base, block_q), h])
      plgpu.copy_smem_to_gmem(lse_smem, lse_ref.at[b, h, pl.ds(q_base, block_q)])
      plgpu.wait_smem_to_gmem(0)

    def kv_body(_, k_smem, v_smem, row_smem, k_consumed, v_consumed, row_consumed, carry):
      acc, m_i, l_i = carry
      qo_smem = qo_smem2.at[wg]

      def compute_qk(acc_ref):
        plgpu.wgmma(acc_ref, qo_smem, plgpu.transpose_ref(k_smem, (1, 0)))
        schedule()
        return acc_ref[...]

      qk = pl.run_scoped(compute_qk, plgpu.ACC((block_q, block_kv), jnp.float32))
      plgpu.barrier_arrive(k_consumed)
      key_row = row_smem[...]
      plgpu.barrier_arrive(row_consumed)
      s = qk * qk_scale + lax.broadcast_in_dim(key_row, qk.shape, [1])  # log2 units
      m_ij = jnp.maximum(m_i, s.max(axis=1))
      alpha = jnp.exp2(m_i - m_ij)
      p = jnp.exp2(s - lax.broadcast_in_dim(m_ij, s.shape, [0]))
      acc *= lax.broadcast_in_dim(alpha, acc.shape, [0])
      l_i = l_i * alpha + p.sum(axis=1)
      p16 = p.astype(dtype)
      schedule()

      def compute_pv(acc_ref):
        plgpu.wgmma(acc_ref, p16, v_smem)

      acc = pl.run_state(compute_pv)(plgpu.ACC.init(acc))
      plgpu.barrier_arrive(v_consumed)
      return acc, m_ij, l_i

    pipeline = warp_specialized_pipeline(
        kv_body, steps=kv_steps, max_concurrent_steps=blocks.max_concurrent_steps, compute_context=compute_context,
        in_specs=[row_tiles(block_kv, head_dim), row_tiles(block_kv, head_dim), row_vector(block_kv)])
    pipeline(k_ref.at[b, :, h, :], v_ref.at[b, :, h, :], row_ref.at[b])

  smem = (plgpu.SMEM((COMPUTE_WGS, block_q, head_dim), dtype),
          plgpu.SMEM((COMPUTE_WGS, block_q), jnp.float32))
  return warpgroup_kernel(
      fa_kernel, grid=(heads, n_pad // (COMPUTE_WGS * block_q), batch), grid_names=("heads", "q_seq", "batch"),
      out_type=(jax.ShapeDtypeStruct(q.shape, dtype), jax.ShapeDtypeStruct((batch, heads, n_pad), jnp.float32)),
      scratch_types=(smem, plgpu.Barrier(num_barriers=COMPUTE_WGS), plgpu.Barrier(num_arrivals=COMPUTE_WGS)),
      warpgroup_semantics=True,
  )(q, k, v, row)


def _received_kernel_call(q, k, row, lse2, weight, *, scale: float, blocks: BlockSizes):
  """Per-head sum_n w[n] p[n, m]: (B, H, Mp) float32. Each compute warpgroup holds block_kv keys and
  pipelines the block_q query tiles with their log2 logsumexp (B, H, Np) and weights (B, Np)."""
  batch, n_pad, heads, head_dim = q.shape
  m_pad = k.shape[1]
  dtype = q.dtype
  block_q, block_kv = blocks.block_q, blocks.block_kv
  q_steps = n_pad // block_q
  qk_scale = scale * LOG2E

  def rec_kernel(q_ref, k_ref, row_ref, lse_ref, w_ref, rec_ref, smem, k_barriers, row_barriers):
    b = lax.axis_index("batch")
    h = lax.axis_index("heads")
    wg = lax.axis_index("wg")
    k_smem2, row_smem2, rec_smem2 = smem
    k_base = lax.axis_index("k_seq") * (COMPUTE_WGS * block_kv) + wg * block_kv

    def compute_context(pipeline_callback):
      k_smem = k_smem2.at[wg]
      plgpu.copy_gmem_to_smem(k_ref.at[b, pl.ds(k_base, block_kv), h], k_smem, k_barriers.at[wg])
      plgpu.copy_gmem_to_smem(row_ref.at[b, pl.ds(k_base, block_kv)], row_smem2.at[wg], row_barriers.at[wg])
      plgpu.barrier_wait(k_barriers.at[wg])
      plgpu.barrier_wait(row_barriers.at[wg])
      total = pipeline_callback(jnp.full((block_kv,), 0, jnp.float32))
      rec_smem2.at[wg][...] = total
      plgpu.commit_smem()
      plgpu.copy_smem_to_gmem(rec_smem2.at[wg], rec_ref.at[b, h, pl.ds(k_base, block_kv)])
      plgpu.wait_smem_to_gmem(0)

    def q_body(_, q_smem, lse_smem, w_smem, q_consumed, lse_consumed, w_consumed, total):
      k_smem = k_smem2.at[wg]

      def compute_kq(acc_ref):
        plgpu.wgmma(acc_ref, k_smem, plgpu.transpose_ref(q_smem, (1, 0)))
        return acc_ref[...]

      s = pl.run_scoped(compute_kq, plgpu.ACC((block_kv, block_q), jnp.float32))  # (keys, queries)
      plgpu.barrier_arrive(q_consumed)
      lse = lse_smem[...]
      w = w_smem[...]
      plgpu.barrier_arrive(lse_consumed)
      plgpu.barrier_arrive(w_consumed)
      key_row = row_smem2.at[wg][...]
      s = s * qk_scale + lax.broadcast_in_dim(key_row, s.shape, [0]) - lax.broadcast_in_dim(lse, s.shape, [1])
      p = jnp.exp2(s) * lax.broadcast_in_dim(w, s.shape, [1])
      return total + p.sum(axis=1)

    pipeline = warp_specialized_pipeline(
        q_body, steps=q_steps, max_concurrent_steps=blocks.max_concurrent_steps, compute_context=compute_context,
        in_specs=[row_tiles(block_q, head_dim), row_vector(block_q), row_vector(block_q)])
    pipeline(q_ref.at[b, :, h, :], lse_ref.at[b, h], w_ref.at[b])

  smem = (plgpu.SMEM((COMPUTE_WGS, block_kv, head_dim), dtype),
          plgpu.SMEM((COMPUTE_WGS, block_kv), jnp.float32),
          plgpu.SMEM((COMPUTE_WGS, block_kv), jnp.float32))
  return warpgroup_kernel(
      rec_kernel, grid=(heads, m_pad // (COMPUTE_WGS * block_kv), batch), grid_names=("heads", "k_seq", "batch"),
      out_type=jax.ShapeDtypeStruct((batch, heads, m_pad), jnp.float32),
      scratch_types=(smem, plgpu.Barrier(num_barriers=COMPUTE_WGS), plgpu.Barrier(num_barriers=COMPUTE_WGS)),
      warpgroup_semantics=True,
  )(q, k, row, lse2, weight)


def _load(ref, layout):
  """plgpu.load of a whole SMEM ref in `layout`: jax 0.10 takes the index positionally, 0.11
  deprecates it (index the ref instead)."""
  idx = inspect.signature(plgpu.load).parameters.get("idx")
  if idx is not None and idx.default is inspect.Parameter.empty:
    return plgpu.load(ref, (), layout=layout)
  return plgpu.load(ref, layout=layout)


def _dq_kernel_call(q, k, v, do, row, lse2, delta, *, scale: float, blocks: BlockSizes):
  """dq (B, Np, H, D) in q's dtype: each compute warpgroup holds block_q_bwd queries (q, dO, lse2,
  delta) and pipelines the block_kv_bwd K/V/key-row tiles; dS = p * (dP - delta), dq = scale dS k."""
  batch, n_pad, heads, head_dim = q.shape
  m_pad = k.shape[1]
  dtype = q.dtype
  block_q, block_kv = blocks.block_q_bwd, blocks.block_kv_bwd
  kv_steps = m_pad // block_kv
  qk_scale = scale * LOG2E
  transforms = swizzled()

  def dq_kernel(q_ref, k_ref, v_ref, do_ref, row_ref, lse_ref, delta_ref, dq_ref, smem, barriers):
    b = lax.axis_index("batch")
    h = lax.axis_index("heads")
    wg = lax.axis_index("wg")
    q_smem2, do_smem2, lse_smem2, delta_smem2 = smem
    q_base = lax.axis_index("q_seq") * (COMPUTE_WGS * block_q) + wg * block_q

    def compute_context(pipeline_callback):
      q_smem, do_smem = q_smem2.at[wg], do_smem2.at[wg]
      lse_smem, delta_smem = lse_smem2.at[wg], delta_smem2.at[wg]
      q_barrier, do_barrier, lse_barrier, delta_barrier = (x.at[wg] for x in barriers)
      rows = (b, pl.ds(q_base, block_q), h)
      plgpu.copy_gmem_to_smem(q_ref.at[rows], q_smem, q_barrier)
      plgpu.copy_gmem_to_smem(do_ref.at[rows], do_smem, do_barrier)
      plgpu.copy_gmem_to_smem(lse_ref.at[b, h, pl.ds(q_base, block_q)], lse_smem, lse_barrier)
      plgpu.copy_gmem_to_smem(delta_ref.at[b, h, pl.ds(q_base, block_q)], delta_smem, delta_barrier)
      for barrier in (q_barrier, do_barrier, lse_barrier, delta_barrier):
        plgpu.barrier_wait(barrier)
      lse = _load(lse_smem, plgpu.Layout.WGMMA.reduce(1))
      delta = _load(delta_smem, plgpu.Layout.WGMMA.reduce(1))
      dq = plgpu.layout_cast(jnp.full((block_q, head_dim), 0, jnp.float32), plgpu.Layout.WGMMA)
      dq, _, _ = pipeline_callback((dq, lse, delta))
      q_smem[...] = (dq * scale).astype(dtype)
      plgpu.commit_smem()
      plgpu.copy_smem_to_gmem(q_smem, dq_ref.at[rows])
      plgpu.wait_smem_to_gmem(0)

    def kv_body(_, k_smem, v_smem, row_smem, k_consumed, v_consumed, row_consumed, carry):
      dq, lse, delta = carry
      q_smem, do_smem = q_smem2.at[wg], do_smem2.at[wg]

      def compute_s(acc_ref):
        plgpu.wgmma(acc_ref, q_smem, plgpu.transpose_ref(k_smem, (1, 0)))
        return acc_ref[...]

      s = pl.run_scoped(compute_s, plgpu.ACC((block_q, block_kv), jnp.float32))
      key_row = _load(row_smem, plgpu.Layout.WGMMA.reduce(0))
      plgpu.barrier_arrive(row_consumed)
      s = s * qk_scale + lax.broadcast_in_dim(key_row, s.shape, [1])  # log2 units
      p = jnp.exp2(s - lax.broadcast_in_dim(lse, s.shape, [0]))

      def compute_dp(acc_ref):
        plgpu.wgmma(acc_ref, do_smem, plgpu.transpose_ref(v_smem, (1, 0)))
        return acc_ref[...]

      dp = pl.run_scoped(compute_dp, plgpu.ACC((block_q, block_kv), jnp.float32))
      plgpu.barrier_arrive(v_consumed)
      ds = p * (dp - lax.broadcast_in_dim(delta, s.shape, [0]))

      def compute_dq(acc_ref):
        plgpu.wgmma(acc_ref, ds.astype(dtype), k_smem)

      dq = pl.run_state(compute_dq)(plgpu.ACC.init(dq))
      plgpu.barrier_arrive(k_consumed)
      return dq, lse, delta

    pipeline = warp_specialized_pipeline(
        kv_body, steps=kv_steps, max_concurrent_steps=blocks.max_concurrent_steps, compute_context=compute_context,
        in_specs=[row_tiles(block_kv, head_dim, transforms), row_tiles(block_kv, head_dim, transforms),
                  row_vector(block_kv)])
    pipeline(k_ref.at[b, :, h, :], v_ref.at[b, :, h, :], row_ref.at[b])

  tile = plgpu.SMEM((COMPUTE_WGS, block_q, head_dim), dtype, transforms=transforms)
  vec = plgpu.SMEM((COMPUTE_WGS, block_q), jnp.float32)
  return warpgroup_kernel(
      dq_kernel, grid=(heads, n_pad // (COMPUTE_WGS * block_q), batch), grid_names=("heads", "q_seq", "batch"),
      out_type=jax.ShapeDtypeStruct(q.shape, dtype),
      scratch_types=((tile, tile, vec, vec), (plgpu.Barrier(num_barriers=COMPUTE_WGS),) * 4),
  )(q, k, v, do, row, lse2, delta)


def _dkv_kernel_call(q, k, v, do, row, lse2, delta, *, scale: float, blocks: BlockSizes):
  """dk, dv (B, Mp, H, D) in k's dtype and the per-head key-row gradient sum_n dS (B, H, Mp) float32:
  each compute warpgroup holds block_kv_bwd keys (k, v, key row) and pipelines the block_q_bwd
  Q/dO/lse2/delta tiles; dv = p^T dO, dk = scale dS^T q."""
  batch, n_pad, heads, head_dim = q.shape
  m_pad = k.shape[1]
  dtype = q.dtype
  block_q, block_kv = blocks.block_q_bwd, blocks.block_kv_bwd
  q_steps = n_pad // block_q
  qk_scale = scale * LOG2E
  transforms = swizzled()

  def dkv_kernel(q_ref, k_ref, v_ref, do_ref, row_ref, lse_ref, delta_ref, dk_ref, dv_ref, drow_ref,
                 smem, barriers):
    b = lax.axis_index("batch")
    h = lax.axis_index("heads")
    wg = lax.axis_index("wg")
    k_smem2, v_smem2, row_smem2 = smem
    k_base = lax.axis_index("kv_seq") * (COMPUTE_WGS * block_kv) + wg * block_kv

    def compute_context(pipeline_callback):
      k_smem, v_smem, row_smem = k_smem2.at[wg], v_smem2.at[wg], row_smem2.at[wg]
      k_barrier, v_barrier, row_barrier = (x.at[wg] for x in barriers)
      rows = (b, pl.ds(k_base, block_kv), h)
      plgpu.copy_gmem_to_smem(k_ref.at[rows], k_smem, k_barrier)
      plgpu.copy_gmem_to_smem(v_ref.at[rows], v_smem, v_barrier)
      plgpu.copy_gmem_to_smem(row_ref.at[b, pl.ds(k_base, block_kv)], row_smem, row_barrier)
      for barrier in (k_barrier, v_barrier, row_barrier):
        plgpu.barrier_wait(barrier)
      key_row = _load(row_smem, plgpu.Layout.WGMMA.reduce(1))
      dk = plgpu.layout_cast(jnp.full((block_kv, head_dim), 0, jnp.float32), plgpu.Layout.WGMMA)
      dv = plgpu.layout_cast(jnp.full((block_kv, head_dim), 0, jnp.float32), plgpu.Layout.WGMMA)
      drow = plgpu.layout_cast(jnp.full((block_kv,), 0, jnp.float32), plgpu.Layout.WGMMA.reduce(1))
      dk, dv, drow, _ = pipeline_callback((dk, dv, drow, key_row))
      k_smem[...] = (dk * scale).astype(dtype)
      v_smem[...] = dv.astype(dtype)
      row_smem[...] = drow
      plgpu.commit_smem()
      plgpu.copy_smem_to_gmem(k_smem, dk_ref.at[rows], commit_group=False)
      plgpu.copy_smem_to_gmem(v_smem, dv_ref.at[rows], commit_group=False)
      plgpu.copy_smem_to_gmem(row_smem, drow_ref.at[b, h, pl.ds(k_base, block_kv)], commit_group=False)
      plgpu.commit_smem_to_gmem_group()
      plgpu.wait_smem_to_gmem(0)

    def q_body(_, q_smem, do_smem, lse_smem, delta_smem, q_consumed, do_consumed, lse_consumed,
               delta_consumed, carry):
      dk, dv, drow, key_row = carry
      k_smem, v_smem = k_smem2.at[wg], v_smem2.at[wg]

      def compute_st(acc_ref):
        plgpu.wgmma(acc_ref, k_smem, plgpu.transpose_ref(q_smem, (1, 0)))
        return acc_ref[...]

      st = pl.run_scoped(compute_st, plgpu.ACC((block_kv, block_q), jnp.float32))  # (keys, queries)
      lse = _load(lse_smem, plgpu.Layout.WGMMA.reduce(0))
      plgpu.barrier_arrive(lse_consumed)
      st = st * qk_scale + lax.broadcast_in_dim(key_row, st.shape, [0])  # log2 units
      pt = jnp.exp2(st - lax.broadcast_in_dim(lse, st.shape, [1]))

      def compute_dv_dpt(refs):  # both wgmmas in one block: one wgmma.wait_group, as in jax's kernel
        dv_ref, dpt_ref = refs
        plgpu.wgmma(dv_ref, pt.astype(dtype), do_smem)
        plgpu.wgmma(dpt_ref, v_smem, plgpu.transpose_ref(do_smem, (1, 0)))

      zeros = plgpu.layout_cast(jnp.full((block_kv, block_q), 0, jnp.float32), plgpu.Layout.WGMMA)
      dv, dpt = pl.run_state(compute_dv_dpt)((plgpu.ACC.init(dv), plgpu.ACC.init(zeros)))
      plgpu.barrier_arrive(do_consumed)
      delta = _load(delta_smem, plgpu.Layout.WGMMA.reduce(0))
      plgpu.barrier_arrive(delta_consumed)
      dst = pt * (dpt - lax.broadcast_in_dim(delta, st.shape, [1]))
      drow = drow + dst.sum(axis=1)

      def compute_dk(acc_ref):
        plgpu.wgmma(acc_ref, dst.astype(dtype), q_smem)

      dk = pl.run_state(compute_dk)(plgpu.ACC.init(dk))
      plgpu.barrier_arrive(q_consumed)
      return dk, dv, drow, key_row

    pipeline = warp_specialized_pipeline(
        q_body, steps=q_steps, max_concurrent_steps=blocks.max_concurrent_steps, compute_context=compute_context,
        in_specs=[row_tiles(block_q, head_dim, transforms), row_tiles(block_q, head_dim, transforms),
                  row_vector(block_q), row_vector(block_q)])
    pipeline(q_ref.at[b, :, h, :], do_ref.at[b, :, h, :], lse_ref.at[b, h], delta_ref.at[b, h])

  tile = plgpu.SMEM((COMPUTE_WGS, block_kv, head_dim), dtype, transforms=transforms)
  vec = plgpu.SMEM((COMPUTE_WGS, block_kv), jnp.float32)
  kv_type = jax.ShapeDtypeStruct(k.shape, dtype)
  return warpgroup_kernel(
      dkv_kernel, grid=(heads, m_pad // (COMPUTE_WGS * block_kv), batch), grid_names=("heads", "kv_seq", "batch"),
      out_type=(kv_type, kv_type, jax.ShapeDtypeStruct((batch, heads, m_pad), jnp.float32)),
      scratch_types=((tile, tile, vec), (plgpu.Barrier(num_barriers=COMPUTE_WGS),) * 3),
  )(q, k, v, do, row, lse2, delta)


def _pallas_backward_tiles(q, k, v, do, row, lse2, delta, *, scale: float, blocks: BlockSizes):
  """The two backward kernels: (dq, dk, dv, per-head key-row gradient (B, H, Mp))."""
  dq = _dq_kernel_call(q, k, v, do, row, lse2, delta, scale=scale, blocks=blocks)
  dk, dv, drow = _dkv_kernel_call(q, k, v, do, row, lse2, delta, scale=scale, blocks=blocks)
  return dq, dk, dv, drow


def backward_tiles_reference(q, k, v, do, row, lse2, delta, *, scale: float, blocks: BlockSizes):
  """The backward kernels' math in jnp, tile by tile in the same log2 domain (the algorithm check).

  Args:
    q, do: (B, Np, H, D); k, v: (B, Mp, H, D); row: (B, Mp) log2 key row; lse2, delta: (B, H, Np)
    (log2 logsumexp, rowsum(dO * O)); Np, Mp multiples of the backward tiles. Computed in q's dtype.

  Returns:
    dq (B, Np, H, D), dk, dv (B, Mp, H, D), per-head key-row gradient sum_n dS (B, H, Mp).
  """
  n_pad, m_pad = q.shape[1], k.shape[1]
  block_q, block_kv = blocks.block_q_bwd, blocks.block_kv_bwd
  qk_scale = scale * LOG2E

  def tile(i, j):  # p, dS (B, H, block_q, block_kv) of query tile i and key tile j
    qt, dot = q[:, i:i + block_q], do[:, i:i + block_q]
    kt, vt = k[:, j:j + block_kv], v[:, j:j + block_kv]
    s = jnp.einsum("bqhd,bkhd->bhqk", qt, kt) * qk_scale + row[:, None, None, j:j + block_kv]
    p = jnp.exp2(s - lse2[:, :, i:i + block_q, None])
    dp = jnp.einsum("bqhd,bkhd->bhqk", dot, vt)
    return p, p * (dp - delta[:, :, i:i + block_q, None])

  dq = []
  for i in range(0, n_pad, block_q):  # the dq kernel: a query tile, the key tiles pipelined
    acc = jnp.zeros(q[:, i:i + block_q].shape, q.dtype)
    for j in range(0, m_pad, block_kv):
      acc = acc + jnp.einsum("bhqk,bkhd->bqhd", tile(i, j)[1], k[:, j:j + block_kv])
    dq.append(acc * scale)
  dk, dv, drow = [], [], []
  for j in range(0, m_pad, block_kv):  # the dk/dv kernel: a key tile, the query tiles pipelined
    dk_acc = dv_acc = jnp.zeros(k[:, j:j + block_kv].shape, q.dtype)
    drow_acc = jnp.zeros((q.shape[0], q.shape[2], block_kv), q.dtype)
    for i in range(0, n_pad, block_q):
      p, ds = tile(i, j)
      dv_acc = dv_acc + jnp.einsum("bhqk,bqhd->bkhd", p, do[:, i:i + block_q])
      dk_acc = dk_acc + jnp.einsum("bhqk,bqhd->bkhd", ds, q[:, i:i + block_q])
      drow_acc = drow_acc + ds.sum(axis=2)
    dk.append(dk_acc * scale)
    dv.append(dv_acc)
    drow.append(drow_acc)
  return (jnp.concatenate(dq, 1), jnp.concatenate(dk, 1), jnp.concatenate(dv, 1),
          jnp.concatenate(drow, 2))


def _operand_dtype(dtype) -> jnp.dtype:
  """The tensor-core operand dtype: bf16/fp16 as given, anything else bf16 (wgmma has no fp32)."""
  return jnp.dtype(dtype) if jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) else jnp.dtype(jnp.bfloat16)


def _backward(q, k, v, key_bias, key_mask, out_padded, lse2, d_out, blocks: BlockSizes, *,
              op_dtype=None, tiles: Callable | None = None):
  """Gradients of the output cotangent d_out (B, N, H, D) through the flash backward.

  Args:
    q, k, v, key_bias, key_mask: the forward's inputs; out_padded (B, Np, H, D) and lse2 (B, H, Np):
      the forward kernel's outputs. op_dtype: operand dtype (default _operand_dtype(q.dtype)); tiles:
      _pallas_backward_tiles, or backward_tiles_reference to run the same math in jnp.

  Returns:
    dq, dk, dv in the inputs' dtypes and d(key_bias) (B, M) (None without key_bias).
  """
  batch, n, _, d = q.shape
  m = k.shape[1]
  op_dtype = _operand_dtype(q.dtype) if op_dtype is None else op_dtype
  n_pad, m_pad = blocks.padded_lengths(n, m)
  qp, dop = (fc.pad_axis(x.astype(op_dtype), 1, n_pad) for x in (q, d_out))
  kp, vp = (fc.pad_axis(x.astype(op_dtype), 1, m_pad) for x in (k, v))
  row_dtype = jnp.promote_types(op_dtype, jnp.float32)
  row = log2_key_row(key_bias, key_mask, batch, m, m_pad, dtype=row_dtype)
  # padded queries have dO = 0, so delta = 0 and dS = 0: they add nothing to dk, dv, d(key_bias)
  delta = jnp.einsum("bnhd,bnhd->bhn", out_padded.astype(row_dtype), dop.astype(row_dtype))
  tiles = _pallas_backward_tiles if tiles is None else tiles
  dq, dk, dv, drow = tiles(qp, kp, vp, dop, row, lse2.astype(row_dtype), delta, scale=d ** -0.5, blocks=blocks)
  d_bias = None if key_bias is None else drow[:, :, :m].sum(axis=1).astype(key_bias.dtype)
  return (dq[:, :n].astype(q.dtype), dk[:, :m].astype(k.dtype), dv[:, :m].astype(v.dtype), d_bias)


def cls_rows_from_lse(q0: Array, k: Array, row: Array, lse2_0: Array, scale: float) -> Array:
  """Head-wise attention row of query 0 from the stored log2 logsumexp.

  Args:
    q0: (B, H, D) query 0; k: (B, Mp, H, D); row: (B, Mp) log2 key row; lse2_0: (B, H) log2 lse of query 0.

  Returns:
    (B, H, Mp) float32 probabilities (0 on masked and padded keys).
  """
  s = jnp.einsum("bhd,bmhd->bhm", q0, k, preferred_element_type=jnp.float32) * (scale * LOG2E)
  return jnp.exp2(s + row[:, None, :] - lse2_0[:, :, None])


def _forward_padded(q, k, v, key_bias, key_mask, scores, blocks: BlockSizes, interpret):
  """(out (B, Np, H, D) in the operand dtype, lse2 (B, H, Np), scores dict)."""
  batch, n, heads, d = q.shape
  m = k.shape[1]
  if d not in HEAD_DIMS:
    raise ValueError(f"mosaic_gpu flash_attention: head_dim must be one of {HEAD_DIMS}; got {d}")
  if interpret:
    raise ValueError("mosaic_gpu flash_attention: the warp-specialised pipeline does not run in Pallas' "
                     "GPU interpreter (single-block only); test on a GPU or use the TPU kernel's interpret mode")
  op_dtype = _operand_dtype(q.dtype)
  n_pad, m_pad = blocks.padded_lengths(n, m)
  qp = fc.pad_axis(q.astype(op_dtype), 1, n_pad)
  kp, vp = (fc.pad_axis(x.astype(op_dtype), 1, m_pad) for x in (k, v))
  row = log2_key_row(key_bias, key_mask, batch, m, m_pad)
  scale = d ** -0.5
  out, lse2 = _forward_kernel_call(qp, kp, vp, row, scale=scale, blocks=blocks)
  weight = fc.query_weight(key_mask, batch, n, m, n_pad)
  cls_rows = received = None
  if "cls" in scores:
    cls_rows = cls_rows_from_lse(qp[:, 0], kp, row, lse2[:, :, 0], scale)
  if "received" in scores:
    received = _received_kernel_call(qp, kp, row, lse2, weight, scale=scale, blocks=blocks)
  return out, lse2, fc.finalize_scores(scores, m, weight, cls_rows, received)


def _forward(q, k, v, key_bias, key_mask, scores, blocks: BlockSizes, interpret):
  out, _, score_dict = _forward_padded(q, k, v, key_bias, key_mask, scores, blocks, interpret)
  return out[:, :q.shape[1]].astype(q.dtype), score_dict


# backward="reference": the reference's vjp (XLA recompute); options = (blocks, interpret).
_attend = reference.with_reference_backward(
    lambda q, k, v, key_bias, key_mask, mask, scores, options: _forward(q, k, v, key_bias, key_mask, scores, *options))


# backward="pallas": the output cotangent through the backward kernels, the scores' as the reference.
def _pallas_forward(q, k, v, key_bias, key_mask, scores, options):
  out, lse2, score_dict = _forward_padded(q, k, v, key_bias, key_mask, scores, *options)
  return (out[:, :q.shape[1]].astype(q.dtype), score_dict), (out, lse2)


def _pallas_backward(q, k, v, key_bias, key_mask, residuals, d_out, options):
  out_padded, lse2 = residuals
  return _backward(q, k, v, key_bias, key_mask, out_padded, lse2, d_out, options[0])


_attend_pallas = reference.with_kernel_backward(_pallas_forward, _pallas_backward)
BACKWARDS = ("reference", "pallas")


def flash_attention(
    q: Array,
    k: Array,
    v: Array,
    *,
    key_bias: Array | None = None,
    key_mask: Array | None = None,
    scores: tuple[str, ...] = (),
    block_sizes: BlockSizes | None = None,
    interpret: bool = False,
    backward: str = "pallas",
) -> tuple[Array, dict[str, Array]]:
  """Attention (B, N, H, D), D in (64, 128), with the selection scores, on Mosaic GPU (Hopper).

  Args:
    q: (B, N, H, D); k, v: (B, M, H, D); bf16/fp16 (fp32 is computed with bf16 operands).
    key_bias: (B, M) additive per-key bias, or None.
    key_mask: (B, M) bool, True for real keys, or None. Every query must keep one key.
    scores: subset of ("cls", "received"); each comes back as (B, M) float32.
    block_sizes: BlockSizes, default BlockSizes().
    interpret: must be False (see _forward); kept for the kernels' common signature.
    backward: "pallas" (the dq and dk/dv kernels; the scores' cotangents, when not symbolically
      zero, through the reference's vjp) or "reference" (the reference's vjp in XLA).

  Returns:
    out (B, N, H, D) in q's dtype and a dict of (B, M) float32 scores; differentiable in q, k, v,
    key_bias.
  """
  blocks = BlockSizes() if block_sizes is None else block_sizes
  if not isinstance(blocks, BlockSizes):
    raise ValueError(f"flash_attention: block_sizes must be a mosaic_gpu BlockSizes; got {type(blocks).__name__}")
  if backward not in BACKWARDS:
    raise ValueError(f"flash_attention: backward must be one of {BACKWARDS}; got {backward!r}")
  options = (blocks, bool(interpret))
  if backward == "pallas":
    return _attend_pallas(q, k, v, key_bias, key_mask, tuple(scores), options)
  return _attend(q, k, v, key_bias, key_mask, None, tuple(scores), options)
