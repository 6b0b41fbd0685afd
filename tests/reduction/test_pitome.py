"""PiToMe equals the official hchautran/PiToMe code (goldens in tests/golden), plus its edge cases.

Goldens (scripts/goldens/make_pitome_goldens.py, official commit 550b5de):
- pitome_unit: merge.py pitome_vision + merge_wavg + merge_source on random metrics, both modes.
- pitome_deit_small_patch16_224: the official DeiT patch (DeiT mode order, class-token head).
- pitome_vit_small_patch16_224_mae: the official MAE patch (MAE mode order, size-weighted global
  pooling WITH its divisor bug: sum / 3 instead of / number of patches).
The JSON files list the smallest float64 gaps behind every merge decision (energy gaps go down to
~5e-8): exact equality of the merge groups below holds on this platform; if another BLAS ever flips
such a near-tie, the failing layer's gap in the JSON says whether that is legitimate.
"""
import functools
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from golden.weights import random_state_dict
from tokax.interop.timm import convert_state_dict, export_state_dict
from tokax.models import ViT
from tokax.reduction import MidReduction, Tokens, apply_plan, plan_matrix, source_matrix
from tokax.reduction.pitome import PiToMe, energy_scores, layer_margin, merge_count, pitome_plan
import vit_testing
from vit_testing import apply as forward  # one jitted forward per (model, shapes), compiled with fast_compile()
from vit_testing import SMALL, fast_compile

MODELS = {  # golden name -> (tokax ViT kwargs, PiToMe mode order)
    "deit_small_patch16_224": (dict(variant="S/16"), "deit"),
    "vit_small_patch16_224_mae": (dict(variant="S/16", pool="gap"), "mae"),
}
LN_EPS = 1e-6  # fc_norm


def _relative(a, b):
  return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(np.asarray(b, np.float64)))


def _load(name):
  from conftest import TESTS
  meta = json.loads((TESTS / "golden" / f"pitome_{name}.json").read_text())
  return meta, dict(np.load(TESTS / "golden" / f"pitome_{name}.npz"))


# ------------------------------------------------------------------------------------- unit goldens

@pytest.fixture(scope="module")
def unit():
  return _load("unit")


def _unit_cases():
  from conftest import TESTS
  meta = json.loads((TESTS / "golden" / "pitome_unit.json").read_text())
  return [pytest.param(case, id=case["tag"]) for case in meta["cases"]]


MERGES = ("scatter", "matmul")


@functools.partial(jax.jit, static_argnames=("ratio", "margin", "bsm", "num_prefix"))
def _merge(metric, x, size, *, ratio, margin, bsm, num_prefix):
  """The plan, the tokens it merges by every apply_plan method, and its matrix T."""
  plan = pitome_plan(metric, ratio, margin, bsm=bsm, num_prefix=num_prefix)
  tokens = Tokens.create(x, has_cls=bool(num_prefix)).replace(size=size)
  return plan, [apply_plan(tokens, plan, method=method) for method in MERGES], plan_matrix(plan, tokens.size)


@pytest.mark.parametrize("case", _unit_cases())
def test_plan_equals_official_merge(unit, case):
  _, data = unit
  tag, num_prefix, n = case["tag"], int(case["class_token"]), case["num_tokens"]
  metric, x, size = data["metric"][:, :n], data["x"][:, :n], data["size"][:, :n]
  plan, outs, t = _merge(metric, x, size, ratio=case["ratio"], margin=case["margin"], bsm=case["mode"] == "bsm",
                         num_prefix=num_prefix)
  assert plan.num_out == case["num_out"] == data[f"x_{tag}"].shape[1]
  # Same groups in the same output order ([CLS, protected, B] / [CLS, unmerged A, B]); for the
  # r = 0 case (bsm_..._n9) the same permutation.
  np.testing.assert_array_equal(np.asarray(plan.dst), data[f"dst_{tag}"])
  for method, out in zip(MERGES, outs):
    np.testing.assert_array_equal(np.asarray(out.size), data[f"size_{tag}"], err_msg=method)
    np.testing.assert_allclose(np.asarray(out.x), data[f"x_{tag}"], rtol=1e-5, atol=1e-6, err_msg=method)
  t = np.asarray(t, np.float64)  # X' = T X with T = diag(S s)^-1 S diag(s)
  np.testing.assert_allclose(t @ x.astype(np.float64), data[f"x_{tag}"], rtol=1e-5, atol=1e-6)


def test_energy_is_mean_elu_of_cosine_minus_margin(unit):
  _, data = unit
  metric = data["metric"][:, 1:].astype(np.float64)
  m = metric / np.linalg.norm(metric, axis=-1, keepdims=True)
  sim = m @ np.swapaxes(m, -1, -2)
  for margin in (0.75, 0.1):
    shifted = sim - margin
    want = np.where(shifted > 0, shifted, np.expm1(np.minimum(shifted, 0))).mean(-1)
    energy, got_sim = energy_scores(jnp.asarray(data["metric"][:, 1:]), margin)
    np.testing.assert_allclose(np.asarray(energy), want, atol=1e-6)
    np.testing.assert_allclose(np.asarray(got_sim), sim, atol=1e-6)
  alpha2, _ = energy_scores(jnp.asarray(data["metric"][:, 1:]), 0.5, alpha=2.0)
  shifted = sim - 0.5
  np.testing.assert_allclose(np.asarray(alpha2), np.where(shifted > 0, shifted, 2 * np.expm1(np.minimum(shifted, 0))
                                                          ).mean(-1), atol=1e-6)


# ------------------------------------------------------------------------------------ model goldens

@pytest.fixture(scope="module", params=sorted(MODELS))
def golden(request):
  name = request.param
  meta, data = _load(name)
  kwargs, mode = MODELS[name]
  model = ViT(num_classes=1000, **kwargs)
  abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
  zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract)
  shapes = {k: v.shape for k, v in export_state_dict(zeros).items()}
  params = convert_state_dict(random_state_dict(shapes, meta["weight_seed"]))
  return name, meta, data, model, mode, params


def test_schedule_matches_official_patch(golden):
  _, meta, data, _, mode, _ = golden
  depth = meta["depth"]
  reduction = PiToMe(ratio=0.9, mode=mode)
  assert list(reduction.layer_modes(depth)) == meta["modes"]
  assert [layer_margin(0.75, i, depth) for i in range(depth)] == meta["margins"]  # bit-equal floats
  for setting in meta["settings"]:
    counts = PiToMe(ratio=setting["ratio"], mode=mode).token_counts(meta["num_tokens_in"], depth)
    assert list(counts) == setting["tokens_after_block"] == list(data[f"tokens_{setting['tag']}"])


def test_ratio_one_is_the_dense_model(golden):
  _, _, data, model, mode, params = golden
  logits, inter = forward(model.clone(reduction=PiToMe(ratio=1.0, mode=mode)), params, data["images"])
  assert _relative(logits, data["logits_r1.0"]) <= 1e-4
  assert _relative(logits, data["logits_dense"]) <= 1e-4
  np.testing.assert_array_equal(np.asarray(inter["num_tokens"]), data["tokens_r1.0"])
  np.testing.assert_array_equal(np.asarray(logits), np.asarray(forward(model, params, data["images"])[0]))


@pytest.mark.slow
@pytest.mark.parametrize("ratio", [0.9, 0.95])
def test_pitome_equals_official_patch(golden, ratio):
  name, meta, data, model, mode, params = golden
  tag = f"r{ratio}"
  logits, inter = forward(model.clone(reduction=PiToMe(ratio=ratio, mode=mode)), params, data["images"])
  np.testing.assert_array_equal(np.asarray(inter["num_tokens"]), data[f"tokens_{tag}"])
  # The MAE golden pools with the official /3 divisor and tokax with the patch count: equal up to
  # fc_norm's eps (quantified in test_mae_pooling_*), far below this tolerance.
  assert _relative(logits, data[f"logits_{tag}"]) <= 1e-4, name
  # T = the traced source: identical 0/1 matrices, so groups AND output order agree.
  source = np.asarray(source_matrix(inter["assign"], int(data[f"tokens_{tag}"][-1])))
  np.testing.assert_array_equal(source, data[f"source_{tag}"])
  np.testing.assert_array_equal(np.asarray(inter["size"]), data[f"source_{tag}"].sum(-1))
  if f"pooled_{tag}" in data:  # MAE: the official pooled vector is sum(size * x) / 3
    feats, size = np.asarray(inter["features"], np.float64), np.asarray(inter["size"], np.float64)
    summed = (feats[:, 1:] * size[:, 1:, None]).sum(1)
    num_patches = meta["num_tokens_in"] - 1
    np.testing.assert_array_equal(size[:, 1:].sum(-1), num_patches)
    assert _relative(summed / 3, data[f"pooled_{tag}"]) <= 1e-5
    assert _relative(summed / num_patches * (num_patches / 3), data[f"pooled_{tag}"]) <= 1e-5


# --------------------------------------------------------------------------- MAE pooling divisor bug

def _fc_norm_head(pooled, params):
  """fc_norm (LayerNorm, eps 1e-6) then the linear head, in float64."""
  p = params["params"]
  mean = pooled.mean(-1, keepdims=True)
  var = pooled.var(-1, keepdims=True)
  z = (pooled - mean) / np.sqrt(var + LN_EPS)
  normed = z * np.asarray(p["fc_norm"]["scale"], np.float64) + np.asarray(p["fc_norm"]["bias"], np.float64)
  return normed @ np.asarray(p["head"]["kernel"], np.float64) + np.asarray(p["head"]["bias"], np.float64)


@pytest.fixture(scope="module")
def mae_tiny():
  """A 2-block MAE-style ViT (gap pooling + fc_norm) with a random head, reduced with PiToMe."""
  model = ViT(variant="Ti/16", depth=2, image_size=64, num_classes=10, pool="gap",
              reduction=PiToMe(ratio=0.75, mode="mae"))
  images = jax.random.normal(jax.random.key(0), (2, 64, 64, 3))
  init = jax.jit(model.clone(reduction=None).init, compiler_options=fast_compile())  # PiToMe adds no parameters
  params = init(jax.random.key(1), images)
  head = params["params"]["head"]
  params["params"]["head"] = {"kernel": jax.random.normal(jax.random.key(2), head["kernel"].shape) * 0.1,
                              "bias": jax.random.normal(jax.random.key(3), head["bias"].shape) * 0.1}
  logits, inter = forward(model, params, images)
  feats, size = np.asarray(inter["features"], np.float64), np.asarray(inter["size"], np.float64)
  return params, np.asarray(logits, np.float64), feats, size


def test_mae_pooling_is_the_size_weighted_mean(mae_tiny):
  """tokax pools sum(size * x) / sum(size) = / number of patches (the intended MAE pooling)."""
  params, logits, feats, size = mae_tiny
  num_patches = (64 // 16) ** 2
  assert feats.shape[1] < 1 + num_patches  # tokens were merged
  np.testing.assert_array_equal(size[:, 1:].sum(-1), num_patches)
  intended = (feats[:, 1:] * size[:, 1:, None]).sum(1) / num_patches
  np.testing.assert_allclose(logits, _fc_norm_head(intended, params), rtol=1e-5, atol=1e-5)


def test_mae_pooling_official_divisor_differs_only_through_fc_norm_eps(mae_tiny):
  """The official MAE patch divides by 3 (image channels): LayerNorm(c p) = (p - mean) / sqrt(var + eps / c^2).

  With c = P / 3 instead of 1 the logits change by the closed-form factor on the normalised part,
  sqrt((var + eps) / (var + eps (3 / P)^2)) - 1 ~ eps (1 - 9 / P^2) / (2 var): tiny for O(1) features, large for
  features whose variance is comparable to eps.
  """
  params, logits, feats, size = mae_tiny
  num_patches = (64 // 16) ** 2
  summed = (feats[:, 1:] * size[:, 1:, None]).sum(1)
  intended, official = summed / num_patches, summed / 3
  p = params["params"]
  gamma, beta = (np.asarray(p["fc_norm"][k], np.float64) for k in ("scale", "bias"))
  kernel, bias = np.asarray(p["head"]["kernel"], np.float64), np.asarray(p["head"]["bias"], np.float64)
  affine = beta @ kernel + bias  # the part of the logits the divisor cannot touch

  for scale in (1.0, 1e-3):  # O(1) features, then features with variance ~ eps
    p_int, p_off = intended * scale, official * scale
    want_int, want_off = _fc_norm_head(p_int, params), _fc_norm_head(p_off, params)
    var = p_int.var(-1, keepdims=True)
    factor = np.sqrt((var + LN_EPS) / (var + LN_EPS * (3 / num_patches) ** 2))
    np.testing.assert_allclose(want_off - affine, factor * (want_int - affine), rtol=1e-9, atol=1e-12)
    diff = _relative(want_off, want_int)
    if scale == 1.0:
      assert 0 < diff < 1e-5  # a real difference, far below the 1e-4 parity tolerance
      np.testing.assert_allclose(factor - 1, LN_EPS * (1 - (3 / num_patches) ** 2) / (2 * var), rtol=1e-3)
      np.testing.assert_allclose(logits, want_int, rtol=1e-5, atol=1e-5)
    else:
      assert diff > 1e-2  # the bug matters once var ~ eps


# ------------------------------------------------------------------------------------ edge cases

@pytest.fixture(scope="module")
def small_params():
  return vit_testing.small_params()


def test_jit_compiles_once_per_schedule(small_params):
  model = SMALL.clone(reduction=PiToMe(ratio=0.8))

  @functools.partial(jax.jit, compiler_options=fast_compile())
  @chex.assert_max_traces(n=1)
  def logits(p, images):
    return model.apply(p, images)

  for seed in range(3):
    logits(small_params, jax.random.normal(jax.random.key(seed), (2, 64, 64, 3)))


def test_degenerate_inputs_give_no_nan(small_params):
  """Constant images, identical patch tokens (no position embedding) and all-zero keys."""
  x = jnp.full((2, 64, 64, 3), 0.5)
  params = small_params
  duplicates = jax.tree.map(lambda v: v, params)
  duplicates["params"]["pos_embed"] = jnp.zeros_like(params["params"]["pos_embed"])
  zero_keys = jax.tree_util.tree_map_with_path(  # F.normalize's eps keeps the similarities at 0
      lambda path, v: jnp.zeros_like(v) if "qkv" in jax.tree_util.keystr(path) else v, params)
  for reduction in (PiToMe(ratio=0.5), PiToMe(ratio=0.8, mode="mae"), PiToMe(ratio=0.9, mode=("pitome",) * 4)):
    for case in (params, duplicates, zero_keys):
      logits, inter = forward(SMALL.clone(reduction=reduction), case, x)
      assert np.isfinite(np.asarray(logits)).all()
      assert np.isfinite(np.asarray(inter["size"])).all()
      assert list(np.asarray(inter["num_tokens"])) == list(reduction.token_counts(17, 4))
      np.testing.assert_array_equal(np.asarray(inter["size"]).sum(-1), 17)


@pytest.mark.parametrize("bsm", [False, True])
@pytest.mark.parametrize("metric", ["duplicates", "zeros"])
def test_ties_give_a_valid_plan(bsm, metric):
  """All-equal energies: stable order (lower index first), every output slot filled, sizes add up."""
  values = np.ones((2, 13, 8), np.float32) if metric == "duplicates" else np.zeros((2, 13, 8), np.float32)
  plan = pitome_plan(jnp.asarray(values), 0.6, 0.5, bsm=bsm)
  dst = np.asarray(plan.dst)
  assert plan.num_out == 13 - merge_count(12, 0.6) == 9
  assert dst[:, 0].tolist() == [0, 0]
  for row in dst:
    assert set(row.tolist()) == set(range(plan.num_out))
  # Ties broken by index: rank = token order. pitome: tokens 1..2r pair up (A = odd, B = even
  # positions) after the T - 2r protected ones; bsm: the same alternation over all tokens.
  np.testing.assert_array_equal(dst[0], dst[1])
  tokens = Tokens.create(jnp.asarray(np.random.default_rng(0).standard_normal((2, 13, 4)), jnp.float32))
  out = apply_plan(tokens, plan)
  assert np.isfinite(np.asarray(out.x)).all()
  np.testing.assert_array_equal(np.asarray(out.size).sum(-1), 13)


@pytest.mark.parametrize("kwargs, match", [
    (dict(ratio=0.4), r"PiToMe.ratio: .*\[0.5, 1\]"),
    (dict(ratio=1.1), r"PiToMe.ratio: .*\[0.5, 1\]"),
    (dict(ratio=(0.9, 0.3)), r"PiToMe.ratio"),
    (dict(ratio=()), r"PiToMe.ratio: the per-layer tuple is empty"),
    (dict(ratio=True), r"PiToMe.ratio"),
    (dict(mode="vit"), r"PiToMe.mode: expected one of \('deit', 'mae'\)"),
    (dict(mode=("pitome", "tome")), r"PiToMe.mode: a per-layer tuple"),
    (dict(alpha=0.0), r"PiToMe.alpha"),
    (dict(m0=float("nan")), r"PiToMe.m0"),
])
def test_invalid_settings_raise(kwargs, match):
  with pytest.raises(ValueError, match=match):
    PiToMe(**kwargs)


def test_per_layer_lengths_are_checked_against_depth():
  model = ViT(variant="Ti/16", depth=2, num_classes=10, image_size=32)
  x = jnp.zeros((1, 32, 32, 3))
  init = lambda reduction: jax.eval_shape(model.clone(reduction=reduction).init, jax.random.key(0), x)  # no compile
  with pytest.raises(ValueError, match=r"PiToMe.ratio: the per-layer tuple has 3 entries but the model has 2"):
    init(PiToMe(ratio=(0.9, 0.9, 0.9)))
  with pytest.raises(ValueError, match=r"PiToMe.mode: the per-layer tuple has 1 entries but the model has 2"):
    init(PiToMe(mode=("bsm",)))


def test_ratio_one_returns_the_tokens_unchanged():
  tokens = Tokens.create(jax.random.normal(jax.random.key(0), (2, 11, 4)))
  metrics = {"keys": jax.random.normal(jax.random.key(1), (2, 11, 8))}
  assert PiToMe(ratio=1.0).reduce(tokens, metrics, layer=0, depth=12) is tokens
  assert pitome_plan(metrics["keys"], 1.0, 0.75) is None


def test_schedules_and_explicit_modes():
  deit = PiToMe(mode="deit")
  assert deit.layer_modes(12) == ("bsm",) * 6 + ("pitome",) * 6
  assert deit.layer_modes(11) == ("bsm",) * 6 + ("pitome",) * 5  # ceil(L / 2)
  assert PiToMe(mode="mae").layer_modes(12) == ("pitome",) * 6 + ("bsm",) * 6
  explicit = PiToMe(mode=["bsm", "pitome"])
  assert explicit.mode == ("bsm", "pitome") and explicit.layer_modes(2) == ("bsm", "pitome")
  # BLIP-style per-layer ratios: no merge in layer 0. Shapes: 197 tokens, T = 196.
  blip = PiToMe(ratio=[1.0] + [0.9] * 11)
  assert blip.ratio == (1.0,) + (0.9,) * 11
  assert blip.token_counts(197, 12)[:3] == (197, 178, 161)
  assert PiToMe(ratio=0.9).token_counts(197, 12) == (178, 161, 145, 131, 118, 107, 97, 88, 80, 73, 66, 60)
  assert [merge_count(196, r) for r in (0.9, 0.925, 0.95, 0.975, 0.5)] == [19, 14, 9, 4, 98]
  assert hash(PiToMe(ratio=0.9)) == hash(PiToMe(ratio=0.9))  # usable as a static Flax field
  assert not PiToMe().prop_attn and PiToMe().placement == "mid" and PiToMe().scores == ()
  assert isinstance(PiToMe(), MidReduction)


def test_reduce_per_image_plans_in_a_batch():
  """Each image gets its own plan: the batch result equals running the images one by one."""
  rng = np.random.default_rng(5)
  keys = rng.standard_normal((3, 21, 8)).astype(np.float32)
  x = rng.standard_normal((3, 21, 6)).astype(np.float32)
  reduce = jax.jit(lambda x, keys, layer: PiToMe(ratio=0.7).reduce(Tokens.create(x), {"keys": keys}, layer=layer,
                                                                   depth=12), static_argnums=2)
  for layer in (0, 11):  # a "bsm" then a "pitome" layer of the DeiT order
    batched = reduce(x, keys, layer)
    for b in range(3):
      single = reduce(x[b:b + 1], keys[b:b + 1], layer)
      np.testing.assert_array_equal(np.asarray(batched.assign[b]), np.asarray(single.assign[0]))
      np.testing.assert_allclose(np.asarray(batched.x[b]), np.asarray(single.x[0]), rtol=1e-6)
