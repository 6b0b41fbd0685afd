"""DToMe equals the official MikeWangWZHL/dymu code (goldens tests/golden/dtome_*), plus its edge cases.

Goldens (scripts/goldens/make_dtome_goldens.py): the official timm-based DyMU ViT (tome.py
ToMEVisionTransformer, Ti/16 size, with and without a class token) and the official open_clip
block stack (transformer.py ToMEOpenAITransformer, the CLIP path) on random weights: thresholds
calibrated by the official batch-level merge over 2 batches of 4, then per-input inference (B == 1).
Here the calibration runs tokax's ViT with DToMeCalibration + calibrate_thresholds, and inference
runs the 3 inference inputs as ONE batch with DToMe (per-image counts differ inside the batch).
"""
import functools
import json
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from golden.weights import random_state_dict
from tokax.interop.timm import convert_state_dict, export_state_dict
from tokax.models import ViT
from tokax.models.vit import Attention, Block
from tokax.reduction import ToMe, Tokens, apply_plan, bipartite_matching_plan, source_matrix
from tokax.reduction.dtome import (DToMe, DToMeCalibration, ThresholdState, batch_level_plan, calibrate_thresholds,
                                   r_schedule, threshold_plan)
from vit_testing import apply, random_params, traces

NUM_BATCHES, BATCH = 2, 4
VIT_GOLDENS = {"dtome_vit_ti_cls": dict(class_token=True, pool="cls"),
               "dtome_vit_ti_gap": dict(class_token=False, pool="gap")}


def _relative(a, b):
  return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


def _load(name):
  from conftest import TESTS
  meta = json.loads((TESTS / "golden" / f"{name}.json").read_text())
  return meta, dict(np.load(TESTS / "golden" / f"{name}.npz"))


def _images(u8):
  return (u8.astype(np.float32) / np.float32(255.0) - np.float32(0.5)) / np.float32(0.25)


def _settings(meta):
  return {s["tag"]: s for s in meta["settings"]}


def _max_r(setting):
  caps = setting["max_r_per_layer"]
  return None if all(c is None for c in caps) else tuple(caps)


# ---------------------------------------------------------------------------------------------
# Running a model and reading each block's keys and masks: the metrics calibrate_thresholds needs.


def _is_block_call(module, method):
  return method == "__call__" and isinstance(module, (Block, Attention))


def _per_layer(inter, depth):
  """keys (L, B, N, Dh), the mask entering each block (None before any merge), the mask after it."""
  keys, masks_out = [], []
  for i in range(depth):
    block = inter[f"blocks_{i}"]
    masks_out.append(block["__call__"][0].mask)
    keys.append(block["attn"]["__call__"][0][1]["keys"])
  return keys, [None] + masks_out[:-1], masks_out


@functools.lru_cache(maxsize=None)
def _run(model, depth):
  """jit(apply) returning (output, intermediates, keys, masks_in, counts (B, L))."""

  def forward(params, x):
    (out, inter), state = model.apply(params, x, return_intermediates=True, capture_intermediates=_is_block_call,
                                      mutable=["intermediates"])
    keys, masks_in, masks_out = _per_layer(state["intermediates"], depth)
    batch, n = inter["size"].shape
    counts = jnp.stack([jnp.full((batch,), n) if m is None else m.sum(-1) for m in masks_out], axis=1)
    return out, inter, keys, masks_in, counts

  return jax.jit(forward)


_calibrate = jax.jit(calibrate_thresholds, static_argnames=("r", "has_cls", "max_r"))


def _valid_rows_equal(ours_source, golden_pos, counts):
  for b, n in enumerate(counts):
    np.testing.assert_array_equal(np.asarray(ours_source)[b, :n], golden_pos[b, :n])
    assert not golden_pos[b, n:].any()


# ---------------------------------------------------------------------------------------------
# Model level: the official timm-based DyMU ViT.


@pytest.fixture(scope="module")
def vit_golden(request):
  name = request.param
  meta, data = _load(name)
  model = ViT(variant="Ti/16", num_classes=1000, **VIT_GOLDENS[name])
  params = random_params(model, meta["weight_seed"])
  assert sorted(export_state_dict(params)) == meta["weight_names"]
  return name, meta, data, model, params


VIT_CASES = [(name, s["tag"]) for name in sorted(VIT_GOLDENS) for s in _load(name)[0]["settings"]]


def test_r_schedule_equals_official():
  for name in list(VIT_GOLDENS) + ["dtome_clip_blocks"]:
    meta, _ = _load(name)
    for s in meta["settings"]:
      cfg = s["config"]
      assert r_schedule(len(s["r_per_layer"]), cfg["r_total"], cfg["r_schedule"]) == tuple(s["r_per_layer"])
  assert r_schedule(24, 504) == (21,) * 24  # ViT-L-14-336-tome-72out
  assert r_schedule(12, 13) == (2,) + (1,) * 11
  assert r_schedule(12, 120, "reverse_linear") == r_schedule(12, 120, "linear")[::-1]


@pytest.mark.slow
@pytest.mark.parametrize("vit_golden,tag", VIT_CASES, indirect=["vit_golden"])
def test_vit_calibration_equals_official(vit_golden, tag):
  name, meta, data, model, params = vit_golden
  setting = _settings(meta)[tag]
  rs, max_r = tuple(setting["r_per_layer"]), _max_r(setting)
  images = _images(data["images"])
  calibrating = model.clone(reduction=DToMeCalibration(r=rs, max_r=max_r))
  forward = _run(calibrating, 12)
  state = ThresholdState.create(12)  # = calibrate_thresholds' start from None, one compile for both batches
  for k in range(NUM_BATCHES):
    out, inter, keys, masks_in, counts = forward(params, images[k * BATCH:(k + 1) * BATCH])
    np.testing.assert_array_equal(np.asarray(counts), data[f"{tag}_calib_ntoks"][k])
    final = data[f"{tag}_calib_ntoks"][k][:, -1]
    _valid_rows_equal(source_matrix(inter["assign"], 197 if model.class_token else 196),
                      data[f"{tag}_calib_pos"][k], final)
    if model.pool == "cls":
      assert _relative(out, data[f"{tag}_calib_out"][k]) <= 1e-5
    else:
      for b, n in enumerate(final):
        assert _relative(inter["features"][b, :n], data[f"{tag}_calib_out"][k][b, :n]) <= 1e-5
    state = _calibrate(state, keys, masks_in, r=rs, max_r=max_r, has_cls=model.class_token)
    official = data[f"{tag}_thresholds"][k]
    calibrated = np.asarray(state.counts) > 0
    # official layers with r = 0 keep the buffer's initial 1.0 ("no merging"); tokax keeps count 0
    np.testing.assert_array_equal(calibrated, np.asarray(rs) > 0)
    np.testing.assert_array_equal(np.asarray(state.counts)[calibrated], k + 1)
    np.testing.assert_allclose(np.asarray(state.thresholds)[calibrated], official[calibrated], rtol=0, atol=1e-6)
  # and the thresholds tokax calibrated give the official per-image counts at inference
  dtome = DToMe.from_state(state, max_r=max_r)
  _, _, _, _, counts = _run(model.clone(reduction=dtome), 12)(params, images[NUM_BATCHES * BATCH:])
  np.testing.assert_array_equal(np.asarray(counts), data[f"{tag}_infer_ntoks"])


def _official_dtome(setting, data, tag):
  thresholds = data[f"{tag}_thresholds"][-1]
  return DToMe(thresholds=tuple(float(t) if r > 0 else math.inf for t, r in zip(thresholds, setting["r_per_layer"])),
               max_r=_max_r(setting))


@pytest.mark.parametrize("vit_golden,tag", VIT_CASES, indirect=["vit_golden"])
def test_vit_inference_equals_official(vit_golden, tag):
  name, meta, data, model, params = vit_golden
  setting = _settings(meta)[tag]
  images = _images(data["images"])[NUM_BATCHES * BATCH:]
  reduced = model.clone(reduction=_official_dtome(setting, data, tag))
  out, inter, _, _, counts = _run(reduced, 12)(params, images)
  golden_counts = data[f"{tag}_infer_ntoks"]
  np.testing.assert_array_equal(np.asarray(counts), golden_counts)
  assert len(set(golden_counts[:, -1].tolist())) == len(golden_counts)  # one batch, different counts per image
  final = golden_counts[:, -1]
  n0 = 197 if model.class_token else 196
  _valid_rows_equal(source_matrix(inter["assign"], n0), data[f"{tag}_infer_pos"], final)
  np.testing.assert_array_equal(np.asarray(inter["size"]), data[f"{tag}_infer_size"])
  np.testing.assert_array_equal(np.asarray(inter["mask"]), np.arange(n0)[None] < final[:, None])
  if model.pool == "cls":
    assert _relative(out, data[f"{tag}_infer_out"]) <= 1e-5
  else:
    for b, n in enumerate(final):
      assert _relative(inter["features"][b, :n], data[f"{tag}_infer_out"][b, :n]) <= 1e-5
    # gap pooling sees only the valid tokens: the size-weighted mean of the OFFICIAL features
    feats, size = data[f"{tag}_infer_out"].astype(np.float64), data[f"{tag}_infer_size"].astype(np.float64)
    pooled = np.einsum("bnc,bn->bc", feats, size) / size.sum(-1, keepdims=True)
    p = params["params"]
    normed = (pooled - pooled.mean(-1, keepdims=True)) / np.sqrt(pooled.var(-1, keepdims=True) + 1e-6)
    normed = normed * p["fc_norm"]["scale"] + p["fc_norm"]["bias"]
    expected = normed @ p["head"]["kernel"] + p["head"]["bias"]
    assert _relative(out, expected) <= 1e-5


# ---------------------------------------------------------------------------------------------
# Block level: the official open_clip block stack (CLIP path, nn.MultiheadAttention).


class _Stack(nn.Module):
  reduction: object
  depth: int = 6
  num_heads: int = 3
  mlp_dim: int = 384

  @nn.compact
  def __call__(self, x):
    tokens = Tokens.create(x, has_cls=True)
    for i in range(self.depth):
      tokens = Block(num_heads=self.num_heads, mlp_dim=self.mlp_dim, layer=i, depth=self.depth,
                     reduction=self.reduction, prop_attn_active=i > 0, name=f"blocks_{i}")(tokens)
    return tokens


@functools.lru_cache(maxsize=None)
def _stack_forward(reduction):
  def forward(p, x):
    tokens, state = _Stack(reduction).apply(p, x, capture_intermediates=_is_block_call, mutable=["intermediates"])
    keys, masks_in, masks_out = _per_layer(state["intermediates"], 6)
    return tokens, keys, masks_in, jnp.stack([m.sum(-1) for m in masks_out], axis=1)

  return jax.jit(forward)


def _run_stack(reduction, params, x):
  return _stack_forward(reduction)(params, x)


def test_openclip_blocks_equal_official():
  meta, data = _load("dtome_clip_blocks")
  shapes = {k: tuple(v) for k, v in meta["weight_shapes"].items()}
  params = convert_state_dict(random_state_dict(shapes, meta["weight_seed"]))
  (setting,) = meta["settings"]
  tag, rs = setting["tag"], tuple(setting["r_per_layer"])
  tokens_in = data["tokens"]
  n0 = tokens_in.shape[1]
  state = ThresholdState.create(len(rs))
  for k in range(NUM_BATCHES):
    tokens, keys, masks_in, counts = _run_stack(DToMeCalibration(r=rs), params, tokens_in[k * BATCH:(k + 1) * BATCH])
    np.testing.assert_array_equal(np.asarray(counts), data[f"{tag}_calib_ntoks"][k])
    final = data[f"{tag}_calib_ntoks"][k][:, -1]
    _valid_rows_equal(source_matrix(tokens.assign, n0), data[f"{tag}_calib_pos"][k], final)
    for b, n in enumerate(final):
      assert _relative(tokens.x[b, :n], data[f"{tag}_calib_out"][k][b, :n]) <= 1e-5
    state = _calibrate(state, keys, masks_in, r=rs, has_cls=True)
    np.testing.assert_allclose(np.asarray(state.thresholds), data[f"{tag}_thresholds"][k], rtol=0, atol=1e-6)
  for dtome in (_official_dtome(setting, data, tag), DToMe.from_state(state)):
    tokens, _, _, counts = _run_stack(dtome, params, tokens_in[NUM_BATCHES * BATCH:])
    np.testing.assert_array_equal(np.asarray(counts), data[f"{tag}_infer_ntoks"])
    final = data[f"{tag}_infer_ntoks"][:, -1]
    _valid_rows_equal(source_matrix(tokens.assign, n0), data[f"{tag}_infer_pos"], final)
    np.testing.assert_array_equal(np.asarray(tokens.size), data[f"{tag}_infer_size"])
    for b, n in enumerate(final):
      assert _relative(tokens.x[b, :n], data[f"{tag}_infer_out"][b, :n]) <= 1e-5


# ---------------------------------------------------------------------------------------------
# Closed forms and edge cases.


def _tiny(reduction=None, **kw):
  return ViT(variant="Ti/16", depth=3, num_classes=10, image_size=64, reduction=reduction, **kw)


@pytest.fixture(scope="module")
def tiny():
  """A depth-3 ViT with a class token on 64 x 64 images (17 tokens), with random weights."""
  model = _tiny()
  return model, random_params(model, seed=1)


@functools.partial(jax.jit, static_argnames=("has_cls", "max_r"))
def _threshold_merge(metric, mask, x, theta, *, has_cls, max_r=None):
  """threshold_plan applied to features x (B, N, C): (tokens, r)."""
  plan, r = threshold_plan(metric, mask, theta, has_cls=has_cls, max_r=max_r)
  mask = jnp.ones(x.shape[:2], bool) if mask is None else mask
  return apply_plan(Tokens.create(x, has_cls=has_cls).replace(mask=mask), plan), r


@functools.partial(jax.jit, static_argnames=("r", "max_r"))
def _batch_merge(metric, *, r, max_r=None):
  """batch_level_plan (class token) applied to the metric itself: (tokens, threshold, merged)."""
  plan, theta, merged = batch_level_plan(metric, None, r, has_cls=True, max_r=max_r)
  tokens = Tokens.create(metric).replace(mask=jnp.ones(metric.shape[:2], bool))
  return apply_plan(tokens, plan), theta, merged


def _threshold_reference(metric, theta, has_cls, max_r=None):
  """float64 numpy: per-image merge count and merged groups (as sets of input indices)."""
  out = []
  for m in metric.astype(np.float64):
    m = m / np.maximum(np.linalg.norm(m, axis=-1, keepdims=True), 1e-300)
    s = m[0::2] @ m[1::2].T
    if has_cls:
      s[0] = -np.inf
    node_max, node_idx = s.max(-1), s.argmax(-1)
    r = min(int((node_max > theta).sum()), (m.shape[0] - int(has_cls)) // 2)
    r = r if max_r is None else min(r, max_r)
    src = np.argsort(-node_max, kind="stable")[:r]
    groups = {2 * j + 1: {2 * j + 1} for j in range(s.shape[1])}
    for a in src:
      groups[2 * node_idx[a] + 1].add(2 * a)
    kept = [{2 * a} for a in range(s.shape[0]) if a not in set(src)]
    out.append((r, sorted(map(sorted, kept + list(groups.values())))))
  return out


@pytest.mark.parametrize("has_cls", [True, False])
@pytest.mark.parametrize("theta", [0.2, 0.5, -math.inf, math.inf])
def test_threshold_plan_matches_float64_reference(has_cls, theta):
  rng = np.random.default_rng(3)
  metric = rng.standard_normal((3, 25, 16)).astype(np.float32)
  metric[1, 1::4] = metric[1, 2::4][:metric[1, 1::4].shape[0]] + 0.1  # a redundant image
  metric[2] = rng.standard_normal(16) + 0.05 * metric[2]  # nearly constant image
  for max_r in (None, 3):
    x = jnp.asarray(rng.standard_normal((3, 25, 4)), jnp.float32)
    out, r = _threshold_merge(jnp.asarray(metric), None, x, theta, has_cls=has_cls, max_r=max_r)
    for b, (r_ref, groups) in enumerate(_threshold_reference(metric, theta, has_cls, max_r)):
      assert int(r[b]) == r_ref
      n = 25 - r_ref
      assert int(out.mask[b].sum()) == n and bool(out.mask[b, :n].all())
      src = np.asarray(source_matrix(out.assign, 25))[b, :n]
      assert sorted(sorted(np.flatnonzero(row).tolist()) for row in src) == groups
      if has_cls:
        assert src[0, 0] == 1 and src[0].sum() == 1


@functools.partial(jax.jit, static_argnames=("has_cls", "has_dist"))
def _minus_infinity_and_tome(metric, *, has_cls, has_dist):
  return (threshold_plan(metric, None, -math.inf, has_cls=has_cls, has_dist=has_dist),
          bipartite_matching_plan(metric, 1000, has_cls=has_cls, has_dist=has_dist))


@pytest.mark.parametrize("has_cls,has_dist", [(True, False), (False, False), (True, True)])
@pytest.mark.parametrize("n", [17, 18])
def test_minus_infinity_threshold_is_tomes_plan(has_cls, has_dist, n):
  """theta = -inf: every image merges ToMe's clip (N - P) // 2, in ToMe's exact output layout."""
  metric = jnp.asarray(np.random.default_rng(n).standard_normal((2, n, 8)), jnp.float32)
  (plan, r), tome = _minus_infinity_and_tome(metric, has_cls=has_cls, has_dist=has_dist)
  assert r.tolist() == [n - tome.num_out] * 2
  np.testing.assert_array_equal(np.asarray(plan.dst), np.asarray(tome.dst))


def test_masked_tokens_take_no_part_and_padding_stays_last():
  rng = np.random.default_rng(4)
  metric = jnp.asarray(rng.standard_normal((2, 20, 8)), jnp.float32)
  valid = jnp.asarray(np.arange(20)[None] < np.array([[13], [20]]))
  x = jnp.asarray(rng.standard_normal((2, 20, 4)), jnp.float32)
  out, r = _threshold_merge(metric, valid, x, -math.inf, has_cls=True)
  # the masked tail: no edges from or to it; the 13-token image merges (13 - 1) // 2 = 6
  assert r.tolist() == [6, 9]
  assert out.mask.sum(-1).tolist() == [7, 11]
  np.testing.assert_array_equal(np.asarray(out.mask), np.arange(20)[None] < np.array([[7], [11]]))
  assert np.all(np.asarray(out.size)[~np.asarray(out.mask)] == 0)
  # image 0's valid tokens equal the same merge on the 13-token prefix alone
  ref, _ = _threshold_merge(metric[:1, :13], None, x[:1, :13], -math.inf, has_cls=True)
  np.testing.assert_allclose(np.asarray(out.x[0, :7]), np.asarray(ref.x[0, :7]), rtol=1e-6)


def test_batch_level_plan_ranks_edges_over_the_batch():
  rng = np.random.default_rng(5)
  metric = rng.standard_normal((3, 21, 8)).astype(np.float32)
  metric[0] = metric[0, :1] + 0.01 * metric[0]  # image 0 is nearly constant: it takes most merges
  out, theta, merged = _batch_merge(jnp.asarray(metric), r=4)
  m = metric.astype(np.float64) / np.linalg.norm(metric, axis=-1, keepdims=True)
  s = m[:, 0::2] @ np.swapaxes(m[:, 1::2], 1, 2)
  s[:, 0] = -np.inf
  flat = np.sort(s.max(-1).reshape(-1))[::-1]
  assert bool(merged) and abs(float(theta) - max(flat[12], 0.0)) < 1e-6
  per_image = 21 - np.asarray(out.mask.sum(-1))
  assert per_image.sum() == 12 and per_image[0] == 10  # (21 - 1) // 2 clip is per batch, not per image
  # max_r caps an image's share; the batch budget is then not reached
  out, _, _ = _batch_merge(jnp.asarray(metric), r=4, max_r=5)
  assert (21 - np.asarray(out.mask.sum(-1)))[0] == 5


def test_calibrate_thresholds_is_a_running_mean():
  rng = np.random.default_rng(6)
  keys = [jnp.asarray(rng.standard_normal((2, 15, 8)), jnp.float32) for _ in range(3)]
  rs = (3, 0, 2)
  state = None
  batch_thetas = []
  for step in range(3):
    ks = [k + step for k in keys]
    state = _calibrate(state, ks, [None] * 3, r=rs, has_cls=True)  # the first step starts from None
    batch_thetas.append([float(_batch_merge(k, r=r)[1]) if r else 0.0 for k, r in zip(ks, rs)])
  expected = np.mean(np.asarray(batch_thetas), axis=0)
  np.testing.assert_allclose(np.asarray(state.thresholds)[[0, 2]], expected[[0, 2]], rtol=1e-6)
  assert np.asarray(state.counts).tolist() == [3, 0, 3] and math.isinf(float(state.thresholds[1]))
  dtome = DToMe.from_state(state)
  assert dtome.thresholds[1] == math.inf and dtome.thresholds[0] == pytest.approx(expected[0], rel=1e-6)


def test_jit_compiles_once_with_data_dependent_counts(tiny):
  model, params = tiny
  model = model.clone(reduction=DToMe(thresholds=(0.3, 0.4, 0.5), max_r=(None, 4, None)))
  before = traces(model)
  seen = set()
  rng = np.random.default_rng(0)
  for grid in (2, 4, 8):  # image 0 piecewise constant (redundant), image 1 noise
    smooth = np.kron(rng.standard_normal((grid, grid, 3)), np.ones((64 // grid, 64 // grid, 1)))
    images = np.stack([smooth, rng.standard_normal((64, 64, 3))]).astype(np.float32)
    logits, inter = apply(model, params, images)
    assert np.isfinite(np.asarray(logits)).all()
    seen.add(tuple(np.asarray(inter["mask"].sum(-1)).tolist()))
  assert len(seen) > 1
  assert traces(model) - before <= 1


@pytest.mark.parametrize("case", ["constant", "zero_keys"])
def test_degenerate_inputs_give_no_nan_and_clip(tiny, case):
  model, params = tiny
  x = jnp.full((2, 64, 64, 3), 0.5)
  # constant image AND no positional embedding: every token identical -> every edge = 1 > theta
  params = jax.tree_util.tree_map_with_path(
      lambda path, v: jnp.zeros_like(v) if "pos_embed" in jax.tree_util.keystr(path) else v, params)
  if case == "zero_keys":  # every key exactly zero: the official normalisation divides 0 by 0
    params = jax.tree_util.tree_map_with_path(
        lambda path, v: jnp.zeros_like(v) if "qkv" in jax.tree_util.keystr(path) else v, params)
  for thresholds in ((0.5,) * 3, (-math.inf,) * 3, (math.inf,) * 3):  # each compiles once for both cases
    logits, inter = apply(model.clone(reduction=DToMe(thresholds=thresholds)), params, x)
    assert np.isfinite(np.asarray(logits)).all() and np.isfinite(np.asarray(inter["size"])).all()
    counts = None if inter["mask"] is None else np.asarray(inter["mask"].sum(-1))
    if thresholds[0] == math.inf:
      assert counts is None
    elif case == "constant" or thresholds[0] == -math.inf:  # clipped to half the unprotected tokens per layer
      assert counts.tolist() == [3, 3]  # 17 -> 9 -> 5 -> 3
    else:  # zero keys: similarity 0 < 0.5, nothing merges
      assert counts.tolist() == [17, 17]
  logits, inter = apply(model.clone(reduction=DToMeCalibration(r=(100,) * 3)), params, x)
  assert np.isfinite(np.asarray(logits)).all()


def test_infinite_thresholds_are_the_dense_model_and_minus_infinity_is_tome(tiny):
  model, params = tiny
  x = np.random.default_rng(2).standard_normal((2, 64, 64, 3)).astype(np.float32)
  dense, _ = apply(model, params, x)
  none, _ = apply(model.clone(reduction=DToMe(thresholds=(math.inf,) * 3)), params, x)
  np.testing.assert_array_equal(np.asarray(none), np.asarray(dense))
  # theta = -inf merges as much as ToMe's clip allows: the same tokens as ToMe with a huge r
  all_in, inter = apply(model.clone(reduction=DToMe(thresholds=(-math.inf,) * 3)), params, x)
  tome, tome_inter = apply(model.clone(reduction=ToMe(r=100)), params, x)
  np.testing.assert_allclose(np.asarray(all_in), np.asarray(tome), rtol=1e-5, atol=1e-6)
  n = int(tome_inter["num_tokens"][-1])
  np.testing.assert_array_equal(np.asarray(inter["mask"].sum(-1)), [n, n])
  np.testing.assert_array_equal(np.asarray(source_matrix(inter["assign"], 17))[:, :n],
                                np.asarray(source_matrix(tome_inter["assign"], n)))


def test_masked_slots_do_not_change_valid_outputs():
  model = _tiny(DToMe(thresholds=(0.2, 0.2, 0.3)), pool="gap", class_token=False)
  x = np.random.default_rng(3).standard_normal((2, 64, 64, 3)).astype(np.float32)
  params = random_params(model, seed=1)
  logits, inter = apply(model, params, x)
  n = np.asarray(inter["mask"].sum(-1))
  assert (n < 16).all()
  # the same images alone (B = 1) give the same logits: no leakage across the padded slots or the batch
  for b in range(2):
    alone, _ = apply(model, params, x[b:b + 1])
    np.testing.assert_allclose(np.asarray(alone[0]), np.asarray(logits[b]), rtol=1e-5, atol=1e-6)


def test_configuration_errors_name_the_field():
  with pytest.raises(ValueError, match="DToMe.thresholds"):
    DToMe(thresholds=(0.5, float("nan")))
  with pytest.raises(ValueError, match="DToMe.max_r"):
    DToMe(thresholds=(0.5,), max_r=-1)
  with pytest.raises(ValueError, match="DToMe.thresholds: 2 thresholds for a depth-3"):
    jax.eval_shape(_tiny(DToMe(thresholds=(0.5, 0.5))).init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  with pytest.raises(ValueError, match="DToMeCalibration.r"):
    DToMeCalibration(r=(1, -1))
  with pytest.raises(ValueError, match="r_schedule"):
    r_schedule(12, 10, "cosine")
  with pytest.raises(ValueError, match="calibrate_thresholds"):
    calibrate_thresholds(None, [jnp.zeros((1, 5, 4))], [None, None], r=(1, 1), has_cls=True)
  assert isinstance(ThresholdState.create(3), ThresholdState)
