"""kernels.attention against a float64 numpy closed form."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokax import kernels


def _numpy_attention(q, k, v, key_bias, key_mask):
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
  if key_bias is not None:
    logits = logits + np.asarray(key_bias, np.float64)[:, None, None, :]
  if key_mask is not None:
    logits = np.where(np.asarray(key_mask)[:, None, None, :], logits, -np.inf)
  logits -= logits.max(-1, keepdims=True)
  probs = np.exp(logits)
  probs /= probs.sum(-1, keepdims=True)
  return np.einsum("bhqk,bkhd->bqhd", probs, v), probs


@pytest.mark.parametrize("n", [5, 17, 197])
@pytest.mark.parametrize("with_bias,with_mask", [(False, False), (True, False), (True, True)])
def test_xla_matches_float64(n, with_bias, with_mask):
  rng = np.random.default_rng(n)
  b, h, d = 2, 3, 16
  q, k, v = (rng.standard_normal((b, n, h, d)).astype(np.float32) for _ in range(3))
  bias = np.log(rng.integers(1, 9, size=(b, n))).astype(np.float32) * 3 if with_bias else None
  mask = rng.uniform(size=(b, n)) > 0.3 if with_mask else None
  if mask is not None:
    mask[:, 0] = True
  out, scores = kernels.attention(q, k, v, key_bias=bias, key_mask=mask, scores=("cls", "received"),
                                  implementation="xla")
  ref, probs = _numpy_attention(q, k, v, bias, mask)
  np.testing.assert_allclose(out, ref, rtol=2e-5, atol=2e-5)
  np.testing.assert_allclose(scores["cls"], probs[:, :, 0].mean(1), rtol=1e-5, atol=1e-6)
  per_query = probs.mean(1)
  if mask is None:
    received = per_query.mean(1)
  else:
    received = (per_query * mask[:, :, None]).sum(1) / mask.sum(1, keepdims=True)
  np.testing.assert_allclose(scores["received"], received, rtol=1e-5, atol=1e-6)
  if mask is not None:  # a masked key receives nothing
    assert np.all(np.asarray(scores["cls"])[~mask] == 0)


def test_auto_picks_xla_on_cpu_and_cudnn_refuses_scores():
  x = jnp.asarray(np.random.default_rng(0).standard_normal((1, 4, 2, 8)), jnp.float32)
  out, _ = kernels.attention(x, x, x)
  ref, _ = kernels.attention(x, x, x, implementation="xla")
  np.testing.assert_array_equal(out, ref)
  with pytest.raises(ValueError, match="returns no scores"):
    kernels.attention(x, x, x, scores=("cls",), implementation="cudnn")


@pytest.mark.parametrize("kwargs,match", [
    (dict(scores=("bogus",)), "unknown score"),
    (dict(implementation="triton"), "unknown implementation"),
    (dict(key_bias=jnp.zeros((1, 3))), "key_bias must be"),
])
def test_bad_arguments_name_the_field(kwargs, match):
  x = jnp.ones((1, 4, 2, 8)) * jnp.arange(4.0)[None, :, None, None]
  with pytest.raises(ValueError, match=match):
    kernels.attention(x, x, x, **kwargs)


def test_folded_key_bias_equals_the_bias():
  """The cuDNN path carries the key bias as an extra head channel; check the algebra on the CPU."""
  from tokax.kernels.attention import fold_key_bias
  rng = np.random.default_rng(7)
  q, k, v = (rng.standard_normal((2, 13, 3, 64)).astype(np.float32) for _ in range(3))
  bias = np.log(rng.integers(1, 60, size=(2, 13))).astype(np.float32)
  fq, fk, fv = fold_key_bias(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(bias))
  assert fq.shape[-1] == 72
  out = jax.nn.dot_product_attention(fq, fk, fv, scale=64 ** -0.5, implementation="xla")[..., :64]
  ref, _ = _numpy_attention(q, k, v, bias, None)
  np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
