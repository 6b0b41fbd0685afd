"""The Mosaic TPU kernel's Pallas backward (dQ, dK/dV, d(key_bias)), in TPU interpret mode.

float32 kernels against jax.grad of kernels.reference.attention_reference in float64.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from tokax.kernels import reference
from tokax.kernels.tpu import flash_attention as tpu_flash

try:  # jax's own interpret tests read the race detector's state here
  from jax._src.pallas.mosaic.interpret import interpret_pallas_call as _interpret_state
except ImportError:  # pragma: no cover
  _interpret_state = None


def _case(seed, b, n, m, h, d, bias_kind):
  rng = np.random.default_rng(seed)
  q = rng.standard_normal((b, n, h, d)).astype(np.float32)
  k, v = (rng.standard_normal((b, m, h, d)).astype(np.float32) for _ in range(2))
  if bias_kind == "log_size":  # proportional attention: log of merged-token sizes up to 50
    bias = np.log(rng.integers(1, 51, size=(b, m))).astype(np.float32)
  else:  # large: logits span ~+-45
    bias = (rng.standard_normal((b, m)) * 15).astype(np.float32)
  key_mask = rng.uniform(size=(b, m)) > 0.4
  key_mask[:, 0] = True
  g_out = rng.standard_normal((b, n, h, d)).astype(np.float32)
  return q, k, v, bias, key_mask, g_out


def _loss(out, scores, g_out, g_scores):
  """<g_out, out> + sum over the requested scores of <g_score, score>."""
  total = jnp.sum(out * g_out)
  for name, g in g_scores.items():
    total = total + jnp.sum(scores[name] * g)
  return total


def _float64_grads(q, k, v, bias, key_mask, g_out, g_scores=None):
  g_scores = g_scores or {}
  with jax.enable_x64():
    args = tuple(jnp.asarray(a, jnp.float64) for a in (q, k, v, bias))
    g_scores = {name: jnp.asarray(g, jnp.float64) for name, g in g_scores.items()}
    loss = lambda q, k, v, bias: _loss(*reference.attention_reference(
        q, k, v, key_bias=bias, key_mask=jnp.asarray(key_mask), scores=tuple(g_scores)),
        jnp.asarray(g_out, jnp.float64), g_scores)
    return [np.asarray(x) for x in jax.grad(loss, argnums=(0, 1, 2, 3))(*args)]


# (seed, B, N, M, H, D, bias, blocks, scores, detect_races). N, M never block multiples; the
# backward tiles differ from the forward's (and from each other), so N, M are padded again:
# self-attention 29 -> 32 (forward 2 q tiles of 16, dK/dV 4 q tiles of 8) and -> 48 (dQ 2 of 24) at
# head_dim 64 (padded to 128 lanes), 2 batch rows x 2 heads, with both scores differentiated too (their
# cotangents through the reference's vjp, the output's through the kernels); cross-attention 17
# queries (3 forward q tiles of 8, 2 dQ tiles of 16) x 260 keys -> 384 (forward and dK/dV 3 k tiles
# of 128) and -> 512 (dQ 2 of 256), one head (the interpreter's race detector is slow per grid step).
CASES = {
    "self_d64_log_sizes_scores": (0, 2, 29, 29, 2, 64, "log_size",
                                  tpu_flash.BlockSizes(16, 128, block_q_dkv=8, block_q_dq=24),
                                  ("cls", "received"), False),
    "cross_large_bias": (1, 1, 17, 260, 1, 32, "large",
                         tpu_flash.BlockSizes(8, 128, block_k_dq=256, block_q_dq=16), (), True),
}


@pytest.fixture(scope="module", params=list(CASES))
def backward_case(request):
  seed, b, n, m, h, d, bias_kind, blocks, scores, detect_races = CASES[request.param]
  q, k, v, bias, key_mask, g_out = _case(seed, b, n, m, h, d, bias_kind)
  rng = np.random.default_rng(seed + 100)
  g_scores = {name: rng.standard_normal((b, m)).astype(np.float32) for name in scores}
  params = pltpu.InterpretParams(detect_races=detect_races)

  def loss(q, k, v, bias):
    out, s = tpu_flash.flash_attention(q, k, v, key_bias=bias, key_mask=jnp.asarray(key_mask), scores=scores,
                                       block_sizes=blocks, interpret=params)
    return _loss(out, s, g_out, g_scores)

  grads = jax.grad(loss, argnums=(0, 1, 2, 3))(*(jnp.asarray(a) for a in (q, k, v, bias)))
  grads = [np.asarray(g) for g in grads]
  # the state of the last interpreted kernel (the dQ kernel)
  races = None if _interpret_state is None or _interpret_state.races is None else _interpret_state.races.races_found
  return grads, _float64_grads(q, k, v, bias, key_mask, g_out, g_scores), key_mask, races


@pytest.mark.slow  # interpret mode: 8-13 s per case on the 2-core machine
def test_pallas_backward_matches_float64(backward_case):
  got, want, key_mask, races = backward_case
  for g, w, name in zip(got, want, ("q", "k", "v", "key_bias")):
    assert g.dtype == np.float32, name
    # atol relative to the gradient's scale: with logits spanning +-45 some gradients are ~1e-2
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=2e-4 * np.abs(w).max(), err_msg=name)
  d_k, d_v, d_bias = got[1], got[2], got[3]
  # masked keys get exactly zero gradient
  assert np.all(d_bias[~key_mask] == 0)
  assert np.all(d_k[~key_mask] == 0) and np.all(d_v[~key_mask] == 0)
  assert races is not True, "the TPU interpreter's race detector reported a race"


def _largest_intermediate(jaxpr) -> int:
  """Element count of the largest value any equation (sub-jaxprs included) produces."""
  largest = 0
  for eqn in jaxpr.eqns:
    for var in eqn.outvars:
      largest = max(largest, int(np.prod(getattr(var.aval, "shape", ()))))
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else (param,):
        sub = getattr(sub, "jaxpr", sub)
        if hasattr(sub, "eqns"):
          largest = max(largest, _largest_intermediate(sub))
  return largest


def test_unused_scores_give_no_probability_matrix():
  """Scores used only for selection have symbolically zero cotangents: the backward then runs the
  kernels only; nothing of size B*H*N*M appears (traced, not run). With backward="reference" it does."""
  b, n, h, d = 1, 256, 2, 8  # the kernels' padded (B, H, N, 128) operands stay below B*H*N*N
  x = jnp.asarray(np.random.default_rng(5).standard_normal((b, n, h, d)), jnp.float32)

  def loss(backward, q):
    out, s = tpu_flash.flash_attention(q, x, x, scores=("cls", "received"), interpret=pltpu.InterpretParams(),
                                       backward=backward)
    picked = jnp.argsort(s["received"], axis=-1)[:, :8]  # selection only; "cls" unused
    return jnp.sum(jnp.take_along_axis(out[:, :, 0, 0], picked, axis=1))

  probs_size = b * h * n * n
  pallas = jax.make_jaxpr(jax.grad(lambda q: loss("pallas", q)))(x).jaxpr
  ref = jax.make_jaxpr(jax.grad(lambda q: loss("reference", q)))(x).jaxpr
  assert _largest_intermediate(pallas) < probs_size <= _largest_intermediate(ref)


def test_backward_option_and_block_sizes_validate():
  x = jnp.ones((1, 8, 1, 8), jnp.float32)
  with pytest.raises(ValueError, match="backward must be one of"):
    tpu_flash.flash_attention(x, x, x, backward="xla", interpret=pltpu.InterpretParams())
  with pytest.raises(ValueError, match="block_q_dkv must be a positive multiple of 8"):
    tpu_flash.BlockSizes(block_q_dkv=12)
  with pytest.raises(ValueError, match="block_k_dq must be a positive multiple of 128"):
    tpu_flash.BlockSizes(block_k_dq=64)
  with pytest.raises(ValueError, match="block_q_dq must be a positive multiple of 8"):
    tpu_flash.BlockSizes(block_q_dq=0)
  with pytest.raises(ValueError, match="block_k_dkv must be a positive multiple of 128"):
    tpu_flash.BlockSizes(block_k_dkv=128.0)
  blocks = tpu_flash.BlockSizes(256, 512, block_q_dkv=64, block_k_dq=1024)
  dkv, dq = blocks.backward_blocks(197, 197)
  assert dkv == tpu_flash.BlockSizes(64, 256) and dq == tpu_flash.BlockSizes(200, 256)


@pytest.mark.slow  # interpret mode: 8-12 s on the 2-core machine
def test_bf16_backward_keeps_dtypes_and_float32_accumulation():
  """bf16 q, k, v and float32 key_bias: gradients come back in their inputs' dtypes and match the
  float64 gradient of the bf16-rounded inputs to bf16 accuracy."""
  q, k, v, bias, _, g_out = _case(6, 1, 20, 20, 1, 64, "log_size")
  qb, kb, vb = (jnp.asarray(a, jnp.bfloat16) for a in (q, k, v))

  def loss(q, k, v, bias):
    out, _ = tpu_flash.flash_attention(q, k, v, key_bias=bias, interpret=pltpu.InterpretParams())
    return jnp.sum(out.astype(jnp.float32) * g_out)

  got = jax.grad(loss, argnums=(0, 1, 2, 3))(qb, kb, vb, jnp.asarray(bias))
  assert [g.dtype for g in got] == [jnp.bfloat16] * 3 + [jnp.float32]
  want = _float64_grads(*(np.asarray(a, np.float32) for a in (qb, kb, vb)), bias, np.ones((1, 20), bool), g_out)
  for g, w, name in zip(got, want, ("q", "k", "v", "key_bias")):
    np.testing.assert_allclose(np.asarray(g, np.float32), w, rtol=2e-2, atol=1.5e-2 * np.abs(w).max(), err_msg=name)
