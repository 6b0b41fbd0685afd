"""The Mosaic TPU fused attention-and-select kernel, in TPU interpret mode, against float64 numpy."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from tokax import kernels
from tokax.kernels import common as fc
from tokax.kernels.tpu import flash_attention as tpu_flash

try:  # jax's own interpret tests read the race detector's state here
  from jax._src.pallas.mosaic.interpret import interpret_pallas_call as _interpret_state
except ImportError:  # pragma: no cover
  _interpret_state = None


def _case(seed, b, n, m, h, d, masked):
  rng = np.random.default_rng(seed)
  q = rng.standard_normal((b, n, h, d)).astype(np.float32)
  k, v = (rng.standard_normal((b, m, h, d)).astype(np.float32) for _ in range(2))
  bias = (rng.standard_normal((b, m)) * 15).astype(np.float32)  # large: logits span ~+-45
  key_mask = None
  if masked:
    key_mask = rng.uniform(size=(b, m)) > 0.4
    key_mask[:, 0] = True
  return q, k, v, bias, key_mask


def _numpy_forward(q, k, v, bias, key_mask):
  """float64: out (B, N, H, D), probs (B, H, N, M), query weights (B, N)."""
  q, k, v, bias = (np.asarray(a, np.float64) for a in (q, k, v, bias))
  s = np.einsum("bnhd,bmhd->bhnm", q, k) / np.sqrt(q.shape[-1]) + bias[:, None, None, :]
  if key_mask is not None:
    s = np.where(key_mask[:, None, None, :], s, -np.inf)
  p = np.exp(s - s.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  w = np.ones(q.shape[:2])
  if key_mask is not None and q.shape[1] == k.shape[1]:
    w = key_mask.astype(np.float64)
  return np.einsum("bhnm,bmhd->bnhd", p, v), p, w


def _numpy_scores(p, w):
  cls = p[:, :, 0].mean(1)
  received = np.einsum("bhnm,bn->bm", p, w) / (p.shape[1] * w.sum(1, keepdims=True))
  return cls, received


def _numpy_grads(q, k, v, p, w, g_out, g_cls, g_rec):
  """float64 vjp of (out, cls, received) w.r.t. q, k, v, key_bias."""
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  heads = q.shape[2]
  scale = 1 / np.sqrt(q.shape[-1])
  dp = np.einsum("bnhd,bmhd->bhnm", g_out, v)
  dp[:, :, 0, :] += g_cls[:, None, :] / heads
  dp += (w / (heads * w.sum(1, keepdims=True)))[:, None, :, None] * g_rec[:, None, None, :]
  ds = p * (dp - (dp * p).sum(-1, keepdims=True))
  dq = np.einsum("bhnm,bmhd->bnhd", ds, k) * scale
  dk = np.einsum("bhnm,bnhd->bmhd", ds, q) * scale
  dv = np.einsum("bhnm,bnhd->bmhd", p, g_out)
  return dq, dk, dv, ds.sum((1, 2))


# (seed, B, N, M, H, D, masked, blocks): N, M never block multiples; M > 2 block_k gives 3 k tiles,
# N > block_q gives several q tiles (self: 2 of 16, cross: 3 of 8); several batch rows and heads in one.
CASES = {
    "self_masked": (0, 2, 29, 29, 2, 64, True, tpu_flash.BlockSizes(16, 128)),
    "cross_3_k_tiles": (1, 1, 21, 260, 1, 32, True, tpu_flash.BlockSizes(8, 128)),
}


@pytest.fixture(scope="module", params=list(CASES))
def forward_case(request):
  seed, b, n, m, h, d, masked, blocks = CASES[request.param]
  q, k, v, bias, key_mask = _case(seed, b, n, m, h, d, masked)
  params = pltpu.InterpretParams(detect_races=True)
  out, scores = tpu_flash.flash_attention(
      jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), key_bias=jnp.asarray(bias),
      key_mask=None if key_mask is None else jnp.asarray(key_mask), scores=("cls", "received"),
      block_sizes=blocks, interpret=params)
  # the state of the last interpreted kernel (the "received" pass; the forward ran just before it)
  races = None if _interpret_state is None or _interpret_state.races is None else _interpret_state.races.races_found
  return (q, k, v, bias, key_mask), (np.asarray(out), {n_: np.asarray(s) for n_, s in scores.items()}), races


def test_forward_and_scores_match_float64(forward_case):
  (q, k, v, bias, key_mask), (out, scores), races = forward_case
  ref_out, p, w = _numpy_forward(q, k, v, bias, key_mask)
  cls, received = _numpy_scores(p, w)
  np.testing.assert_allclose(out, ref_out, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(scores["cls"], cls, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(scores["received"], received, rtol=1e-5, atol=1e-7)
  if key_mask is not None:
    assert np.all(scores["cls"][~key_mask] == 0) and np.all(scores["received"][~key_mask] == 0)
  assert races is not True, "the TPU interpreter's race detector reported a race"


def test_gradients_match_float64():
  """custom_vjp through the entry point: d(out, cls, received) / d(q, k, v, key_bias); out through the
  Pallas backward kernels, the scores through the reference's vjp."""
  q, k, v, bias, key_mask = _case(3, 1, 19, 19, 2, 16, True)
  rng = np.random.default_rng(4)
  g_out = rng.standard_normal(q.shape)
  g_cls, g_rec = rng.standard_normal((2, 1, 19))

  def loss(q, k, v, bias):
    out, s = kernels.attention(q, k, v, key_bias=bias, key_mask=jnp.asarray(key_mask),
                               scores=("cls", "received"), implementation="pallas",
                               interpret=pltpu.InterpretParams())
    return (jnp.sum(out * g_out.astype(np.float32)) + jnp.sum(s["cls"] * g_cls.astype(np.float32))
            + jnp.sum(s["received"] * g_rec.astype(np.float32)))

  grads = jax.grad(loss, argnums=(0, 1, 2, 3))(*(jnp.asarray(a) for a in (q, k, v, bias)))
  _, p, w = _numpy_forward(q, k, v, bias, key_mask)
  for got, want, name in zip(grads, _numpy_grads(q, k, v, p, w, g_out, g_cls, g_rec), ("q", "k", "v", "key_bias")):
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5, err_msg=name)


def test_bf16_inputs_keep_float32_accumulation():
  q, k, v, bias, _ = _case(5, 1, 20, 20, 2, 64, False)
  qb, kb, vb = (jnp.asarray(a, jnp.bfloat16) for a in (q, k, v))
  out, scores = tpu_flash.flash_attention(qb, kb, vb, key_bias=jnp.asarray(bias), scores=("cls",),
                                          interpret=pltpu.InterpretParams())
  assert out.dtype == jnp.bfloat16 and scores["cls"].dtype == jnp.float32
  ref_out, p, _ = _numpy_forward(*(np.asarray(a, np.float32) for a in (qb, kb, vb)), bias, None)
  np.testing.assert_allclose(np.asarray(out, np.float32), ref_out, atol=3e-2)
  np.testing.assert_allclose(scores["cls"], p[:, :, 0].mean(1), atol=1e-2)


def test_block_sizes_validate_and_shrink():
  with pytest.raises(ValueError, match="block_q must be a positive multiple of 8"):
    tpu_flash.BlockSizes(block_q=12)
  with pytest.raises(ValueError, match="block_k must be a positive multiple of 128"):
    tpu_flash.BlockSizes(block_k=64)
  with pytest.raises(Exception):
    tpu_flash.BlockSizes().block_q = 8  # frozen
  assert tpu_flash.BlockSizes(256, 512).for_lengths(197, 197) == tpu_flash.BlockSizes(200, 256)


def test_pallas_refuses_a_general_mask_and_needs_interpret_on_cpu():
  x = jnp.asarray(np.random.default_rng(0).standard_normal((1, 4, 2, 8)), jnp.float32)
  with pytest.raises(ValueError, match="no general mask"):
    kernels.attention(x, x, x, mask=jnp.ones((1, 1, 4, 4), bool), implementation="pallas")
  if jax.default_backend() == "cpu":
    with pytest.raises(ValueError, match="interpret="):
      kernels.attention(x, x, x, implementation="pallas")


def test_common_pieces_pad_and_finalise():
  """The pure-jnp padding and score finalisation both kernels share."""
  rng = np.random.default_rng(9)
  bias = rng.standard_normal((2, 5)).astype(np.float32)
  mask = np.array([[1, 1, 0, 1, 1], [1, 0, 1, 1, 1]], bool)
  row = np.asarray(fc.key_row(jnp.asarray(bias), jnp.asarray(mask), 2, 5, 8))
  assert row.shape == (2, 1, 8)
  np.testing.assert_array_equal(row[:, 0, :5][mask], bias[mask])
  assert np.all(row[:, 0, :5][~mask] == fc.MASK_VALUE) and np.all(row[:, 0, 5:] == fc.MASK_VALUE)
  w = np.asarray(fc.query_weight(jnp.asarray(mask), 2, 5, 5, 8))
  np.testing.assert_array_equal(w, np.pad(mask.astype(np.float32), ((0, 0), (0, 3))))
  x = rng.standard_normal((2, 5, 3, 4)).astype(np.float32)
  xh = np.asarray(fc.to_heads_major(jnp.asarray(x), 8, 16))
  np.testing.assert_array_equal(xh[:, :, :5, :4], x.transpose(0, 2, 1, 3))
  assert np.all(xh[:, :, 5:] == 0) and np.all(xh[..., 4:] == 0)
  cls_rows, sums = rng.uniform(size=(2, 2, 3, 8)).astype(np.float32)
  out = fc.finalize_scores(("cls", "received"), 5, jnp.asarray(w), jnp.asarray(cls_rows), jnp.asarray(sums))
  np.testing.assert_allclose(out["cls"], cls_rows[:, :, :5].mean(1), rtol=1e-6)
  np.testing.assert_allclose(out["received"], sums[:, :, :5].sum(1) / (3 * w.sum(1, keepdims=True)), rtol=1e-6)
