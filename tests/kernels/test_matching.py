"""kernels.matching: the Pallas TPU kernel (interpret mode) and the Mosaic GPU pieces against the
dense reference and a float64 numpy closed form."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from tokax.kernels import matching
from tokax.kernels.mosaic_gpu import matching as gpu_matching


def _numpy_matching(metric, has_cls, has_dist, key_mask):
  """float64 closed form: (max, first argmax) of masked cosine similarities; zero rows score 0."""
  m = np.asarray(metric, np.float64)
  norm = np.linalg.norm(m, axis=-1, keepdims=True)
  m = m / np.where(norm > 0, norm, 1.0)
  scores = np.einsum("bid,bjd->bij", m[:, 0::2], m[:, 1::2])
  valid = np.ones(m.shape[:2], bool) if key_mask is None else np.asarray(key_mask, bool)
  ok = valid[:, 0::2, None] & valid[:, 1::2][:, None, :]
  if has_cls:
    ok[:, 0, :] = False
  if has_dist:
    ok[:, :, 0] = False
  scores = np.where(ok, scores, -np.inf)
  return scores, scores.max(-1), scores.argmax(-1)


def _metric(rng, batch, n, c, *, duplicates=False, zeros=False):
  metric = rng.standard_normal((batch, n, c)).astype(np.float32)
  if duplicates:  # exact ties: a pool of 3 vectors and one-hot rows (exact products)
    pool = np.concatenate([rng.standard_normal((3, c)), np.eye(c)[:2] * 2.0]).astype(np.float32)
    metric = pool[rng.integers(0, len(pool), size=(batch, n))]
  if zeros:
    metric[:, 3] = 0.0  # B[1]
    metric[:, 4] = 0.0  # A[2]
  return metric


CASES = [  # (n, c, block_sizes, has_cls, has_dist, masked, duplicates, zeros)
    (37, 16, matching.BlockSizes(8, 8), True, False, False, False, True),
    (41, 16, matching.BlockSizes(8, 16), True, True, True, False, False),
    (34, 8, matching.BlockSizes(8, 8), False, False, False, True, True),
    (197, 16, matching.BlockSizes(), True, False, True, False, False),
]


@pytest.mark.parametrize("n,c,blocks,has_cls,has_dist,masked,duplicates,zeros", CASES)
def test_tpu_kernel_matches_reference_and_float64(n, c, blocks, has_cls, has_dist, masked, duplicates, zeros):
  rng = np.random.default_rng(n)
  metric = _metric(rng, 2, n, c, duplicates=duplicates, zeros=zeros)
  mask = None
  if masked:
    mask = rng.uniform(size=(2, n)) > 0.3
    mask[1, 1::2] = False  # image 1: no B token is valid -> every row -inf, index 0
  got_max, got_idx = matching.bipartite_matching(
      jnp.asarray(metric), has_cls=has_cls, has_dist=has_dist, key_mask=None if mask is None else jnp.asarray(mask),
      implementation="pallas", block_sizes=blocks, interpret=True)
  ref_max, ref_idx = matching.matching_reference(jnp.asarray(metric), has_cls=has_cls, has_dist=has_dist,
                                                 key_mask=None if mask is None else jnp.asarray(mask))
  assert got_max.dtype == jnp.float32 and got_idx.dtype == jnp.int32 and got_max.shape == ((2, (n + 1) // 2))
  np.testing.assert_array_equal(got_idx, ref_idx)
  np.testing.assert_allclose(got_max, ref_max, rtol=0, atol=1e-6)
  scores, np_max, np_idx = _numpy_matching(metric, has_cls, has_dist, mask)
  np.testing.assert_allclose(got_max, np_max, rtol=0, atol=2e-6)
  with np.errstate(invalid="ignore"):  # -inf - -inf in rows that take no part
    gap = np.sort(scores, -1)[..., -1] - np.sort(scores, -1)[..., -2]
  clear = ~(gap < 1e-5) | ~np.isfinite(np_max)  # exact ties (gap 0) are resolved like argmax: compare
  clear |= gap == 0
  np.testing.assert_array_equal(np.asarray(got_idx)[clear], np_idx[clear])
  if has_cls:
    assert np.all(np.asarray(got_max)[:, 0] == -np.inf) and np.all(np.asarray(got_idx)[:, 0] == 0)
  if masked:
    assert np.all(np.asarray(got_max)[1] == -np.inf) and np.all(np.asarray(got_idx)[1] == 0)
  if duplicates:
    assert np.sum(gap == 0) > 5  # the case does exercise exact ties
  if zeros:  # a zero A token scores 0 against every B token: its partner is the first valid one
    assert np.all(np.asarray(got_max)[:, 2] == 0) and np.all(np.asarray(got_idx)[:, 2] == 0)


def test_tpu_kernel_race_free_and_bf16():
  """Race detection on; bf16 metric gives the reference's bf16 products exactly."""
  rng = np.random.default_rng(1)
  metric = jnp.asarray(rng.standard_normal((1, 50, 16)), jnp.bfloat16)
  params = pltpu.InterpretParams(detect_races=True)
  got = matching.bipartite_matching(metric, has_cls=True, implementation="pallas",
                                    block_sizes=matching.BlockSizes(8, 8), interpret=params)
  ref = matching.matching_reference(metric, has_cls=True)
  np.testing.assert_array_equal(got[1], ref[1])
  np.testing.assert_allclose(got[0], ref[0], rtol=0, atol=1e-6)


def test_gpu_fold_over_tiles_equals_reference():
  """The Mosaic GPU kernel's per-step math (fold_tile_rows) folded over B tiles in jnp, on the
  operands its wrapper builds, gives the reference's max and first argmax (ties included)."""
  rng = np.random.default_rng(3)
  metric = jnp.asarray(_metric(rng, 2, 301, 40, duplicates=True), jnp.bfloat16)
  mask = jnp.asarray(rng.uniform(size=(2, 301)) > 0.2)
  blocks = matching.BlockSizes.for_gpu()
  a, b, bias, rows = matching.kernel_operands(
      metric, mask, has_cls=True, has_dist=True, normalized=False,
      rows_multiple=gpu_matching.COMPUTE_WGS * blocks.block_a, cols_multiple=blocks.block_b,
      channels_multiple=gpu_matching.CHANNELS_MULTIPLE)
  assert a.shape == (2, 256, 64) and b.shape == (2, 256, 64) and bias.shape == (2, 256)
  grid, steps = gpu_matching.grid_shape(a.shape[1], b.shape[1], 2, blocks)
  assert grid == (2, 2) and steps == 2
  run_max = jnp.full(a.shape[:2], -jnp.inf)
  run_idx = jnp.zeros(a.shape[:2])
  cols = jnp.broadcast_to(jnp.arange(blocks.block_b, dtype=jnp.float32), (a.shape[1], blocks.block_b))
  fold = jax.vmap(gpu_matching.fold_tile_rows, in_axes=(0, 0, 0, None, None))
  for step in range(steps):
    tile = slice(step * blocks.block_b, (step + 1) * blocks.block_b)
    scores = jnp.einsum("bid,bjd->bij", a, b[:, tile], preferred_element_type=jnp.float32) + bias[:, None, tile]
    run_max, run_idx = fold(run_max, run_idx, scores, cols, jnp.float32(step * blocks.block_b))
  got_max, got_idx = matching.finish(run_max, run_idx, rows)
  ref_max, ref_idx = matching.matching_reference(metric, has_cls=True, has_dist=True, key_mask=mask)
  np.testing.assert_array_equal(got_idx, ref_idx)
  np.testing.assert_allclose(got_max, ref_max, rtol=0, atol=1e-6)


def test_gpu_kernel_traces_on_cpu():
  """The Mosaic GPU kernel cannot run here, but its body traces: wgmma and the pipeline are in the jaxpr."""
  metric = jax.ShapeDtypeStruct((2, 197, 64), jnp.bfloat16)
  jaxpr = str(jax.make_jaxpr(lambda m: gpu_matching.bipartite_matching_mgpu(m, has_cls=True))(metric))
  assert "wgmma" in jaxpr
  out = jax.eval_shape(lambda m: gpu_matching.bipartite_matching_mgpu(m, has_cls=True), metric)
  assert out[0].shape == (2, 99) and out[1].dtype == jnp.int32


@pytest.mark.parametrize("call,match", [
    (lambda: matching.BlockSizes(block_a=12), "BlockSizes.block_a"),
    (lambda: gpu_matching.check_config(jnp.float32, matching.BlockSizes.for_gpu()), "bfloat16 or float16"),
    (lambda: gpu_matching.check_config(jnp.bfloat16, matching.BlockSizes(64, 72)), "BlockSizes.block_b"),
    (lambda: matching.bipartite_matching(jnp.ones((1, 4, 2)), has_cls=True, implementation="cuda"), "implementation"),
    (lambda: matching.bipartite_matching(jnp.ones((1, 4, 2)), has_cls=True, key_mask=jnp.ones((1, 3), bool)),
     "key_mask"),
    (lambda: matching.bipartite_matching(jnp.ones((1, 4, 2)), has_cls=True, implementation="pallas"), "interpret=True"),
])
def test_bad_arguments_name_the_field(call, match):
  with pytest.raises(ValueError, match=match):
    call()
