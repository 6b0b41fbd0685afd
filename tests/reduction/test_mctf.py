"""MCTF equals the official mlvlab/MCTF code (goldens in tests/golden/mctf_*), plus its edge cases."""
import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokax.models import ViT
from tokax.reduction import PreReduction, Tokens, apply_plan, source_matrix
from tokax.reduction.mctf import (MCTF, attention_received, bidirectional_fusion_plan, fusion_weights, layer_r,
                                  mctf_fuse, merge_attention, multi_criteria_scores)
from vit_testing import apply, fast_compile, random_params, traces

MODEL = "deit_tiny_patch16_224"
SETTINGS = {
    "mctf16": MCTF.released(),
    "fast035": MCTF.released_fast(),
    "mctf16_pool0": MCTF.released(pooling_type=0),
    "mctf16_unidir": MCTF.released(bidirection=False),
    "mctf16_noprop": MCTF.released(prop_attn=False),
    "r100_all": MCTF(r=100),
}


def _relative(a, b):
  return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


def _golden(name):
  from conftest import TESTS
  meta = json.loads((TESTS / "golden" / f"mctf_{name}.json").read_text())
  return meta, dict(np.load(TESTS / "golden" / f"mctf_{name}.npz"))


# ---------------------------------------------------------------------------------------------
# Function level: official utils/mctf.py mctf() on random tokens, attention and sizes.

@pytest.fixture(scope="module")
def unit():
  meta, data = _golden("unit")
  return {c["tag"]: c for c in meta["cases"]}, data


def _unit_inputs(case, data, *, has_dist=False):
  n = case["num_tokens"]
  x, attn = data[f"in_x_n{n}"], data[f"in_attn_n{n}"]
  size = data[f"in_size_n{n}"] if case["sizes_given"] else np.ones(x.shape[:2], np.float32)
  tokens = Tokens.create(jnp.asarray(x), has_cls=case["num_protected"] >= 1, has_dist=has_dist)
  return tokens.replace(size=jnp.asarray(size)), jnp.asarray(attn)


_fuse = jax.jit(mctf_fuse, static_argnums=2,
                static_argnames=("tau_sim", "tau_info", "tau_size", "bidirection", "pooling_type", "merge"))


def _case_args(case):
  r = layer_r(case["r"], case["num_tokens"], case["num_protected"])
  assert r == case["r_applied"]
  return dict(r=r, tau_sim=case["tau_sim"], tau_info=case["tau_info"], tau_size=case["tau_size"],
              bidirection=bool(case["bidirection"]), pooling_type=case["pooling_type"])


@functools.partial(jax.jit, static_argnames=("r", "tau_sim", "tau_info", "tau_size", "bidirection", "pooling_type"))
def _fuse_both(tokens, attn, **kw):
  """mctf_fuse with the scatter and the matmul group sums, in one compiled call."""
  r = kw.pop("r")
  return {merge: mctf_fuse(tokens, attn, r, merge=merge, **kw) for merge in ("scatter", "matmul")}


UNIT_CASES = ["base", "base_even", "first", "pool0", "unidir", "unidir_pool0", "odd_r", "frac", "clip", "small",
              "sim_only", "no_sim", "no_protect", "no_protect_odd"]


@pytest.mark.parametrize("tag", UNIT_CASES)
def test_fusion_equals_official(unit, tag):
  cases, data = unit
  case = cases[tag]
  tokens, attn = _unit_inputs(case, data)
  n_out = case["num_tokens"] - case["r_applied"]
  for merge, (out, attn_out) in _fuse_both(tokens, attn, **_case_args(case)).items():
    # Groups AND output order: [kept A (cls first, original order), kept B (descending score)].
    np.testing.assert_array_equal(np.asarray(source_matrix(out.assign, n_out)), data[f"{tag}_source"], err_msg=merge)
    np.testing.assert_array_equal(np.asarray(out.size), data[f"{tag}_size"], err_msg=merge)
    np.testing.assert_allclose(np.asarray(out.x), data[f"{tag}_x"], rtol=1e-5, atol=1e-6, err_msg=merge)
    np.testing.assert_allclose(np.asarray(attn_out), data[f"{tag}_attn"], rtol=1e-5, atol=1e-7, err_msg=merge)
    np.testing.assert_allclose(np.asarray(attn_out).sum(-1), 1.0, atol=1e-5, err_msg=merge)


@functools.partial(jax.jit, static_argnames=("r", "tau_sim", "tau_info", "tau_size", "bidirection", "pooling_type"))
def _plan_parts(tokens, attn, *, r, tau_sim, tau_info, tau_size, bidirection, pooling_type):
  """tokax's single plan for one layer: (plan, float32 fusion weights, merged attention)."""
  received = attention_received(attn)
  scores = multi_criteria_scores(tokens.x, received, tokens.size, tau_sim=tau_sim, tau_info=tau_info,
                                 tau_size=tau_size)
  plan = bidirectional_fusion_plan(scores, r, has_cls=True, bidirection=bidirection)
  w = fusion_weights(received, tokens.size, pooling_type)
  return plan, w, merge_attention(attn, plan.replace(weight=w))


@pytest.mark.parametrize("tag", ["base", "pool0", "odd_r", "clip"])
def test_one_plan_is_the_official_two_step_merge_float64(unit, tag):
  """The bidirectional two-step scatter (A -> B, then the UPDATED B -> A) is one weighted mean.

  Rebuild T = diag(S w)^-1 S diag(w) and A' = T A S^T in float64 numpy from tokax's single
  many-to-one plan and compare with the official two-step outputs at float32 rounding.
  """
  cases, data = unit
  case = cases[tag]
  tokens, attn = _unit_inputs(case, data)
  plan, w, tokax_attn = _plan_parts(tokens, attn, **_case_args(case))
  w = np.asarray(w, np.float64)
  dst = np.asarray(plan.dst)
  groups = (dst[:, None, :] == np.arange(plan.num_out)[None, :, None]).astype(np.float64)  # S (B, N', N)
  t = groups * w[:, None, :]
  t /= t.sum(-1, keepdims=True)
  x64 = np.asarray(tokens.x, np.float64)
  a64 = np.asarray(attn, np.float64)
  np.testing.assert_allclose(t @ x64, data[f"{tag}_x"], rtol=2e-6, atol=2e-7)
  merged_attn = np.einsum("bpq,bhqk,bmk->bhpm", t, a64, groups)
  np.testing.assert_allclose(merged_attn, data[f"{tag}_attn"], rtol=2e-6, atol=1e-8)
  np.testing.assert_allclose(np.asarray(tokax_attn), merged_attn, rtol=2e-6, atol=1e-8)
  # Chains A -> B -> A exist in these cases: some output slot holds tokens of both parities.
  if case["bidirection"]:
    parity_mix = [(groups[b, m] * (np.arange(dst.shape[1]) % 2)).sum() not in (0, groups[b, m].sum())
                  for b in range(2) for m in range(plan.num_out)]
    assert any(parity_mix)


def test_distillation_token_official_indexing_vs_tokax(unit):
  """Official num_protected=2 protects A rows 0, 1 (tokens 0 and 2), not the dist token B[0] = token 1."""
  cases, data = unit
  case = cases["dist_official"]
  official = data["dist_official_source"]  # (B, N', N)
  row_of = official.argmax(1)  # output row of every input token
  # Official: token 1 (the would-be distillation token) is fused with another token in image 0,
  # and output position 1 (where a DeiT distillation head reads) holds token 2.
  assert official[0, row_of[0, 1]].sum() > 1
  np.testing.assert_array_equal(official[:, 1, :].argmax(-1), [2, 2])
  np.testing.assert_array_equal(official[:, 1, :].sum(-1), [1, 1])

  # tokax (intended): cls and dist are both kept alone, in slots 0 and 1.
  tokens, attn = _unit_inputs(case, data, has_dist=True)
  r = layer_r(case["r"], case["num_tokens"], tokens.num_prefix)
  assert r == case["r_applied"]
  for bidirection in (True, False):
    out, attn_out = _fuse(tokens, attn, r, bidirection=bidirection)
    ours = np.asarray(source_matrix(out.assign, out.num_tokens))
    assert ours.shape[1] == case["num_tokens"] - r
    np.testing.assert_array_equal(ours[:, 0], np.eye(case["num_tokens"])[[0, 0]])
    np.testing.assert_array_equal(ours[:, 1], np.eye(case["num_tokens"])[[1, 1]])
    np.testing.assert_allclose(np.asarray(out.x[:, :2]), np.asarray(tokens.x[:, :2]), rtol=1e-6)  # x w / w
    np.testing.assert_allclose(np.asarray(attn_out).sum(-1), 1.0, atol=1e-5)

  # Emulating the official indexing (row 1 of A masked instead of column 0 of B) with tokax's plan
  # reproduces the official groups and order exactly: the protection index is the only difference.
  emulated = _official_protection(tokens, attn, r)
  np.testing.assert_array_equal(np.asarray(source_matrix(emulated.assign, case["num_tokens"] - r)), official)
  np.testing.assert_allclose(np.asarray(emulated.x), data["dist_official_x"], rtol=1e-5, atol=1e-6)


@functools.partial(jax.jit, static_argnums=2)
def _official_protection(tokens, attn, r):
  """tokax's plan with the official protection of the first two A rows (tokens 0 and 2)."""
  received = attention_received(attn)
  scores = multi_criteria_scores(tokens.x, received, tokens.size)
  scores = scores.at[:, 1, :].set(-jnp.inf)
  plan = bidirectional_fusion_plan(scores, r, has_cls=True, has_dist=False)
  return apply_plan(Tokens.create(tokens.x, has_cls=True), plan.replace(weight=fusion_weights(received, tokens.size)))


# ---------------------------------------------------------------------------------------------
# Model level: official models/deit.py deit_tiny with Block_DEIT (one-step-ahead) vs tokax ViT.

@pytest.fixture(scope="module")
def deit():
  meta, data = _golden(MODEL)
  model = ViT(variant="Ti/16", num_classes=1000)
  return meta, data, model, random_params(model, meta["weight_seed"])


def test_dense_logits_equal_official(deit):
  _, data, model, params = deit
  logits = jax.jit(model.apply)(params, data["images"])
  assert _relative(logits, data["logits_dense"]) <= 1e-4


@pytest.mark.parametrize("tag", sorted(SETTINGS))
def test_token_counts_are_static_and_official(deit, tag):
  meta, data, _, _ = deit
  np.testing.assert_array_equal(SETTINGS[tag].token_counts(197, 12), data[f"tokens_{tag}"])


@pytest.mark.slow
@pytest.mark.parametrize("tag", sorted(SETTINGS))
def test_mctf_equals_official(deit, tag):
  meta, data, model, params = deit
  reduced = model.clone(reduction=SETTINGS[tag])
  logits, inter = apply(reduced, params, data["images"])
  np.testing.assert_array_equal(np.asarray(inter["num_tokens"]), data[f"tokens_{tag}"])
  assert _relative(logits, data[f"logits_{tag}"]) <= 1e-4
  n_final = int(data[f"tokens_{tag}"][-1])
  source = np.asarray(source_matrix(inter["assign"], n_final))
  np.testing.assert_array_equal(source, data[f"source_{tag}"])
  np.testing.assert_array_equal(np.asarray(inter["size"]), data[f"source_{tag}"].sum(-1))


# ---------------------------------------------------------------------------------------------
# Schedule, static shapes, degenerate inputs, validation.

@pytest.mark.parametrize("r, n, p, want", [
    (16, 197, 1, 16), (0.35, 197, 1, 68), (0.35, 129, 1, 44), (0.35, 85, 1, 29), (100, 197, 1, 98),
    (100, 99, 1, 49), (16, 12, 1, 2), (16, 10, 1, 0), (16, 9, 1, 0), (0.35, 10, 1, 0), (0.35, 11, 1, 3),
    (0.35, 9, 1, 0), (0, 197, 1, 0), (0.0, 197, 1, 0), (16, 198, 2, 16), (0.5, 198, 2, 98)])
def test_layer_r_official_rule(r, n, p, want):
  # N - r < 10 -> r = N - 10; float r -> int((N - P) r); then <= (N - P) // 2; negative -> 0
  # (official: a negative r below 10 tokens slips past its r == 0 exit and crashes).
  assert layer_r(r, n, p) == want


@pytest.fixture(scope="module")
def tiny():
  """A depth-3 ViT on 64 x 64 images (17 tokens), random weights and two random images."""
  model = ViT(variant="Ti/16", depth=3, num_classes=10, image_size=64)
  images = np.random.default_rng(0).standard_normal((2, 64, 64, 3)).astype(np.float32)
  return model, random_params(model, seed=1), images


def test_jit_compiles_once_per_schedule(tiny):
  model, params, images = tiny
  reduced = model.clone(reduction=MCTF(r=4))
  before = traces(reduced)
  for seed in range(3):
    logits, inter = apply(reduced, params, images + seed)
    assert np.isfinite(np.asarray(logits)).all()
    assert list(np.asarray(inter["num_tokens"])) == [13, 10, 10]
  assert traces(reduced) - before <= 1


def test_student_and_teacher_are_separate_static_reductions(tiny):
  student = MCTF.released()
  teacher = dataclasses.replace(student, r=8)
  assert teacher != student and hash(teacher) != hash(student)
  assert teacher.activate_layers == student.activate_layers and teacher.r == 8
  assert student.token_counts(197, 12)[-1] == 21 and teacher.token_counts(197, 12)[-1] == 109
  with pytest.raises(ValueError, match="MCTF.r"):
    dataclasses.replace(student, r=1.5)
  model, params, x = tiny
  s = apply(model.clone(reduction=MCTF(r=4)), params, x)[1]["num_tokens"]
  t = apply(model.clone(reduction=dataclasses.replace(MCTF(r=4), r=2)), params, x)[1]
  assert list(np.asarray(s)) == [13, 10, 10] and list(np.asarray(t["num_tokens"])) == [15, 13, 11]


def test_r0_and_inactive_layers_equal_dense(tiny):
  model, params, x = tiny
  dense = apply(model, params, x)[0]
  for reduction in (MCTF(r=0), MCTF(r=4, activate_layers=())):
    np.testing.assert_allclose(apply(model.clone(reduction=reduction), params, x)[0], dense, rtol=1e-5, atol=1e-6)


def _degenerate_params(params, kind):
  def edit(path, v):
    name = jax.tree_util.keystr(path)
    if kind == "duplicates" and "pos_embed" in name:  # constant image + no position: identical patch tokens
      return jnp.zeros_like(v)
    if kind == "zeros" and any(k in name for k in ("patch_embed", "pos_embed", "cls_token")):
      return jnp.zeros_like(v)  # every token of the first block is the zero vector
    return v
  return jax.tree_util.tree_map_with_path(edit, params)


@pytest.mark.parametrize("kind", ["duplicates", "zeros"])
def test_degenerate_inputs_give_no_nan(tiny, kind):
  model, params, _ = tiny
  x = jnp.full((2, 64, 64, 3), 0.5)
  params = _degenerate_params(params, kind)
  for reduction in (MCTF(r=4), MCTF(r=100, pooling_type=0), MCTF(r=0.35, bidirection=False)):
    logits, inter = apply(model.clone(reduction=reduction), params, x)
    assert np.isfinite(np.asarray(logits)).all(), reduction
    assert np.isfinite(np.asarray(inter["features"])).all(), reduction
    np.testing.assert_array_equal(np.asarray(inter["num_tokens"]), reduction.token_counts(17, 3))
    np.testing.assert_allclose(np.asarray(inter["size"]).sum(-1), 17.0)


def test_zero_attention_received_gives_no_nan():
  """Every query attends only to token 0: 1/ā is inf for the others (official: inf/inf = NaN)."""
  x = jnp.asarray(np.random.default_rng(3).standard_normal((2, 21, 16)), jnp.float32)
  probs = jnp.zeros((2, 2, 21, 21)).at[..., 0].set(1.0)
  tokens = Tokens.create(x).replace(size=jnp.ones((2, 21)).at[:, 5].set(3.0))
  for pooling_type in (0, 1):
    out, merged = _fuse(tokens, probs, 6, pooling_type=pooling_type)
    assert out.num_tokens == 15 and merged.shape == (2, 2, 15, 15)
    assert np.isfinite(np.asarray(out.x)).all() and np.isfinite(np.asarray(merged)).all()
    np.testing.assert_allclose(np.asarray(merged).sum(-1), 1.0, atol=1e-6)


def test_more_tokens_than_available_are_clipped_as_official():
  assert MCTF(r=100).token_counts(197, 12) == (99, 50, 26, 14, 10, 10, 10, 10, 10, 10, 10, 10)
  rng = np.random.default_rng(0)
  tokens = Tokens.create(jnp.asarray(rng.standard_normal((2, 9, 8)), jnp.float32))
  probs = jnp.asarray(rng.dirichlet(np.ones(9), (2, 2, 9)), jnp.float32)
  out, same = MCTF(r=16).reduce_with_attention(tokens, probs, layer=0, depth=1)  # official crashes (r = -1)
  assert out is tokens and same is probs


def test_distilled_model_keeps_cls_and_dist_alone(tiny):
  _, _, x = tiny
  model = ViT(variant="Ti/16", depth=3, num_classes=10, image_size=64, distilled=True, reduction=MCTF(r=4))
  logits, inter = apply(model, random_params(model, seed=1), x)
  assert np.isfinite(np.asarray(logits)).all()
  assign = np.asarray(inter["assign"])
  np.testing.assert_array_equal(assign[:, :2], [[0, 1], [0, 1]])
  assert (assign[:, 2:] > 1).all()
  np.testing.assert_array_equal(np.asarray(inter["size"])[:, :2], 1.0)
  assert list(np.asarray(inter["num_tokens"])) == list(model.reduction.token_counts(18, 3, num_prefix=2))


def test_gradients_are_finite(tiny):
  model, params, x = tiny
  model = model.clone(reduction=MCTF(r=3))
  grads = jax.jit(jax.grad(lambda p: model.apply(p, x).sum()), compiler_options=fast_compile())(params)
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
  assert np.abs(np.asarray(grads["params"]["blocks_2"]["attn"]["qkv"]["kernel"])).max() > 0


def test_activate_layer_beyond_depth_is_an_error(tiny):
  model = tiny[0].clone(reduction=MCTF(r=2, activate_layers=(3, 6, 9)))
  with pytest.raises(ValueError, match="activate_layers"):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))


@pytest.mark.parametrize("kwargs, field", [
    (dict(r=-1), "MCTF.r"), (dict(r=1.5), "MCTF.r"), (dict(r=True), "MCTF.r"), (dict(r="16"), "MCTF.r"),
    (dict(r=-0.1), "MCTF.r"), (dict(activate_layers=(1, -2)), "activate_layers"),
    (dict(activate_layers="3,6"), "activate_layers"), (dict(activate_layers=(1.0,)), "activate_layers"),
    (dict(tau_sim=-1), "tau_sim"), (dict(tau_info="20"), "tau_info"), (dict(tau_size=float("nan")), "tau_size"),
    (dict(pooling_type=2), "pooling_type"), (dict(pooling_type=True), "pooling_type"),
    (dict(bidirection=2), "bidirection"), (dict(merge="dense"), "merge"), (dict(prop_attn=1), "prop_attn")])
def test_invalid_fields_raise(kwargs, field):
  with pytest.raises(ValueError, match=field):
    MCTF(**kwargs)


def test_protocol_and_normalised_fields():
  m = MCTF(r=np.int64(8), activate_layers=[9, 3, 6, 3], bidirection=1, pooling_type=np.int32(0), tau_info=20)
  assert (m.r, m.activate_layers, m.bidirection, m.pooling_type, m.tau_info) == (8, (3, 6, 9), True, 0, 20.0)
  assert m.placement == "pre" and m.scores == () and m.prop_attn
  assert m.attention_layer(layer=3, depth=12) and not m.attention_layer(layer=4, depth=12)
  assert isinstance(m, PreReduction) and not hasattr(m, "reduce")  # the block calls reduce_with_attention
