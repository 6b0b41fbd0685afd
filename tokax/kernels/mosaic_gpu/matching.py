"""Bipartite matching on Mosaic GPU (Hopper): a running row max and argmax over pipelined B tiles.

Written from jax's FlashAttention-3 example (jax/experimental/pallas/ops/gpu/attention_mgpu.py,
its warp-specialised backward kernels): one CTA per (A tile, image) with two compute warpgroups
of block_a A rows each, whose A rows are copied once into shared memory, and a memory warpgroup
that streams B tiles and their column bias through `plgpu.emit_pipeline_warp_specialized`. Each
step is one wgmma (block_a, C) x (C, block_b) into registers, the column bias added, and the
tile's row max and first argmax folded into the running pair (`fold_tile_rows`). Only (B, |A|)
results are written; the score matrix never leaves the SM.

Inputs must be bf16 or f16 (wgmma operands); C is zero-padded to a multiple of 64 (a 128-byte
swizzled row). Indices travel as float32 inside the kernel (exact below 2^24) so that every
reduction is a float max.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from tokax.kernels import common
from tokax.kernels.mosaic_gpu.common import (COMPUTE_WGS, row_tiles, row_vector, swizzled,
                                              warp_specialized_pipeline, warpgroup_kernel)

Array = jax.Array

CHANNELS_MULTIPLE = 64  # 128-byte swizzle of 2-byte elements
MAX_CONCURRENT_STEPS = 2
DTYPES = (jnp.bfloat16, jnp.float16)


def check_config(dtype, block_sizes: common.MatchingBlockSizes) -> None:
  """The kernel's static requirements, as ValueErrors that say what to change."""
  if jnp.dtype(dtype) not in [jnp.dtype(d) for d in DTYPES]:
    raise ValueError(f"bipartite_matching (Mosaic GPU): the metric must be bfloat16 or float16 (wgmma operands); "
                     f"got {jnp.dtype(dtype)}. Cast the keys, or use implementation='xla' for float32")
  for name in ("block_a", "block_b"):
    if getattr(block_sizes, name) % 64:
      raise ValueError(f"bipartite_matching (Mosaic GPU): BlockSizes.{name} must be a multiple of 64 (wgmma tile); "
                       f"got {getattr(block_sizes, name)}. BlockSizes.for_gpu() gives (64, 128)")


def fold_tile_rows(run_max: Array, run_idx: Array, scores: Array, cols: Array, first_col: Array) -> tuple[Array, Array]:
  """Fold a (block_a, block_b) score tile into the running (block_a,) max and float index.

  cols: (block_a, block_b) float32 column numbers within the tile; first_col: the tile's first B
  index (float32). Ties keep the lowest index: the tile's first maximal column (a max of negated
  column numbers), and only a strictly larger tile max replaces the running one.
  """
  tile_max = scores.max(axis=1)
  is_max = scores == lax.broadcast_in_dim(tile_max, scores.shape, [0])
  tile_idx = first_col - jnp.where(is_max, -cols, -jnp.inf).max(axis=1)
  better = tile_max > run_max
  return jnp.where(better, tile_max, run_max), jnp.where(better, tile_idx, run_idx)


def grid_shape(num_a: int, num_b: int, batch: int, block_sizes: common.MatchingBlockSizes) -> tuple[tuple[int, int], int]:
  """(CTA grid (A tiles, batch), B pipeline steps) for padded |A|p, |B|p."""
  rows_per_cta = COMPUTE_WGS * block_sizes.block_a
  if num_a % rows_per_cta or num_b % block_sizes.block_b:
    raise ValueError(f"bipartite_matching (Mosaic GPU): padded |A| = {num_a} and |B| = {num_b} must be multiples of "
                     f"{rows_per_cta} and {block_sizes.block_b}")
  return (num_a // rows_per_cta, batch), num_b // block_sizes.block_b


def matching_call(a: Array, b: Array, col_bias: Array, block_sizes: common.MatchingBlockSizes) -> tuple[Array, Array]:
  """a (B, |A|p, Cp), b (B, |B|p, Cp) bf16/f16, col_bias (B, |B|p) f32 -> max, idx (B, |A|p) float32."""
  batch, num_a, channels = a.shape
  num_b = b.shape[1]
  block_a, block_b = block_sizes.block_a, block_sizes.block_b
  grid, steps = grid_shape(num_a, num_b, batch, block_sizes)
  dtype = a.dtype
  transforms = swizzled()

  def kernel(a_ref, b_ref, bias_ref, max_ref, idx_ref, smem_buffers, a_barriers):
    image = lax.axis_index("batch")
    wg = lax.axis_index("wg")
    a_smem2, max_smem2, idx_smem2 = smem_buffers
    row0 = lax.axis_index("a_tiles") * (COMPUTE_WGS * block_a) + wg * block_a

    def compute_thread(pipeline_callback):
      a_smem, max_smem, idx_smem = a_smem2.at[wg], max_smem2.at[wg], idx_smem2.at[wg]
      plgpu.copy_gmem_to_smem(a_ref.at[image, pl.ds(row0, block_a)], a_smem, a_barriers.at[wg])
      plgpu.barrier_wait(a_barriers.at[wg])
      run_max = plgpu.layout_cast(jnp.full((block_a,), -jnp.inf, jnp.float32), plgpu.Layout.WGMMA.reduce(1))
      run_idx = plgpu.layout_cast(jnp.full((block_a,), 0, jnp.float32), plgpu.Layout.WGMMA.reduce(1))
      run_max, run_idx = pipeline_callback((run_max, run_idx))
      max_smem[...] = run_max
      idx_smem[...] = run_idx
      plgpu.commit_smem()
      plgpu.copy_smem_to_gmem(max_smem, max_ref.at[image, pl.ds(row0, block_a)])
      plgpu.copy_smem_to_gmem(idx_smem, idx_ref.at[image, pl.ds(row0, block_a)])
      plgpu.wait_smem_to_gmem(0)

    def b_step(indices, b_smem, bias_smem, b_consumed, bias_consumed, carry):
      run_max, run_idx = carry
      a_smem = a_smem2.at[wg]

      def compute_scores(acc_ref):
        plgpu.wgmma(acc_ref, a_smem, plgpu.transpose_ref(b_smem, (1, 0)))
        return acc_ref[...]

      scores = pl.run_scoped(compute_scores, plgpu.ACC((block_a, block_b), jnp.float32))
      plgpu.barrier_arrive(b_consumed)
      bias = plgpu.load(bias_smem, (), layout=plgpu.Layout.WGMMA.reduce(0))
      plgpu.barrier_arrive(bias_consumed)
      scores = scores + lax.broadcast_in_dim(bias, scores.shape, [1])
      cols = plgpu.broadcasted_iota(jnp.int32, scores.shape, 1, layout=plgpu.Layout.WGMMA).astype(jnp.float32)
      first_col = (indices[0] * block_b).astype(jnp.float32)
      return fold_tile_rows(run_max, run_idx, scores, cols, first_col)

    pipeline = warp_specialized_pipeline(
        b_step, steps=steps, max_concurrent_steps=MAX_CONCURRENT_STEPS, compute_context=compute_thread,
        in_specs=[row_tiles(block_b, channels, transforms), row_vector(block_b)])
    pipeline(b_ref.at[image], bias_ref.at[image])

  out_type = [jax.ShapeDtypeStruct((batch, num_a), jnp.float32)] * 2
  scratch = [(plgpu.SMEM((COMPUTE_WGS, block_a, channels), dtype, transforms=transforms),
              plgpu.SMEM((COMPUTE_WGS, block_a), jnp.float32),
              plgpu.SMEM((COMPUTE_WGS, block_a), jnp.float32)),
             plgpu.Barrier(num_barriers=COMPUTE_WGS)]
  node_max, node_idx = warpgroup_kernel(kernel, grid=grid, grid_names=("a_tiles", "batch"), out_type=out_type,
                                        scratch_types=scratch)(a, b, col_bias)
  return node_max, node_idx


@functools.partial(jax.jit, static_argnames=("has_cls", "has_dist", "normalized", "block_sizes"))
def bipartite_matching_mgpu(metric: Array, *, has_cls: bool, has_dist: bool = False, key_mask: Array | None = None,
                            normalized: bool = False,
                            block_sizes: common.MatchingBlockSizes = common.MatchingBlockSizes.for_gpu()) -> tuple[Array, Array]:
  """matching.bipartite_matching on Mosaic GPU; same arguments and results (bf16/f16 metrics)."""
  check_config(metric.dtype, block_sizes)
  a, b, col_bias, row_valid = common.kernel_operands(
      metric, key_mask, has_cls=has_cls, has_dist=has_dist, normalized=normalized,
      rows_multiple=COMPUTE_WGS * block_sizes.block_a, cols_multiple=block_sizes.block_b,
      channels_multiple=CHANNELS_MULTIPLE)
  node_max, node_idx = matching_call(a, b, col_bias, block_sizes)
  return common.finish(node_max, node_idx, row_valid)
