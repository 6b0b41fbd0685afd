"""The shape every tokax Mosaic GPU kernel shares: a CTA of COMPUTE_WGS compute warpgroups and one
memory warpgroup that streams tiles through plgpu.emit_pipeline_warp_specialized.

Each compute warpgroup owns a block of rows (queries, keys or A tokens) held in SMEM for the whole
kernel, and the pipeline steps over the other operand's row tiles along axis 0.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

from jax.experimental.pallas import mosaic_gpu as plgpu

COMPUTE_WGS = 2
MEMORY_REGISTERS = 40


def swizzled() -> tuple[Any, Any]:
  """(8, 64) tiling and 128-byte swizzle: the SMEM layout of 2-byte wgmma operands under Lane semantics."""
  return plgpu.TilingTransform((8, 64)), plgpu.SwizzleTransform(128)


def row_tiles(rows: int, width: int, transforms: Sequence[Any] = ()) -> Any:
  """BlockSpec of the pipeline's step i: rows [i * rows, (i + 1) * rows) of a (R, width) operand."""
  return plgpu.BlockSpec(block_shape=(rows, width), index_map=lambda i: (i, 0), transforms=tuple(transforms))


def row_vector(rows: int) -> Any:
  """BlockSpec of the pipeline's step i: entries [i * rows, (i + 1) * rows) of an (R,) operand."""
  return plgpu.BlockSpec(block_shape=(rows,), index_map=lambda i: (i,))


def warp_specialized_pipeline(body: Callable, *, steps: int, max_concurrent_steps: int, compute_context: Callable,
                              in_specs: Sequence[Any]) -> Callable:
  """emit_pipeline_warp_specialized over `steps` tiles, with the consumed barriers released by `body`."""
  return plgpu.emit_pipeline_warp_specialized(
      body,
      grid=(steps,),
      max_concurrent_steps=min(max_concurrent_steps, steps),
      num_compute_wgs=COMPUTE_WGS,
      memory_registers=MEMORY_REGISTERS,
      wg_axis="wg",
      manual_consumed_barriers=True,
      compute_context=compute_context,
      in_specs=list(in_specs),
      out_specs=[],
  )


def warpgroup_kernel(body: Callable, *, grid: tuple[int, ...], grid_names: tuple[str, ...], out_type: Any,
                     scratch_types: Any, warpgroup_semantics: bool = False) -> Callable:
  """plgpu.kernel with COMPUTE_WGS + 1 warpgroups (axis "wg") and approximate math; Warpgroup lowering
  semantics where asked (the forward kernels), else Lane (explicit WGMMA layouts)."""
  params = dict(approx_math=True)
  if warpgroup_semantics:
    params["lowering_semantics"] = plgpu.LoweringSemantics.Warpgroup
  return plgpu.kernel(body, grid=grid, grid_names=grid_names, num_threads=COMPUTE_WGS + 1, thread_name="wg",
                      out_type=out_type, scratch_types=scratch_types,
                      compiler_params=plgpu.CompilerParams(**params))
