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


def _numpy_masked(q, k, v, mask):
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
  logits = np.where(np.broadcast_to(mask, logits.shape), logits, -np.inf)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  return np.einsum("bhqk,bkhd->bqhd", probs, v)


@pytest.mark.parametrize("mask_batch,mask_heads,nq", [(1, 1, 12), (2, 3, 5)])
def test_general_mask_and_longer_keys_match_float64(mask_batch, mask_heads, nq):
  """A (B|1, H|1, N, M) boolean mask, with M > N as against a KV cache."""
  rng = np.random.default_rng(nq)
  b, h, d, m = 2, 3, 8, 12
  q = rng.standard_normal((b, nq, h, d)).astype(np.float32)
  k, v = (rng.standard_normal((b, m, h, d)).astype(np.float32) for _ in range(2))
  mask = rng.uniform(size=(mask_batch, mask_heads, nq, m)) > 0.4
  mask[..., 0] = True
  out, _ = kernels.attention(q, k, v, mask=jnp.asarray(mask), implementation="xla")
  np.testing.assert_allclose(out, _numpy_masked(q, k, v, mask), rtol=2e-5, atol=2e-5)


def test_mask_is_checked_and_cudnn_dispatch_on_masks():
  from tokax.kernels.attention import cudnn_applies, cudnn_mask
  x = jnp.ones((2, 4, 2, 8)) * jnp.arange(4.0)[None, :, None, None]
  with pytest.raises(ValueError, match="mask must be a bool array"):
    kernels.attention(x, x, x, mask=jnp.ones((1, 1, 4, 5), bool))
  with pytest.raises(ValueError, match="mask must be a bool array"):
    kernels.attention(x, x, x, mask=jnp.ones((1, 1, 4, 4), jnp.float32))
  half = jnp.zeros((2, 6, 2, 64), jnp.bfloat16)
  odd = jnp.zeros((2, 5, 2, 64), jnp.bfloat16)
  mask = jnp.ones((1, 1, 6, 6), bool)
  assert cudnn_applies(half, (), backend="gpu")
  assert cudnn_applies(odd, (), backend="gpu")  # any length: cudnn_padded pads to 64
  assert not cudnn_applies(half, ("cls",), backend="gpu")
  assert not cudnn_applies(half, (), backend="cpu")
  assert not cudnn_applies(half.astype(jnp.float32), (), backend="gpu")
  from tokax.kernels.attention import pallas_applies  # auto's pick when scores are asked for on a GPU
  hopper = dict(backend="gpu", compute_capability="9.0")
  assert pallas_applies(half, ("cls",), None, **hopper)
  assert not pallas_applies(half, (), None, **hopper)  # no scores: cuDNN
  assert not pallas_applies(half, ("cls",), mask, **hopper)  # general mask: the kernel takes none
  assert not pallas_applies(half.astype(jnp.float32), ("cls",), None, **hopper)  # float32: exact xla
  assert not pallas_applies(half[..., :32], ("cls",), None, **hopper)  # head dim 32
  assert not pallas_applies(half, ("cls",), None, backend="gpu", compute_capability="8.0")  # no wgmma
  assert not pallas_applies(half, ("cls",), None, backend="cpu", compute_capability="9.0")
  key_mask = jnp.asarray([[True] * 5 + [False]] * 2)
  block = jnp.tril(jnp.ones((6, 6), bool))[None, None]
  combined = cudnn_mask(half, half, key_mask, block)
  assert combined.shape == (2, 1, 6, 6)
  np.testing.assert_array_equal(combined, np.tril(np.ones((6, 6), bool))[None, None] & np.asarray(key_mask)[:, None, None])


@pytest.mark.parametrize("n,with_bias,with_key_mask,with_mask",
                         [(37, False, False, False), (37, True, True, True), (64, True, False, False)])
def test_cudnn_padding_keeps_outputs_and_gradients(n, with_bias, with_key_mask, with_mask):
  """cudnn_attention (unpadded primal without masks; cudnn_padded under differentiation or with
  masks: N, M padded to 64, padded keys masked, padded rows dropped; N = 64: no padding, no lengths)
  through jax's XLA dot_product_attention equals the float64 reference in outputs and q, k, v,
  key_bias gradients."""
  from tokax.kernels.attention import cudnn_attention
  from tokax.kernels.reference import attention_reference

  keys = jax.random.split(jax.random.key(11), 6)
  b, h, d = 2, 3, 16
  with jax.enable_x64():
    q, k, v = (jax.random.normal(key, (b, n, h, d), jnp.float64) for key in keys[:3])
    bias = jnp.log(jax.random.randint(keys[3], (b, n), 1, 5).astype(jnp.float64)) if with_bias else None
    key_mask = (jax.random.uniform(keys[4], (b, n)) > 0.3).at[:, 0].set(True) if with_key_mask else None
    mask = jnp.tril(jnp.ones((n, n), bool))[None, None] if with_mask else None
    weights = jax.random.normal(keys[5], (b, n, h, d), jnp.float64)
    padded = lambda q, k, v, bias: cudnn_attention(q, k, v, bias, key_mask, mask, implementation="xla")
    ref = lambda q, k, v, bias: attention_reference(q, k, v, key_bias=bias, key_mask=key_mask, mask=mask)[0]
    np.testing.assert_allclose(padded(q, k, v, bias), ref(q, k, v, bias), atol=2e-6)
    argnums = (0, 1, 2, 3) if with_bias else (0, 1, 2)
    got = jax.grad(lambda *a: jnp.sum(padded(*a) * weights), argnums=argnums)(q, k, v, bias)
    want = jax.grad(lambda *a: jnp.sum(ref(*a) * weights), argnums=argnums)(q, k, v, bias)
    for g, w in zip(got, want):
      np.testing.assert_allclose(g, w, atol=2e-5)


def test_reference_backward_wrapper_gives_the_attention_gradient():
  """with_reference_backward (a kernel's forward, the reference's backward) differentiates like the reference."""
  from tokax.kernels.reference import attention_reference, with_reference_backward

  kq, kk, kv, km, kg = jax.random.split(jax.random.key(7), 5)
  q, k, v = (jax.random.normal(key, (2, 5, 3, 8)) for key in (kq, kk, kv))
  mask = jax.random.bernoulli(km, 0.7, (2, 1, 5, 5)) | jnp.eye(5, dtype=bool)
  weights = jax.random.normal(kg, (2, 5, 3, 8))
  reference = lambda q, k, v, mask: attention_reference(q, k, v, mask=mask)[0]
  doubled = lambda q, k, v, key_bias, key_mask, mask, scores, options: (2.0 * reference(q, k, v, mask), {})
  wrapped = with_reference_backward(doubled)  # forward doubled: the backward must ignore the forward
  for m in (mask, None):
    run = lambda q, k, v: wrapped(q, k, v, None, None, m, (), ())[0]
    loss = lambda fn: (lambda q, k, v: jnp.sum(fn(q, k, v) * weights))
    got = jax.grad(loss(run), argnums=(0, 1, 2))(q, k, v)
    want = jax.grad(loss(lambda q, k, v: reference(q, k, v, m)), argnums=(0, 1, 2))(q, k, v)
    for g, w in zip(got, want):
      np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(run(q, k, v), 2.0 * reference(q, k, v, m), rtol=1e-6)


def test_attention_dropout_equals_the_masked_float64_product():
  """dropout_rate: each probability kept with 1 - rate and scaled by 1 / (1 - rate); scores undropped."""
  keys = jax.random.split(jax.random.key(21), 4)
  b, n, h, d = 2, 9, 2, 8
  q, k, v = (jax.random.normal(key, (b, n, h, d)) for key in keys[:3])
  out, scores = kernels.attention(q, k, v, scores=("cls",), dropout_rate=0.25, dropout_rng=keys[3])
  logits = np.einsum("bqhd,bkhd->bhqk", np.float64(q), np.float64(k)) / np.sqrt(d)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  keep = np.asarray(jax.random.bernoulli(keys[3], 0.75, probs.shape))
  want = np.einsum("bhqk,bkhd->bqhd", np.where(keep, probs / 0.75, 0.0), np.float64(v))
  np.testing.assert_allclose(out, want, rtol=2e-5, atol=2e-5)
  np.testing.assert_allclose(scores["cls"], probs[:, :, 0].mean(1), rtol=2e-5, atol=1e-6)
  assert 0.6 < keep.mean() < 0.9
  with pytest.raises(ValueError, match="needs dropout_rng"):
    kernels.attention(q, k, v, dropout_rate=0.1)
  with pytest.raises(ValueError, match="needs implementation='xla'"):
    kernels.attention(q, k, v, dropout_rate=0.1, dropout_rng=keys[3], implementation="cudnn")
  with pytest.raises(ValueError, match=r"dropout_rate must be in \[0, 1\)"):
    kernels.attention(q, k, v, dropout_rate=1.0, dropout_rng=keys[3])
