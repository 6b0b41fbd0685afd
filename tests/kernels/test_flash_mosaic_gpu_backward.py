"""The Mosaic GPU flash backward on a CPU-only machine: the kernels cannot run here, so this checks
(1) the backward's tile algorithm (backward_tiles_reference, the kernels' loop in jnp, log2 domain)
in float64 against jax.grad of the reference, (2) the custom_vjp wiring of backward="pallas"
(padding, delta, d(key_bias), the scores' cotangents) with the kernels swapped for their jnp
twins, and (3) that the backward kernels lower to Mosaic GPU custom calls for CUDA. The numbers on
a GPU are checked by `python -m tokax.bench.attention_kernels --check`."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokax.kernels import reference
from tokax.kernels.mosaic_gpu import flash_attention as gpu_flash


def _forward_tiles(q, k, v, row, *, scale, blocks):
  """jnp twin of _forward_kernel_call: out (B, Np, H, D) in q's dtype, lse2 (B, H, Np) (log2 units)."""
  del blocks
  s = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=row.dtype) * (scale * gpu_flash.LOG2E)
  s = s + row[:, None, None, :]
  peak = s.max(-1, keepdims=True)
  lse2 = jnp.log2(jnp.exp2(s - peak).sum(-1)) + peak[..., 0]
  p = jnp.exp2(s - lse2[..., None])
  return jnp.einsum("bhqk,bkhd->bqhd", p, v.astype(p.dtype)).astype(q.dtype), lse2


def _attention64(q, k, v, bias, mask):
  """attention_reference's formula with float64 logits: (B, N, H, D)."""
  s = jnp.einsum("bqhd,bkhd->bhqk", q, k) * q.shape[-1] ** -0.5 + bias[:, None, None, :]
  p = jax.nn.softmax(jnp.where(mask[:, None, None, :], s, -jnp.inf), axis=-1)
  return jnp.einsum("bhqk,bkhd->bqhd", p, v)


def _inputs(seed, b, n, m, h, d, dtype, bias_scale=10.0):
  keys = jax.random.split(jax.random.key(seed), 6)
  q = jax.random.normal(keys[0], (b, n, h, d), dtype)
  k, v = (jax.random.normal(key, (b, m, h, d), dtype) for key in keys[1:3])
  bias = jax.random.normal(keys[3], (b, m), dtype) * bias_scale  # large: logits up to ~40
  mask = (jax.random.uniform(keys[4], (b, m)) > 0.3).at[:, 0].set(True)
  d_out = jax.random.normal(keys[5], (b, n, h, d), dtype)
  return q, k, v, bias, mask, d_out


# N, M not multiples of any tile; N != M; several tiles each way (64-wide tiles)
ALGORITHM_CASES = [(2, 150, 150, 2, 64), (1, 70, 200, 3, 128)]


@pytest.mark.parametrize("b,n,m,h,d", ALGORITHM_CASES)
def test_backward_tiles_match_reference_gradient_float64(b, n, m, h, d):
  """_backward with backward_tiles_reference (the kernels' tile loop) equals jax.grad of
  attention_reference in float64: dq, dk, dv, d(key_bias); masked keys get exactly zero."""
  blocks = gpu_flash.BlockSizes(block_q=64, block_kv=64)
  n_pad, m_pad = blocks.padded_lengths(n, m)
  pad = lambda x, size: jnp.pad(x, ((0, 0), (0, size - x.shape[1]), (0, 0), (0, 0)))

  @jax.jit  # one compile: eager float64 ops each compile on their own
  def run(q, k, v, bias, mask, d_out):
    row = gpu_flash.log2_key_row(bias, mask, b, m, m_pad, dtype=jnp.float64)
    out_p, lse2 = _forward_tiles(pad(q, n_pad), pad(k, m_pad), pad(v, m_pad), row, scale=d ** -0.5, blocks=blocks)
    got = gpu_flash._backward(q, k, v, bias, mask, out_p, lse2, d_out, blocks, op_dtype=jnp.float64,
                              tiles=gpu_flash.backward_tiles_reference)
    # attention_reference computes its logits in float32 (preferred_element_type), so the float64
    # check is against its formula in float64; the reference itself at its float32 precision
    exact = lambda q, k, v, bias: _attention64(q, k, v, bias, mask)
    ref = lambda q, k, v, bias: reference.attention_reference(q, k, v, key_bias=bias, key_mask=mask)[0]
    out, exact_vjp = jax.vjp(exact, q, k, v, bias)
    return out_p[:, :n], out, got, exact_vjp(d_out), jax.vjp(ref, q, k, v, bias)[1](d_out)

  with jax.enable_x64():
    q, k, v, bias, mask, d_out = _inputs(0, b, n, m, h, d, jnp.float64)
    out_p, out, got, want_exact, want_ref = run(q, k, v, bias, mask, d_out)
    np.testing.assert_allclose(out_p, out, rtol=1e-12, atol=1e-12)
    for want, tol in ((want_exact, 1e-11), (want_ref, 1e-3)):
      for name, g, w in zip(("dq", "dk", "dv", "dbias"), got, want):
        assert g.dtype == jnp.float64 and g.shape == w.shape, name
        err = float(jnp.max(jnp.abs(g - w)) / jnp.max(jnp.abs(w)))
        print(f"{name} rel err {err:.2e} (tol {tol:g})")
        assert err < tol, (name, err, tol)
    masked = ~np.asarray(mask)
    for g in (got[1], got[2]):
      assert np.all(np.asarray(g)[masked] == 0)
    assert np.all(np.asarray(got[3])[masked] == 0)


@pytest.fixture
def cpu_twins(monkeypatch):
  """The forward and backward kernels replaced by their jnp twins, float32 operands throughout."""
  monkeypatch.setattr(gpu_flash, "_forward_kernel_call", _forward_tiles)
  monkeypatch.setattr(gpu_flash, "_pallas_backward_tiles", gpu_flash.backward_tiles_reference)
  monkeypatch.setattr(gpu_flash, "_operand_dtype", lambda dtype: jnp.dtype(dtype))


def test_pallas_backward_wiring_equals_reference_backward(cpu_twins, monkeypatch):
  """backward="pallas" (kernels swapped for jnp twins) gives the reference backward's gradients for
  q, k, v, key_bias: with the output alone (the score feeds only an argsort: its cotangent is a
  symbolic zero and the reference is not called) and with a loss on the "cls" score too (its
  cotangent through the reference's vjp)."""
  calls = []
  real_reference = reference.attention_reference
  monkeypatch.setattr(reference, "attention_reference", lambda *a, **kw: calls.append(1) or real_reference(*a, **kw))
  b, n, h, d = 2, 37, 2, 64
  q, k, v, bias, mask, d_out = _inputs(1, b, n, n, h, d, jnp.float32, bias_scale=3.0)
  c = jax.random.normal(jax.random.key(9), (b, n))

  def loss(backward, with_score):
    def f(q, k, v, bias):
      out, s = gpu_flash.flash_attention(q, k, v, key_bias=bias, key_mask=mask, scores=("cls",), backward=backward)
      total = jnp.sum(out * d_out)
      # the score used only through a selection's indices: its cotangent is a symbolic zero
      keep = jnp.argsort(s["cls"], axis=-1)[:, -8:]
      total = total + jnp.sum(jnp.take_along_axis(out[:, :, 0, 0], keep, axis=1))
      return total + jnp.sum(s["cls"] * c) if with_score else total
    return jax.jit(jax.grad(f, argnums=(0, 1, 2, 3)))

  for with_score in (False, True):
    calls.clear()
    got = loss("pallas", with_score)(q, k, v, bias)
    assert bool(calls) == with_score
    want = loss("reference", with_score)(q, k, v, bias)
    for name, g, w in zip(("dq", "dk", "dv", "dbias"), got, want):
      np.testing.assert_allclose(g, w, rtol=1e-4, atol=2e-5 * float(jnp.max(jnp.abs(w))), err_msg=name)


def test_backward_option_is_checked():
  x = jnp.ones((1, 8, 2, 64), jnp.bfloat16)
  with pytest.raises(ValueError, match="backward must be one of"):
    gpu_flash.flash_attention(x, x, x, backward="xla")
  with pytest.raises(ValueError, match="block_kv_bwd must be a positive multiple of 64"):
    gpu_flash.BlockSizes(block_kv_bwd=32)
  assert gpu_flash.BlockSizes(block_q_bwd=128).padded_lengths(197, 197) == (256, 256)


@pytest.mark.parametrize("b,n,h,d,dtype", [(2, 197, 2, 64, jnp.bfloat16), (2, 300, 4, 128, jnp.float16)])
def test_backward_lowers_to_mosaic_gpu(b, n, h, d, dtype):
  """jax.export for CUDA of the gradient with backward="pallas", key_bias and key_mask: the forward,
  dq and dk/dv kernels each lower to a Mosaic GPU custom call (no GPU needed)."""
  q = jax.ShapeDtypeStruct((b, n, h, d), dtype)
  bias = jax.ShapeDtypeStruct((b, n), jnp.float32)
  mask = jax.ShapeDtypeStruct((b, n), jnp.bool_)

  def loss(q, k, v, bias, mask):
    out, _ = gpu_flash.flash_attention(q, k, v, key_bias=bias, key_mask=mask, backward="pallas")
    return jnp.sum(out.astype(jnp.float32) ** 2)

  grad = jax.grad(loss, argnums=(0, 1, 2, 3))
  exported = jax.export.export(jax.jit(grad), platforms=["cuda"])(q, q, q, bias, mask)
  text = exported.mlir_module()
  calls = text.count("stablehlo.custom_call @mosaic_gpu")  # forward, dq, dk/dv
  assert calls == 3, calls
