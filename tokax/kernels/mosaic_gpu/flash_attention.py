"""Fused attention-and-select on Mosaic GPU (Hopper): flash attention plus the selection scores.

UNTESTED ON A GPU when written (no GPU on the development machine): the structure follows jax's
FlashAttention-3 example (jax/experimental/pallas/ops/gpu/attention_mgpu.py,
attention_with_pipeline_emitter): plgpu.kernel with 3 warpgroups per CTA, two computing (each owns
block_q queries) and one moving K/V tiles through plgpu.emit_pipeline_warp_specialized, wgmma for
q.k^T and p.v, float32 accumulators, the online softmax in the log2 domain. Run
`python -m tokax.bench.attention_kernels --check` on an H100 before trusting it.

Differences from the example:
- scratch in the input dtype (the example hard-codes float16, which breaks bf16: PERFORMANCE.md);
- the softmax scale D ** -0.5 is applied (the example has none);
- a float32 key row (key_bias, key_mask and padding; block_kv per step through the same pipeline)
  is added to the logits; N and M are padded (queries to 2 * block_q, keys to 2 * block_kv) and the
  padded keys masked (flash_common);
- "received": a second kernel over (head, key tile, batch) whose compute warpgroups hold a key tile
  and pipeline the query tiles with their stored logsumexp and query weight, accumulating
  sum_n w[n] exp2(s[m, n] - lse2[n]) per key: one more q.k^T, no p.v, nothing N x N in memory;
- "cls": the head-averaged row of query 0 is exp(q_0 . k * scale + row - lse_0), computed in XLA from
  the stored logsumexp (a (B, H, M) product, O(B M H D): one extra read of K). Writing it from the
  forward's registers would need a row slice of a WGMMA-layout tile; left for the device work.
- float32 inputs run the tensor cores in bf16 with float32 accumulation (wgmma has no fp32
  operands; tf32 is not wired): use implementation="xla" for full float32 products.
- backward: custom_vjp through the pure-jnp reference's vjp (XLA), as on TPU.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from tokax.kernels import flash_common as fc
from tokax.kernels import reference

Array = jax.Array

LOG2E = math.log2(math.e)
LN2 = math.log(2.0)
# the log2-domain mask: finite, so an all-masked tile gives exp2(0) and is wiped by the next real key
MASK_VALUE_LOG2 = -1e30
COMPUTE_WGS = 2
HEAD_DIMS = (64, 128)


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Tile sizes: each of the 2 compute warpgroups owns block_q queries; K/V move in block_kv tiles,
  max_concurrent_steps deep (>= 2). block_q and block_kv are multiples of 64 (wgmma M)."""
  block_q: int = 64
  block_kv: int = 128
  max_concurrent_steps: int = 2

  def __post_init__(self):
    for name in ("block_q", "block_kv"):
      value = getattr(self, name)
      if not isinstance(value, int) or value <= 0 or value % 64:
        raise ValueError(f"BlockSizes: {name} must be a positive multiple of 64; got {value!r}")
    if not isinstance(self.max_concurrent_steps, int) or self.max_concurrent_steps < 2:
      raise ValueError(f"BlockSizes: max_concurrent_steps must be an int >= 2; got {self.max_concurrent_steps!r}")

  def padded_lengths(self, n: int, m: int) -> tuple[int, int]:
    """(Np, Mp): N padded to 2 * block_q (a CTA's queries), M to 2 * block_kv (a CTA's keys in the
    "received" pass, and a whole number of K/V steps in the forward)."""
    return fc.round_up(n, COMPUTE_WGS * self.block_q), fc.round_up(m, COMPUTE_WGS * self.block_kv)


def log2_key_row(key_bias: Array | None, key_mask: Array | None, batch: int, m: int, m_padded: int) -> Array:
  """(B, Mp) float32 key row in the log2 domain: row * log2(e), MASK_VALUE_LOG2 where masked or padded."""
  row = fc.key_row(key_bias, key_mask, batch, m, m_padded)[:, 0, :]
  return jnp.where(row <= fc.MASK_VALUE, MASK_VALUE_LOG2, row * LOG2E)


def _forward_kernel_call(q, k, v, row, *, scale: float, blocks: BlockSizes):
  """q (B, Np, H, D), k, v (B, Mp, H, D), row (B, Mp) -> out (B, Np, H, D), lse2 (B, H, Np) (log2 units)."""
  batch, n_pad, heads, head_dim = q.shape
  m_pad = k.shape[1]
  dtype = q.dtype
  block_q, block_kv = blocks.block_q, blocks.block_kv
  kv_steps = m_pad // block_kv
  max_steps = min(blocks.max_concurrent_steps, kv_steps)
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

    pipeline = plgpu.emit_pipeline_warp_specialized(
        kv_body,
        grid=(kv_steps,),
        max_concurrent_steps=max_steps,
        num_compute_wgs=COMPUTE_WGS,
        memory_registers=40,
        wg_axis="wg",
        manual_consumed_barriers=True,
        compute_context=compute_context,
        in_specs=[
            plgpu.BlockSpec(block_shape=(block_kv, head_dim), index_map=lambda i: (i, 0)),
            plgpu.BlockSpec(block_shape=(block_kv, head_dim), index_map=lambda i: (i, 0)),
            plgpu.BlockSpec(block_shape=(block_kv,), index_map=lambda i: (i,)),
        ],
        out_specs=[],
    )
    pipeline(k_ref.at[b, :, h, :], v_ref.at[b, :, h, :], row_ref.at[b])

  smem = (plgpu.SMEM((COMPUTE_WGS, block_q, head_dim), dtype),
          plgpu.SMEM((COMPUTE_WGS, block_q), jnp.float32))
  return plgpu.kernel(
      fa_kernel,
      grid=(heads, n_pad // (COMPUTE_WGS * block_q), batch),
      grid_names=("heads", "q_seq", "batch"),
      num_threads=COMPUTE_WGS + 1,
      thread_name="wg",
      out_type=(jax.ShapeDtypeStruct(q.shape, dtype),
                jax.ShapeDtypeStruct((batch, heads, n_pad), jnp.float32)),
      scratch_types=(smem, plgpu.Barrier(num_barriers=COMPUTE_WGS), plgpu.Barrier(num_arrivals=COMPUTE_WGS)),
      compiler_params=plgpu.CompilerParams(approx_math=True,
                                           lowering_semantics=plgpu.LoweringSemantics.Warpgroup),
  )(q, k, v, row)


def _received_kernel_call(q, k, row, lse2, weight, *, scale: float, blocks: BlockSizes):
  """Per-head sum_n w[n] p[n, m]: (B, H, Mp) float32. Each compute warpgroup holds block_kv keys and
  pipelines the block_q query tiles with their log2 logsumexp (B, H, Np) and weights (B, Np)."""
  batch, n_pad, heads, head_dim = q.shape
  m_pad = k.shape[1]
  dtype = q.dtype
  block_q, block_kv = blocks.block_q, blocks.block_kv
  q_steps = n_pad // block_q
  max_steps = min(blocks.max_concurrent_steps, q_steps)
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

    pipeline = plgpu.emit_pipeline_warp_specialized(
        q_body,
        grid=(q_steps,),
        max_concurrent_steps=max_steps,
        num_compute_wgs=COMPUTE_WGS,
        memory_registers=40,
        wg_axis="wg",
        manual_consumed_barriers=True,
        compute_context=compute_context,
        in_specs=[
            plgpu.BlockSpec(block_shape=(block_q, head_dim), index_map=lambda i: (i, 0)),
            plgpu.BlockSpec(block_shape=(block_q,), index_map=lambda i: (i,)),
            plgpu.BlockSpec(block_shape=(block_q,), index_map=lambda i: (i,)),
        ],
        out_specs=[],
    )
    pipeline(q_ref.at[b, :, h, :], lse_ref.at[b, h], w_ref.at[b])

  smem = (plgpu.SMEM((COMPUTE_WGS, block_kv, head_dim), dtype),
          plgpu.SMEM((COMPUTE_WGS, block_kv), jnp.float32),
          plgpu.SMEM((COMPUTE_WGS, block_kv), jnp.float32))
  return plgpu.kernel(
      rec_kernel,
      grid=(heads, m_pad // (COMPUTE_WGS * block_kv), batch),
      grid_names=("heads", "k_seq", "batch"),
      num_threads=COMPUTE_WGS + 1,
      thread_name="wg",
      out_type=jax.ShapeDtypeStruct((batch, heads, m_pad), jnp.float32),
      scratch_types=(smem, plgpu.Barrier(num_barriers=COMPUTE_WGS), plgpu.Barrier(num_barriers=COMPUTE_WGS)),
      compiler_params=plgpu.CompilerParams(approx_math=True,
                                           lowering_semantics=plgpu.LoweringSemantics.Warpgroup),
  )(q, k, row, lse2, weight)


def cls_rows_from_lse(q0: Array, k: Array, row: Array, lse2_0: Array, scale: float) -> Array:
  """Head-wise attention row of query 0 from the stored log2 logsumexp.

  Args:
    q0: (B, H, D) query 0; k: (B, Mp, H, D); row: (B, Mp) log2 key row; lse2_0: (B, H) log2 lse of query 0.

  Returns:
    (B, H, Mp) float32 probabilities (0 on masked and padded keys).
  """
  s = jnp.einsum("bhd,bmhd->bhm", q0, k, preferred_element_type=jnp.float32) * (scale * LOG2E)
  return jnp.exp2(s + row[:, None, :] - lse2_0[:, :, None])


def _forward(q, k, v, key_bias, key_mask, scores, blocks: BlockSizes, interpret):
  batch, n, heads, d = q.shape
  m = k.shape[1]
  if d not in HEAD_DIMS:
    raise ValueError(f"mosaic_gpu flash_attention: head_dim must be one of {HEAD_DIMS}; got {d}")
  if interpret:
    raise ValueError("mosaic_gpu flash_attention: the warp-specialised pipeline does not run in Pallas' "
                     "GPU interpreter (single-block only); test on a GPU or use the TPU kernel's interpret mode")
  in_dtype = q.dtype
  op_dtype = in_dtype if in_dtype in (jnp.bfloat16, jnp.float16) else jnp.bfloat16
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
  return out[:, :n].astype(in_dtype), fc.finalize_scores(scores, m, weight, cls_rows, received)


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
    interpret: bool = False,
) -> tuple[Array, dict[str, Array]]:
  """Attention (B, N, H, D), D in (64, 128), with the selection scores, on Mosaic GPU (Hopper).

  Args:
    q: (B, N, H, D); k, v: (B, M, H, D); bf16/fp16 (fp32 is computed with bf16 operands).
    key_bias: (B, M) additive per-key bias, or None.
    key_mask: (B, M) bool, True for real keys, or None. Every query must keep one key.
    scores: subset of ("cls", "received"); each comes back as (B, M) float32.
    block_sizes: BlockSizes, default BlockSizes().
    interpret: must be False (see _forward); kept for the kernels' common signature.

  Returns:
    out (B, N, H, D) in q's dtype and a dict of (B, M) float32 scores; differentiable in q, k, v,
    key_bias through the reference's vjp.
  """
  blocks = BlockSizes() if block_sizes is None else block_sizes
  if not isinstance(blocks, BlockSizes):
    raise ValueError(f"flash_attention: block_sizes must be a mosaic_gpu BlockSizes; got {type(blocks).__name__}")
  return _attend(q, k, v, key_bias, key_mask, None, tuple(scores), (blocks, bool(interpret)))
