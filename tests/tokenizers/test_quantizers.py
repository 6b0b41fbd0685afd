"""Quantizers: parity with lucidrains/vector-quantize-pytorch and the official FSQ notebook (goldens),
exact index <-> code round trips, straight-through gradients, closed forms, multi-device VQ-EMA, bad input."""
import functools
import json
import math
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokax.tokenizers import (FSQ, LFQ, QUANTIZER_STATE, DiagonalGaussian, VectorQuantizer, VectorQuantizerEMA,
                              histogram_metrics, latent_scale_factor)

TOL = 1e-5


@pytest.fixture(scope="module")
def golden():
  from conftest import TESTS
  meta = json.loads((TESTS / "golden" / "quantizers.json").read_text())
  return meta, dict(np.load(TESTS / "golden" / "quantizers.npz"))


def _apply(module, variables, z, *, train, mutable=(QUANTIZER_STATE,)):
  """jitted module.apply -> ((zq, out), new variables)."""
  fn = jax.jit(lambda v, z: module.apply(v, z, train=train, mutable=list(mutable)))
  return fn(variables, z)


def _ema_state(codebook):
  codebook = jnp.asarray(codebook)
  return {QUANTIZER_STATE: {"codebook": codebook, "cluster_size": jnp.ones(codebook.shape[0]), "embed_sum": codebook,
                            "step": jnp.zeros((), jnp.int32)}}


# -------------------------------------------------------------------------------- goldens


@pytest.mark.parametrize("case", ["ema", "ema_dead"])
def test_vq_ema_step_matches_lucidrains(golden, case):
  meta, g = golden
  cfg, p = meta["vq_ema"][case], f"vq_{case}_"
  thr = cfg["threshold_ema_dead_code"]
  vq = VectorQuantizerEMA(cfg["K"], cfg["D"], commitment_cost=1.0, decay=cfg["decay"], eps=cfg["eps"],
                          dead_code_threshold=thr)
  (zq, out), new = _apply(vq, _ema_state(g[p + "codebook"]), g[p + "x"], train=True)
  state = new[QUANTIZER_STATE]
  np.testing.assert_array_equal(out.codes, g[p + "codes"])
  np.testing.assert_allclose(zq, g[p + "quantized"], atol=TOL, rtol=0)
  np.testing.assert_allclose(out.loss, g[p + "commitment"], atol=TOL, rtol=TOL)
  expired = g[p + "expired"]
  assert expired.any() == (thr > 0) and float(out.metrics["dead_codes"]) == expired.sum()
  live = ~expired
  for ours, theirs in (("codebook", "codebook_after"), ("cluster_size", "cluster_size_after"),
                       ("embed_sum", "embed_sum_after")):
    np.testing.assert_allclose(np.asarray(state[ours])[live], g[p + theirs][live], atol=TOL, rtol=TOL)
  # restarted entries: both sides reseed from batch rows (different random draws), count = threshold
  rows = g[p + "x"].reshape(-1, cfg["D"])
  restarted = np.asarray(state["codebook"])[expired]
  assert all(np.any(np.all(rows == r, axis=-1)) for r in restarted)
  assert len(np.unique(restarted, axis=0)) == len(restarted)  # drawn without replacement
  np.testing.assert_array_equal(np.asarray(state["cluster_size"])[expired], g[p + "cluster_size_after"][expired])
  np.testing.assert_allclose(np.asarray(state["embed_sum"])[expired], restarted * thr, rtol=1e-6)
  assert int(state["step"]) == 1


def _quantize_and_decode_all(module, z):
  """(zq, codes, codes_to_latent(every index)) of a parameter-free quantizer."""
  zq, out = module.apply({}, z, train=True)
  return zq, out.codes, module.apply({}, jnp.arange(module.codebook_size), method="codes_to_latent")


@pytest.mark.parametrize("levels", [[8, 6, 5], [7, 5, 5, 5, 5], [4, 4, 4, 4]])
def test_fsq_matches_lucidrains_and_official_notebook(golden, levels):
  _, g = golden
  p = "fsq_" + "_".join(map(str, levels)) + "_"
  # lucidrains' half_l = (L-1)(1+eps)/2 is eps=-1e-3 here; the notebook (arctanh fix) is eps=1e-3
  for eps, src in ((-1e-3, "vqp"), (1e-3, "nb")):
    fsq = FSQ(levels, eps=eps)
    zq, codes, codebook = jax.jit(functools.partial(_quantize_and_decode_all, fsq))(g[p + "z"])
    np.testing.assert_allclose(zq, g[f"{p}{src}_zhat"], atol=TOL, rtol=0)
    np.testing.assert_allclose(codebook, g[f"{p}{src}_codebook"], atol=1e-7, rtol=0)
    np.testing.assert_allclose(g[f"{p}{src}_codebook"][codes], g[f"{p}{src}_zhat"], atol=1e-7)  # their ordering
    if src == "vqp":
      np.testing.assert_array_equal(codes, g[p + "vqp_codes"])
    else:  # the notebook's codes_to_indexes truncates instead of rounding: where its index does not
      # decode back to its own zhat it is one too small; everywhere else it equals ours
      ok = g[p + "nb_roundtrip_ok"]
      np.testing.assert_array_equal(np.asarray(codes)[ok], g[p + "nb_codes"][ok])
      np.testing.assert_array_equal(np.asarray(codes)[~ok], g[p + "nb_codes"][~ok] + 1)


@pytest.mark.parametrize("case", ["soft", "factorised", "hard"])
def test_lfq_matches_lucidrains(golden, case):
  meta, g = golden
  cfg, p = meta["lfq"][case], f"lfq_{case}_"
  lfq = LFQ(cfg["D"], num_codebooks=cfg["num_codebooks"], codebook_scale=cfg["codebook_scale"],
            commitment_weight=cfg["commitment_loss_weight"], entropy_weight=cfg["entropy_loss_weight"],
            diversity_gamma=cfg["diversity_gamma"], temperature=1.0 / cfg["inv_temperature"])
  (zq, out), _ = _apply(lfq, {}, g[p + "x"], train=True)
  np.testing.assert_allclose(zq, g[p + "quantized"], atol=TOL, rtol=0)
  np.testing.assert_array_equal(out.codes, g[p + "codes"])
  for ours, theirs in (("per_sample_entropy", "per_sample_entropy"), ("codebook_entropy", "codebook_entropy"),
                       ("commitment", "commitment")):
    np.testing.assert_allclose(out.metrics[ours], g[p + theirs], atol=TOL, rtol=TOL)
  np.testing.assert_allclose(out.loss, g[p + "loss"], atol=TOL, rtol=TOL)
  np.testing.assert_array_equal(lfq.implicit_codebook(), g[p + "codebook"])


# ---------------------------------------------------------------------- exact round trips


@pytest.mark.parametrize("levels", [[8, 6, 5], [3, 4, 2, 7]])
def test_fsq_index_code_round_trip_is_exact_for_every_index(levels):
  fsq = FSQ(levels, eps=-1e-3)  # eps < 0 admits a level of 2
  idx = jnp.arange(fsq.codebook_size, dtype=jnp.int32)
  latent = fsq.apply({}, idx, method="codes_to_latent")
  assert latent.shape == (fsq.codebook_size, len(levels)) and fsq.codebook_size == math.prod(levels)
  assert len(np.unique(np.asarray(latent), axis=0)) == fsq.codebook_size
  np.testing.assert_array_equal(fsq.apply({}, latent, method="latent_to_codes"), idx)
  # the quantizer's own codes on random inputs decode to its output
  z = 2.0 * np.random.default_rng(0).standard_normal((4, 50, len(levels))).astype(np.float32)
  (zq, out), _ = _apply(fsq, {}, z, train=False)
  np.testing.assert_array_equal(fsq.apply({}, out.codes, method="codes_to_latent"), zq)


@pytest.mark.parametrize("dim,num_codebooks", [(7, 1), (8, 2)])
def test_lfq_index_code_round_trip_is_exact_for_every_index(dim, num_codebooks):
  lfq = LFQ(dim, num_codebooks=num_codebooks, codebook_scale=0.5)
  k = lfq.codebook_size
  idx = np.arange(k, dtype=np.int32)
  codes = idx if num_codebooks == 1 else np.stack([idx, idx[::-1]], axis=-1)
  latent = lfq.apply({}, codes, method="codes_to_latent")
  assert latent.shape == (k, dim) and set(np.unique(latent)) == {-0.5, 0.5}
  assert len(np.unique(np.asarray(latent), axis=0)) == k
  np.testing.assert_array_equal(lfq.apply({}, latent, method="latent_to_codes"), codes)
  (zq, out), _ = _apply(lfq, {}, latent, train=False)  # quantizing a code gives it back
  np.testing.assert_array_equal(out.codes, codes)
  np.testing.assert_array_equal(zq, latent)
  assert lfq.bits_per_token == dim and k == 2**(dim // num_codebooks)


# -------------------------------------------------------------------- gradients, closed forms


def _grad_of_weighted_sum(module, variables, z, w, **kw):
  def f(z):
    out = module.apply(variables, z, train=True, mutable=[QUANTIZER_STATE], **kw)
    return jnp.sum(out[0][0] * w)
  return jax.jit(jax.grad(f))(z)


def test_straight_through_gradient_is_identity():
  rng = np.random.default_rng(1)
  z = rng.standard_normal((2, 3, 5, 6)).astype(np.float32)
  w = rng.standard_normal(z.shape).astype(np.float32)
  vq = VectorQuantizer(16, 6)
  ema = VectorQuantizerEMA(16, 6, dead_code_threshold=1.0)
  lfq = LFQ(6, num_codebooks=2)
  for module in (vq, ema, lfq):
    variables = jax.jit(lambda z, m=module: m.init(jax.random.key(0), z, train=False))(z)
    np.testing.assert_array_equal(_grad_of_weighted_sum(module, variables, z, w), w)


def test_fsq_gradient_passes_the_bound():
  levels, eps = [8, 5, 4], 1e-3
  z = np.random.default_rng(2).standard_normal((3, 10, 3)).astype(np.float32)
  w = np.random.default_rng(3).standard_normal(z.shape).astype(np.float32)
  grad = _grad_of_weighted_sum(FSQ(levels, eps=eps), {}, z, w)
  lv = np.asarray(levels, np.float64)
  half_l = (lv - 1) * (1 - eps) / 2
  shift = np.arctanh(np.where(lv % 2 == 0, 0.5, 0.0) / half_l)
  expected = w * (1 - np.tanh(z + shift)**2) * half_l / (lv // 2)
  np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-7)


def test_vq_codes_and_loss_equal_float64_closed_form():
  rng = np.random.default_rng(4)
  z = rng.standard_normal((2, 20, 5)).astype(np.float32)
  codebook = rng.standard_normal((12, 5)).astype(np.float32)
  for l2 in (False, True):
    vq = VectorQuantizer(12, 5, commitment_cost=0.25, l2_normalize=l2)
    (zq, out), _ = _apply(vq, {"params": {"codebook": codebook}}, z, train=True, mutable=())
    x, e = z.reshape(-1, 5).astype(np.float64), codebook.astype(np.float64)
    if l2:
      x, e = x / np.linalg.norm(x, axis=-1, keepdims=True), e / np.linalg.norm(e, axis=-1, keepdims=True)
    codes = ((x[:, None] - e[None])**2).sum(-1).argmin(-1)
    np.testing.assert_array_equal(out.codes.reshape(-1), codes)
    mse = ((e[codes] - x)**2).mean()
    np.testing.assert_allclose(out.loss, 1.25 * mse, rtol=1e-5)
    np.testing.assert_allclose(zq.reshape(-1, 5), e[codes], atol=1e-6)
    counts = np.bincount(codes, minlength=12)
    p = counts[counts > 0] / counts.sum()
    np.testing.assert_allclose(out.metrics["perplexity"], np.exp(-(p * np.log(p)).sum()), rtol=1e-5)
    np.testing.assert_allclose(out.metrics["usage"], (counts > 0).mean(), rtol=1e-6)


def test_vq_codebook_gets_the_codebook_loss_gradient():
  rng = np.random.default_rng(5)
  z = rng.standard_normal((1, 16, 3)).astype(np.float32)
  codebook = rng.standard_normal((6, 3)).astype(np.float32)
  vq = VectorQuantizer(6, 3, commitment_cost=0.25)
  grad = jax.jit(jax.grad(lambda p: vq.apply({"params": p}, z, train=True)[1].loss))({"codebook": codebook})
  x = z.reshape(-1, 3).astype(np.float64)
  codes = ((x[:, None] - codebook[None])**2).sum(-1).argmin(-1)
  expected = np.zeros((6, 3))
  np.add.at(expected, codes, 2 * (codebook[codes] - x) / x.size)  # d mean((e_c - sg(z))^2) / de
  np.testing.assert_allclose(grad["codebook"], expected, rtol=1e-5, atol=1e-7)


def test_dead_code_restart_replaces_exactly_the_dead_entries():
  rng = np.random.default_rng(6)
  k, d, decay, thr, eps = 12, 3, 0.5, 0.75, 1e-5
  z = rng.standard_normal((4, 9, d)).astype(np.float32)
  codebook = rng.standard_normal((k, d)).astype(np.float32)
  codebook[::3] += 20.0  # entries 0, 3, 6, 9 are never nearest
  ema = VectorQuantizerEMA(k, d, decay=decay, eps=eps, dead_code_threshold=thr, seed=7)
  (_, out), new = _apply(ema, _ema_state(codebook), z, train=True)
  state = {name: np.asarray(v) for name, v in new[QUANTIZER_STATE].items()}
  # float64 closed form of the EMA step
  x = z.reshape(-1, d).astype(np.float64)
  onehot = np.eye(k)[np.asarray(out.codes).reshape(-1)]
  size = 1.0 + (1 - decay) * (onehot.sum(0) - 1.0)
  embed_sum = codebook + (1 - decay) * (onehot.T @ x - codebook)
  smoothed = (size + eps) / (size.sum() + k * eps) * size.sum()
  dead = size < thr
  assert dead[::3].all() and dead.sum() >= 4 and not dead.all()
  assert float(out.metrics["dead_codes"]) == dead.sum()
  np.testing.assert_allclose(state["codebook"][~dead], (embed_sum / smoothed[:, None])[~dead], rtol=1e-5)
  np.testing.assert_allclose(state["cluster_size"][~dead], size[~dead], rtol=1e-6)
  np.testing.assert_allclose(state["embed_sum"][~dead], embed_sum[~dead], rtol=1e-5, atol=1e-6)
  restarted = state["codebook"][dead]
  source = [np.flatnonzero(np.all(z.reshape(-1, d) == r, axis=-1)) for r in restarted]
  assert all(len(s) == 1 for s in source) and len({int(s[0]) for s in source}) == dead.sum()
  np.testing.assert_array_equal(state["cluster_size"][dead], thr)
  np.testing.assert_allclose(state["embed_sum"][dead], restarted * thr, rtol=1e-7)
  # eval mode and a zero threshold leave the state alone / restart nothing
  (_, _), same = _apply(ema, _ema_state(codebook), z, train=False)
  np.testing.assert_array_equal(same[QUANTIZER_STATE]["codebook"], codebook)


def test_vq_ema_on_8_devices_equals_one_device():
  """One subprocess: XLA_FLAGS must give 8 host devices before jax is imported."""
  script = pathlib.Path(__file__).with_name("sharded_quantizers.py")
  repo = pathlib.Path(__file__).resolve().parents[2]
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8",
             PYTHONPATH=os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")]))
  run = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-3000:]
  report = json.loads(run.stdout.strip().splitlines()[-1])
  assert report["vq_ema_codes_equal"] and report["lfq_codes_equal"], report
  assert report["vq_ema_max_diff"] < 1e-5 and report["lfq_max_diff"] < 1e-5, report
  assert report["vq_ema_dead_codes_per_step"][0] > 0 and report["vq_ema_steps"] == 3, report  # restarts exercised


def test_bfloat16_inputs_quantize_in_float32_and_come_back_in_bfloat16():
  z32 = np.random.default_rng(8).standard_normal((2, 4, 4, 6)).astype(np.float32)
  z16 = jnp.asarray(z32, jnp.bfloat16)
  for module in (FSQ([5, 5, 4, 4, 3, 3]), LFQ(6, num_codebooks=3)):
    (zq16, out16), _ = _apply(module, {}, z16, train=True)
    (zq32, out32), _ = _apply(module, {}, jnp.asarray(z16, jnp.float32), train=True)
    assert zq16.dtype == jnp.bfloat16 and out16.loss.dtype == jnp.float32 and out16.codes.dtype == jnp.int32
    np.testing.assert_array_equal(out16.codes, out32.codes)
    np.testing.assert_array_equal(zq16, zq32.astype(jnp.bfloat16))
    np.testing.assert_allclose(out16.loss, out32.loss, rtol=1e-6)


def test_histogram_metrics_closed_form():
  m = jax.jit(histogram_metrics)(np.asarray([[3, 3, 0, 0], [1, 1, 1, 1]]))
  np.testing.assert_allclose(m["perplexity"], (2.0 + 4.0) / 2, rtol=1e-6)
  np.testing.assert_allclose(m["usage"], (0.5 + 1.0) / 2, rtol=1e-6)


def test_diagonal_gaussian_sample_mode_and_kl():
  rng = np.random.default_rng(9)
  z = rng.standard_normal((2, 3, 2, 2, 8)).astype(np.float32)
  z[..., 4:] *= 0.5
  post = DiagonalGaussian(kl_weight=1e-3, scale_factor=0.25)

  def run(z):
    sample = jax.vmap(lambda z: post.apply({}, z, train=True, rngs={"sample": jax.random.key(4)}))(z)
    return sample, post.apply({}, z[0], train=False)

  (latent, out), (mode, out_eval) = jax.jit(run)(z)
  mean, logvar = z[..., :4].astype(np.float64), z[..., 4:].astype(np.float64)
  noise = (latent - mean) / np.exp(0.5 * logvar)  # the same key gives the same noise whatever the moments
  np.testing.assert_allclose(noise[0], noise[1], rtol=1e-4, atol=1e-5)
  assert np.abs(noise[0]).max() > 0.1 and not np.allclose(latent[0], mean[0])
  np.testing.assert_array_equal(mode, z[0, ..., :4])
  kl = 0.5 * (mean**2 + np.exp(logvar) - 1 - logvar).reshape(2, 3, -1).sum(-1).mean(-1)
  np.testing.assert_allclose(out.metrics["kl"], kl, rtol=1e-5)
  np.testing.assert_allclose(out.loss, 1e-3 * kl, rtol=1e-5)
  np.testing.assert_allclose(out_eval.loss, out.loss[0], rtol=1e-6)
  assert out.codes is None and out_eval.codes is None
  assert post.scale(2.0) == 0.5 and post.unscale(0.5) == 2.0
  samples = 3.0 * rng.standard_normal(10_000)
  assert abs(latent_scale_factor(samples) - 1 / samples.std()) < 1e-12


# ------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("make,field", [
    (lambda: FSQ([8, 1, 5]), "levels"),  # a level of 1 forms no codebook
    (lambda: FSQ([]), "levels"),
    (lambda: FSQ([2, 5]), "levels"),  # arctanh shift infinite with eps >= 0
    (lambda: FSQ([50_000, 50_000]), "levels"),  # 2.5e9 codes overflow int32 indices
    (lambda: FSQ([8, 5], eps=0.2), "eps"),
    (lambda: VectorQuantizer(2**31 + 1, 4), "codebook_size"),
    (lambda: VectorQuantizerEMA(1, 4), "codebook_size"),
    (lambda: VectorQuantizerEMA(16, 4, decay=1.0), "decay"),
    (lambda: LFQ(40), "num_codebooks"),  # 2**40 codes per codebook
    (lambda: LFQ(6, num_codebooks=4), "num_codebooks"),
    (lambda: DiagonalGaussian(scale_factor=0.0), "scale_factor"),
])
def test_bad_configuration_is_a_clear_error(make, field):
  with pytest.raises(ValueError, match=field):
    make()


@pytest.mark.parametrize("module,field", [(FSQ([8, 5, 5]), "levels"), (LFQ(5), "dim"), (VectorQuantizer(8, 5), "dim"),
                                          (VectorQuantizerEMA(8, 5), "dim")])
def test_latent_channels_must_match(module, field):
  z = jnp.ones((2, 3, 3, 4))
  with pytest.raises(ValueError, match=rf"{field}: z has D = 4 channels"):
    jax.eval_shape(lambda: module.init(jax.random.key(0), z, train=False))


def test_diagonal_gaussian_needs_an_even_channel_count():
  with pytest.raises(ValueError, match="2C"):
    jax.eval_shape(lambda: DiagonalGaussian().apply({}, jnp.ones((2, 3)), train=False))
