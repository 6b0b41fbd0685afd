"""The DCT compressor equals scipy's DCT-II / inverse (float64), its closed forms and the official code (goldens)."""
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.fft

from tokax.reduction import Tokens, apply_plan, plan_matrix
from tokax.reduction.dct import (DCT, axis_matrix, clip_keep, dc_gain, dct_compress, dct_matrix, dct_plan,
                                 dct_token_matrix, keep_from_ratio)


def _scipy_compress(x, grid, keep):
  """float64 reference: (B, H*W, C) -> grid (B, C, H, W) -> dctn ortho -> crop -> idctn ortho of the crop."""
  (h, w), (rh, rw) = grid, keep
  g = np.asarray(x, np.float64).transpose(0, 2, 1).reshape(x.shape[0], x.shape[2], h, w)
  coeffs = scipy.fft.dctn(g, type=2, norm="ortho", axes=(-2, -1))[..., :rh, :rw]
  y = scipy.fft.idctn(coeffs, type=2, norm="ortho", axes=(-2, -1))
  return y.reshape(x.shape[0], x.shape[2], rh * rw).transpose(0, 2, 1)


@pytest.fixture(scope="module")
def golden():
  from conftest import TESTS
  meta = json.loads((TESTS / "golden" / "dct_compress.json").read_text())
  return meta, dict(np.load(TESTS / "golden" / "dct_compress.npz"))


def test_dct_matrix_is_scipy_ortho_dct():
  for n in (1, 2, 7, 24):
    np.testing.assert_allclose(dct_matrix(n), scipy.fft.dct(np.eye(n), type=2, norm="ortho", axis=0), atol=1e-14)
    np.testing.assert_allclose(dct_matrix(n) @ dct_matrix(n).T, np.eye(n), atol=1e-13)


@pytest.mark.parametrize("grid,keep", [((24, 24), (12, 12)), ((6, 8), (3, 5)), ((16, 22), (10, 14)), ((5, 7), (5, 1))])
def test_compress_equals_scipy_float64(grid, keep):
  x = np.random.default_rng(0).standard_normal((2, grid[0] * grid[1], 6))
  expected = _scipy_compress(x, grid, keep)
  y = np.asarray(jax.jit(dct_compress, static_argnums=(1, 2))(jnp.asarray(x, jnp.float32), grid, keep))
  assert y.shape == (2, keep[0] * keep[1], 6) and y.dtype == np.float32
  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_token_matrix_is_the_kronecker_product_in_row_major_order():
  grid, keep = (4, 6), (2, 3)
  t = dct_token_matrix(grid, keep)
  np.testing.assert_allclose(t, np.kron(dct_matrix(2).T @ dct_matrix(4)[:2], dct_matrix(3).T @ dct_matrix(6)[:3]))
  # column n of T is the response to the one-hot token n = h * W + w (row-major), computed by scipy
  basis = np.eye(24)[None]  # (1, N, C=N): channel c holds the one-hot of token c
  np.testing.assert_allclose(t, _scipy_compress(basis, grid, keep)[0], atol=1e-14)
  # the other Kronecker order is a different matrix (the test would notice a swap)
  assert not np.allclose(t, np.kron(axis_matrix(6, 3), axis_matrix(4, 2)))


@pytest.mark.parametrize("grid,keep", [((24, 24), (12, 12)), ((6, 8), (3, 5)), ((6, 8), (1, 1))])
def test_dc_gain_closed_form(grid, keep):
  """A constant field comes out constant, times sqrt(H W / (rh rw)): the official code's smaller inverse DCT."""
  value = 0.75
  x = jnp.full((1, grid[0] * grid[1], 3), value)
  y = np.asarray(dct_compress(x, grid, keep))
  gain = np.sqrt(grid[0] * grid[1] / (keep[0] * keep[1]))
  assert dc_gain(grid, keep) == pytest.approx(gain)
  np.testing.assert_allclose(y, value * gain, rtol=1e-6)
  np.testing.assert_allclose(dct_token_matrix(grid, keep).sum(1), gain, rtol=1e-12)  # every row sums to the gain


def test_full_keep_is_the_identity():
  grid = (6, 8)
  np.testing.assert_allclose(dct_token_matrix(grid, grid), np.eye(48), atol=1e-13)
  x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 48, 5)), jnp.float32)
  np.testing.assert_allclose(dct_compress(x, grid, grid), x, atol=1e-6)
  np.testing.assert_allclose(dct_compress(x, grid, (60, 80)), x, atol=1e-6)  # larger than the grid: clipped
  assert clip_keep(grid, (60, 3)) == (6, 3)


def test_plan_matches_compress_and_keeps_prefix():
  grid, keep = (6, 8), (3, 5)
  x = jnp.asarray(np.random.default_rng(2).standard_normal((2, 1 + 48, 4)), jnp.float32)
  tokens = Tokens.create(x, has_cls=True)
  plan = dct_plan(2, grid, keep, num_prefix=1)
  t = np.asarray(plan_matrix(plan, tokens.size))
  assert t.shape == (2, 1 + 15, 1 + 48)
  np.testing.assert_array_equal(t[:, 0, 0], 1.0)
  assert not t[:, 0, 1:].any() and not t[:, 1:, 0].any()
  np.testing.assert_allclose(t[0, 1:, 1:], dct_token_matrix(grid, keep), atol=1e-7)
  direct = np.asarray(dct_compress(x[:, 1:], grid, keep))
  np.testing.assert_allclose(np.asarray(apply_plan(tokens, plan).x)[:, 1:], direct, rtol=1e-5, atol=1e-5)
  reduced = jax.jit(lambda tk: DCT(keep=keep, grid=grid)(tk))(tokens)
  np.testing.assert_array_equal(reduced.x[:, 0], x[:, 0])
  np.testing.assert_allclose(np.asarray(reduced.x)[:, 1:], _scipy_compress(np.asarray(x)[:, 1:], grid, keep),
                             rtol=1e-5, atol=1e-5)
  assert reduced.size.shape == (2, 16) and reduced.assign.shape == (2, 49)


def test_reducer_infers_square_grid_and_ratio():
  x = jnp.asarray(np.random.default_rng(3).standard_normal((2, 576, 4)), jnp.float32)
  out = DCT()(Tokens.create(x, has_cls=False))  # ratio 0.5 on 24x24: LLaVA-1.5's reserve=12
  np.testing.assert_allclose(np.asarray(out.x), _scipy_compress(np.asarray(x), (24, 24), (12, 12)), rtol=1e-5,
                             atol=1e-5)
  assert keep_from_ratio((16, 22), 2 / 3) == (10, 14)  # Qwen2-VL integration: max(int(side * ratio), 1)
  assert keep_from_ratio((1, 2), 0.1) == (1, 1)
  assert DCT(ratio=2 / 3, grid=(16, 22)).resolve(352) == ((16, 22), (10, 14))
  assert DCT(keep=12).resolve(576) == ((24, 24), (12, 12))


def _ulp(values, dtype):
  if dtype == "float16":
    return np.spacing(np.abs(values).astype(np.float16)).astype(np.float32)
  exponent = np.floor(np.log2(np.maximum(np.abs(values), 1e-30)))  # bfloat16: 8 significant bits
  return np.exp2(exponent - 7).astype(np.float32)


def test_equals_official_golden(golden):
  meta, data = golden
  for case in meta["cases"]:
    tag, dtype, grid, keep = case["tag"], case["dtype"], tuple(case["grid"]), tuple(case["keep"])
    x = jnp.asarray(data[f"x_{tag}"]).astype(jnp.bfloat16 if dtype == "bfloat16" else jnp.float16)
    official, official_fp32 = data[f"out_{tag}"].astype(np.float32), data[f"out_fp32_{tag}"]
    scale = np.abs(official_fp32).max()
    # float32 path: the same linear map evaluated two ways (FFT there, two matmuls here)
    y32 = np.asarray(dct_compress(x.astype(jnp.float32), grid, keep))
    np.testing.assert_allclose(y32, official_fp32, rtol=1e-5, atol=2e-6 * scale, err_msg=tag)
    # half precision in, half precision out (the official dtype contract): the float32 results round
    # to the same half value or a neighbour (values near 0 may differ by the float32 tolerance above)
    y = dct_compress(x, grid, keep)
    assert y.dtype == x.dtype
    y = np.asarray(y.astype(jnp.float32))
    diff = np.abs(y - official)
    assert (diff <= _ulp(np.maximum(np.abs(y), np.abs(official)), dtype) + 2e-6 * scale).all(), tag
    assert (diff > 0).mean() < 0.01, tag
  constant = data["out_constant_fp16"]
  np.testing.assert_array_equal(constant, np.float16(1.5))  # 0.75 * DC gain 2
  np.testing.assert_array_equal(data["out_identity_fp16"], data["x_identity_fp16"])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float16, jnp.bfloat16])
def test_any_float_dtype_is_accepted(dtype):
  """The official compress() raises TypeError for float32; tokax takes any float dtype and returns it."""
  x = jnp.asarray(np.random.default_rng(4).standard_normal((2, 48, 3)), dtype)
  y = dct_compress(x, (6, 8), (3, 4))
  assert y.dtype == dtype
  expected = _scipy_compress(np.asarray(x.astype(jnp.float32)), (6, 8), (3, 4))
  np.testing.assert_allclose(np.asarray(y.astype(jnp.float32)), expected, rtol=1e-2, atol=2e-2)


@pytest.mark.parametrize("kind", ["zeros", "constant"])
def test_degenerate_inputs_give_no_nan_and_jit_once(kind):
  reducer = DCT(keep=(3, 3))
  chex.clear_trace_counter()  # the counter is per function body, shared by the parametrized cases

  @jax.jit
  @chex.assert_max_traces(n=1)
  def run(x):
    return reducer(Tokens.create(x, has_cls=True))

  for seed in range(2):
    x = jnp.zeros((2, 1 + 36, 4)) if kind == "zeros" else jnp.full((2, 37, 4), 0.3 + seed)
    out = run(x)
    assert out.x.shape == (2, 1 + 9, 4)
    assert np.isfinite(np.asarray(out.x)).all() and np.isfinite(np.asarray(out.size)).all()
    if kind == "constant":
      np.testing.assert_allclose(np.asarray(out.x)[:, 1:], (0.3 + seed) * 2.0, rtol=1e-6)


def test_invalid_arguments_name_the_field():
  x = jnp.ones((1, 48, 2))
  with pytest.raises(ValueError, match="grid"):
    dct_compress(x, (6, 7), (3, 3))
  for keep in (0, (3, 0), (-1, 2), (1, 2, 3), 2.5):
    with pytest.raises(ValueError, match="keep"):
      dct_compress(x, (6, 8), keep)
    with pytest.raises(ValueError, match="DCT.keep"):
      DCT(keep=keep)
  for ratio in (0.0, 1.5, float("nan")):
    with pytest.raises(ValueError, match="DCT.ratio"):
      DCT(ratio=ratio)
    with pytest.raises(ValueError, match="ratio"):
      keep_from_ratio((6, 8), ratio)
  with pytest.raises(ValueError, match="DCT.grid"):
    DCT()(Tokens.create(jnp.ones((1, 48, 2)), has_cls=False))  # 48 is not a square: pass grid
  with pytest.raises(ValueError, match="DCT.grid"):
    DCT(grid=(6, 6))(Tokens.create(jnp.ones((1, 48, 2)), has_cls=False))
  with pytest.raises(ValueError, match="x"):
    dct_compress(jnp.ones((1, 48, 2), jnp.int32), (6, 8), (3, 3))
  with pytest.raises(ValueError, match="DCT: tokens.mask"):
    DCT(keep=2)(Tokens.create(jnp.ones((1, 17, 2))).replace(mask=jnp.ones((1, 17), bool)))
