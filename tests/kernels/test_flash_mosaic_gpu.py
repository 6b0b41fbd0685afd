"""The Mosaic GPU kernel on a CPU-only machine: it cannot run here (its warp-specialised pipeline is
outside Pallas' single-block GPU interpreter), so this checks that both kernels trace and lower to
Mosaic GPU for CUDA, and tests the pure-jnp pieces against float64 numpy. The numerics on a GPU are
checked by `python -m tokax.bench.attention_kernels --check`."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokax.kernels import common as fc
from tokax.kernels.mosaic_gpu import flash_attention as gpu_flash


def test_block_sizes_validate_and_pad():
  with pytest.raises(ValueError, match="block_q must be a positive multiple of 64"):
    gpu_flash.BlockSizes(block_q=96)
  with pytest.raises(ValueError, match="block_kv must be a positive multiple of 64"):
    gpu_flash.BlockSizes(block_kv=0)
  with pytest.raises(ValueError, match="max_concurrent_steps"):
    gpu_flash.BlockSizes(max_concurrent_steps=1)
  assert gpu_flash.BlockSizes().padded_lengths(197, 577) == (256, 768)
  assert gpu_flash.BlockSizes(128, 64).padded_lengths(1024, 1024) == (1024, 1024)


def test_log2_row_and_cls_rows_match_float64():
  """cls from the stored log2 logsumexp equals the float64 softmax row of query 0, masked keys 0."""
  rng = np.random.default_rng(0)
  b, m, h, d, m_pad = 2, 11, 3, 64, 16
  q0 = rng.standard_normal((b, h, d)).astype(np.float32)
  k = rng.standard_normal((b, m, h, d)).astype(np.float32)
  bias = (rng.standard_normal((b, m)) * 15).astype(np.float32)
  mask = rng.uniform(size=(b, m)) > 0.3
  mask[:, 0] = True
  row = gpu_flash.log2_key_row(jnp.asarray(bias), jnp.asarray(mask), b, m, m_pad)
  assert np.all(np.isfinite(np.asarray(row)))
  s = np.einsum("bhd,bmhd->bhm", q0.astype(np.float64), k) / np.sqrt(d) + bias[:, None, :]
  s = np.where(mask[:, None, :], s, -np.inf)
  lse = np.log(np.exp(s - s.max(-1, keepdims=True)).sum(-1)) + s.max(-1)
  want = np.exp(s - lse[..., None])
  kp = np.pad(k, ((0, 0), (0, m_pad - m), (0, 0), (0, 0)))
  got = gpu_flash.cls_rows_from_lse(jnp.asarray(q0), jnp.asarray(kp), row,
                                    jnp.asarray(lse / np.log(2), jnp.float32), d ** -0.5)
  np.testing.assert_allclose(got[:, :, :m], want, rtol=2e-5, atol=1e-7)
  assert np.all(np.asarray(got)[:, :, m:] == 0)


@pytest.mark.parametrize("which", ["forward", "received"])
def test_kernels_lower_to_mosaic_gpu(which):
  """Tracing and lowering for CUDA catches signature, shape and layout errors without a GPU."""
  b, n, h, d = 2, 197, 3, 64
  blocks = gpu_flash.BlockSizes()
  n_pad, m_pad = blocks.padded_lengths(n, n)
  q = jax.ShapeDtypeStruct((b, n_pad, h, d), jnp.bfloat16)
  k = jax.ShapeDtypeStruct((b, m_pad, h, d), jnp.bfloat16)
  row = jax.ShapeDtypeStruct((b, m_pad), jnp.float32)
  if which == "forward":
    fn = lambda q, k, v, row: gpu_flash._forward_kernel_call(q, k, v, row, scale=d ** -0.5, blocks=blocks)
    args = (q, k, k, row)
  else:
    fn = lambda q, k, row, lse, w: gpu_flash._received_kernel_call(q, k, row, lse, w, scale=d ** -0.5, blocks=blocks)
    args = (q, k, row, jax.ShapeDtypeStruct((b, h, n_pad), jnp.float32), jax.ShapeDtypeStruct((b, n_pad), jnp.float32))
  text = jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()
  assert "mosaic_gpu" in text


def test_head_dim_and_interpret_are_refused_clearly():
  x = jnp.ones((1, 8, 2, 32), jnp.bfloat16)
  with pytest.raises(ValueError, match="head_dim must be one of"):
    gpu_flash.flash_attention(x, x, x)
  y = jnp.ones((1, 8, 2, 64), jnp.bfloat16)
  with pytest.raises(ValueError, match="GPU interpreter"):
    gpu_flash.flash_attention(y, y, y, interpret=True)
