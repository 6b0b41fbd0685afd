"""Bipartite matching on Mosaic TPU: a running row max and argmax over B tiles.

Grid (batch, A tiles, B tiles), the last axis a reduction. Each step forms the (block_b, block_a)
tile of scores B A^T in VMEM (A along lanes, so the reductions run over sublanes and the results
are lane-dense rows), adds the column bias and folds the tile's max and first argmax into the
running pair. Only the (B, |A|) results reach HBM.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from tokax.kernels import common

Array = jax.Array


def fold_tile(run_max: Array, run_idx: Array, scores: Array, first_col: Array | int) -> tuple[Array, Array]:
  """Fold one (block_b, block_a) tile of scores into the running (1, block_a) max and index.

  Ties keep the lowest B index: inside the tile the first maximal row wins, across tiles only a
  strictly larger max replaces the running one (tiles arrive in increasing column order).
  """
  tile_max = scores.max(axis=0, keepdims=True)
  rows = jax.lax.broadcasted_iota(jnp.int32, scores.shape, 0)
  tile_idx = jnp.min(jnp.where(scores == tile_max, rows, scores.shape[0]), axis=0, keepdims=True) + first_col
  better = tile_max > run_max
  return jnp.where(better, tile_max, run_max), jnp.where(better, tile_idx, run_idx)


def _kernel(a_ref, b_ref, bias_ref, max_ref, idx_ref, run_max, run_idx, *, block_b: int, precision):
  step = pl.program_id(2)

  @pl.when(step == 0)
  def _init():
    run_max[...] = jnp.full(run_max.shape, -jnp.inf, jnp.float32)
    run_idx[...] = jnp.zeros(run_idx.shape, jnp.int32)

  scores = jax.lax.dot_general(b_ref[0], a_ref[0], (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32,
                               precision=precision)  # (block_b, block_a)
  scores = scores + bias_ref[0]  # (block_b, 1): -inf for columns that take no part
  new_max, new_idx = fold_tile(run_max[...], run_idx[...], scores, step * block_b)
  run_max[...] = new_max
  run_idx[...] = new_idx

  @pl.when(step == pl.num_programs(2) - 1)
  def _store():
    max_ref[0] = run_max[...]
    idx_ref[0] = run_idx[...]


@functools.partial(jax.jit, static_argnames=("block_sizes", "interpret"))
def _matching_call(a: Array, b: Array, col_bias: Array, block_sizes: common.MatchingBlockSizes, interpret) -> tuple[Array, Array]:
  """a (B, |A|p, C), b (B, |B|p, C), col_bias (B, |B|p) -> max, idx (B, |A|p) float32 / int32."""
  batch, num_a, channels = a.shape
  num_b = b.shape[1]
  block_a, block_b = min(block_sizes.block_a, num_a), min(block_sizes.block_b, num_b)
  precision = jax.lax.Precision.HIGHEST if a.dtype == jnp.float32 else None
  out_shape = (jax.ShapeDtypeStruct((batch, 1, num_a), jnp.float32), jax.ShapeDtypeStruct((batch, 1, num_a), jnp.int32))
  row_spec = pl.BlockSpec((1, 1, block_a), lambda n, i, j: (n, 0, i))
  node_max, node_idx = pl.pallas_call(
      functools.partial(_kernel, block_b=block_b, precision=precision),
      out_shape=out_shape,
      grid=(batch, num_a // block_a, num_b // block_b),
      in_specs=[
          pl.BlockSpec((1, block_a, channels), lambda n, i, j: (n, i, 0)),
          pl.BlockSpec((1, block_b, channels), lambda n, i, j: (n, j, 0)),
          pl.BlockSpec((1, block_b, 1), lambda n, i, j: (n, j, 0)),
      ],
      out_specs=(row_spec, row_spec),
      scratch_shapes=[pltpu.VMEM((1, block_a), jnp.float32), pltpu.VMEM((1, block_a), jnp.int32)],
      compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "arbitrary")),
      interpret=interpret,
  )(a, b, col_bias[:, :, None])
  return node_max[:, 0], node_idx[:, 0]


def bipartite_matching_tpu(metric: Array, *, has_cls: bool, has_dist: bool = False, key_mask: Array | None = None,
                           normalized: bool = False, block_sizes: common.MatchingBlockSizes = common.MatchingBlockSizes(),
                           interpret=None) -> tuple[Array, Array]:
  """matching.bipartite_matching on Mosaic TPU; same arguments and results.

  interpret: None/False compiles for the TPU; True runs under pltpu.InterpretParams() (the CPU
  tests); a pltpu.InterpretParams is passed through (detect_races=True in the race test).
  """
  if interpret is True:
    interpret = pltpu.InterpretParams()
  elif not interpret:
    interpret = False
  num_a, num_b = -(-metric.shape[1] // 2), metric.shape[1] // 2
  # A tile never exceeds the (8-padded) set it covers: small layers run as one tile.
  block_a = min(block_sizes.block_a, common.round_up(num_a, 8))
  block_b = min(block_sizes.block_b, common.round_up(num_b, 8))
  a, b, col_bias, row_valid = common.kernel_operands(
      metric, key_mask, has_cls=has_cls, has_dist=has_dist, normalized=normalized,
      rows_multiple=block_a, cols_multiple=block_b)
  node_max, node_idx = _matching_call(a, b, col_bias, common.MatchingBlockSizes(block_a, block_b), interpret)
  return common.finish(node_max, node_idx, row_valid)
