"""DivPrune equals the official vbdi/divprune selection (goldens); ToDRE equals a float64 brute force."""
import functools
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokax.reduction import Tokens, plan_matrix
from tokax.reduction.divprune import (DivPrune, ToDRE, cosine_similarity, divprune, divprune_plan, divprune_select,
                                      keep_count, todre, todre_plan, todre_select)

MARGIN = 1e-6  # float64 score gap below which float32 code may legitimately pick the other token
_divprune_select = jax.jit(divprune_select, static_argnums=1)
_todre_select = jax.jit(todre_select, static_argnums=2, static_argnames="mode")


@pytest.fixture(scope="module")
def golden():
  from conftest import TESTS
  meta = json.loads((TESTS / "golden" / "divprune_selection.json").read_text())
  return meta, dict(np.load(TESTS / "golden" / "divprune_selection.npz"))


def _agreeing_steps(margins):
  """Steps up to the first one decided by a gap in (0, MARGIN); exact ties (0) go to the first index on both sides."""
  close = np.where((margins > 0) & (margins < MARGIN))[0]
  return int(close[0]) if len(close) else len(margins)


def test_keep_count_is_the_official_round():
  assert keep_count(0.098, 576) == 56  # run_Divprune.sh SUBSET_RATIO
  assert keep_count(0.1, 576) == 58  # 57.6
  assert keep_count(0.5, 5) == 2  # round(2.5) = 2: Python rounds half to even, as the official int(round(.))
  assert keep_count(0.5, 7) == 4  # round(3.5) = 4
  assert keep_count(0.098, 5) == 1  # round(0.49) = 0 -> clipped to one token
  assert keep_count(1.0, 9) == 9


@pytest.fixture(scope="module")
def divprune_jit():
  @jax.jit
  def run(x, ratio_token):  # picks, plan index and reduced features in one compiled call
    k = ratio_token.shape[0]
    plan = divprune_plan(x, k)
    reduced = DivPrune(num_keep=k)(Tokens.create(x, has_cls=False))
    return divprune_select(x, k), plan.index, reduced.x

  return lambda x, k: run(jnp.asarray(x), jnp.zeros((k,)))


def test_golden_picks_equal_official_per_image_on_a_batch(golden, divprune_jit):
  """The official code handles batch index [0] only; tokax on the whole batch = official image by image."""
  meta, data = golden
  for setting in meta["settings"]:
    tag, x = setting["tag"], data[f"x_{setting['features']}"]
    k = setting["num_keep"]
    assert keep_count(setting["ratio"], x.shape[1]) == k, tag
    assert DivPrune(ratio=setting["ratio"]).kept(x.shape[1]) == k, tag
    picks, index, reduced = (np.asarray(a) for a in divprune_jit(x, k))
    official = data[f"picks_{tag}"]
    assert picks.shape == official.shape, tag
    exact = True
    for b in range(x.shape[0]):
      steps = _agreeing_steps(data[f"margins_{tag}"][b])
      assert steps >= min(50, k), (tag, b, steps)  # a long stretch is decided beyond float32 noise
      np.testing.assert_array_equal(picks[b, :steps], official[b, :steps], err_msg=f"{tag} image {b}")
      exact &= steps == k
    if exact:
      np.testing.assert_array_equal(index, data[f"keep_{tag}"])  # original order, as LLaVA keeps them
      np.testing.assert_array_equal(reduced, np.take_along_axis(x, data[f"keep_{tag}"][..., None], axis=1))
  # one image at a time gives the same plan as the batch (per-image plans)
  x, k = data["x_random"], 56
  batched = np.asarray(divprune_jit(x, k)[1])
  plan_index = jax.jit(lambda x: divprune_plan(x, k).index)
  for b in range(x.shape[0]):
    np.testing.assert_array_equal(np.asarray(plan_index(x[b:b + 1]))[0], batched[b])


def _divprune_float64(x, k):
  """The official rule in float64 numpy: first pick = argmax 2nd-smallest column distance, then max-min."""
  unit = x / np.linalg.norm(x, axis=-1, keepdims=True)
  dist = 1.0 - unit @ unit.T
  picks = [int(np.argmax(np.sort(dist, axis=0)[1]))]
  while len(picks) < k:
    score = dist[picks].min(0)
    score[picks] = -np.inf
    picks.append(int(np.argmax(score)))
  return np.asarray(picks)


def test_divprune_equals_float64_rule_on_other_shapes():
  x = np.random.default_rng(3).standard_normal((2, 50, 7))
  picks = np.asarray(_divprune_select(jnp.asarray(x, jnp.float32), 20))
  for b in range(2):
    np.testing.assert_array_equal(picks[b], _divprune_float64(x[b], 20))


def test_prefix_tokens_are_kept_and_not_compared():
  rng = np.random.default_rng(4)
  x = jnp.asarray(rng.standard_normal((2, 1 + 49, 16)), jnp.float32)
  k = keep_count(0.25, 49)

  @jax.jit
  def run(x):  # the reducer, the plan and the picks among the patch tokens alone
    return DivPrune(ratio=0.25)(Tokens.create(x, has_cls=True)), divprune_plan(x, k, num_prefix=1).index, \
        divprune_select(x[:, 1:], k)

  out, index, picks = run(x)
  assert out.x.shape == (2, 1 + k, 16)
  np.testing.assert_array_equal(out.x[:, 0], x[:, 0])
  expected = np.sort(np.asarray(picks), axis=-1) + 1
  np.testing.assert_array_equal(index[:, 1:], expected)
  np.testing.assert_array_equal(out.x[:, 1:], np.take_along_axis(np.asarray(x), expected[..., None], axis=1))
  assert (np.asarray(out.assign) >= -1).all() and np.asarray(out.assign)[:, 0].tolist() == [0, 0]


@functools.partial(jax.jit, static_argnums=1)
def _three_plans(x, num_keep):
  plans = (divprune_plan(x, num_keep), todre_plan(x, x[..., 0], num_keep),
           todre_plan(x, x[..., 0], num_keep, mode="k_center"))
  return [plan.index for plan in plans]


@pytest.mark.parametrize("num_keep", [5, 49, 1000])
def test_amounts_above_n_are_clipped(num_keep):
  x = jnp.asarray(np.random.default_rng(5).standard_normal((2, 49, 8)), jnp.float32)
  k = min(num_keep, 49)
  for index in _three_plans(x, num_keep):
    index = np.asarray(index)
    assert index.shape == (2, k)
    assert all(len(set(row)) == k for row in index) and (np.diff(index, axis=-1) > 0).all()
  assert DivPrune(num_keep=num_keep).kept(49) == k


@jax.jit
def _all_selections(x):
  picks = (divprune_select(x, 12), todre_select(x, x[..., 0], 12), todre_select(x, x[..., 0], 12, mode="k_center"))
  return cosine_similarity(x), picks, DivPrune(num_keep=12)(Tokens.create(x, has_cls=False)).x


@pytest.mark.parametrize("kind", ["zeros", "constant", "duplicates", "one_zero_vector"])
def test_degenerate_features_give_distinct_picks_and_no_nan(kind):
  rng = np.random.default_rng(6)
  x = rng.standard_normal((2, 30, 8)).astype(np.float32)
  if kind == "zeros":
    x[:] = 0
  elif kind == "constant":
    x[:] = 0.5
  elif kind == "duplicates":  # three distinct tokens, each repeated ten times
    x = np.repeat(x[:, :3], 10, axis=1)
  else:
    x[:, 7] = 0
  sim, picks, reduced = _all_selections(jnp.asarray(x))
  assert np.isfinite(np.asarray(sim)).all()
  if kind == "zeros":
    assert (np.asarray(sim) == 0).all()  # a zero vector has cosine 0 with everything, itself included
  for p in picks:
    p = np.asarray(p)
    assert p.shape == (2, 12) and all(len(set(row)) == 12 for row in p)
  assert np.isfinite(np.asarray(reduced)).all()
  if kind == "duplicates":  # max-min rules: the first three picks cover the three distinct tokens (token i
    for p in (picks[0], picks[2]):  # is a copy of i // 10). Max-sum need not: see test_todre_covers_clusters_first
      np.testing.assert_array_equal(np.sort(np.asarray(p)[:, :3] // 10, axis=-1), [[0, 1, 2]] * 2)
  if kind == "one_zero_vector":  # distance 1 to everything, so it is among the most isolated
    assert 7 in np.asarray(picks[0])[0]


def test_zero_vector_is_isolated_in_closed_form():
  x = np.zeros((1, 4, 2), np.float32)
  x[0, 1:] = [[1, 0], [1, 1e-3], [0.999, 0]]  # three nearly parallel tokens and one zero vector
  assert int(_divprune_select(jnp.asarray(x), 1)[0, 0]) == 0


def test_jit_compiles_once():
  @jax.jit
  @chex.assert_max_traces(n=1)
  def reduce(x, score):
    tokens = Tokens.create(x, has_cls=True)
    return DivPrune(ratio=0.25)(tokens).x, ToDRE(ratio=0.25)(tokens, {"cls": score}).x

  for seed in range(3):
    rng = np.random.default_rng(seed)
    reduce(rng.standard_normal((2, 65, 16)).astype(np.float32), rng.uniform(size=(2, 65)).astype(np.float32))


def _todre_float64(x, pivot, k, mode):
  """Brute force: every step re-evaluates the criterion over the whole chosen set (no running sums)."""
  unit = x / np.linalg.norm(x, axis=-1, keepdims=True)
  sim = unit @ unit.T
  picks = [int(pivot)]
  while len(picks) < k:
    if mode == "max_sum":
      score = np.array([sum(sim[v, c] for c in picks) for v in range(len(x))])
      score[picks] = np.inf
      picks.append(int(np.argmin(score)))
    else:
      score = np.array([min(1.0 - sim[v, c] for c in picks) for v in range(len(x))])
      score[picks] = -np.inf
      picks.append(int(np.argmax(score)))
  return np.asarray(picks)


@pytest.mark.parametrize("mode", ["max_sum", "k_center"])
def test_todre_equals_float64_brute_force(mode):
  rng = np.random.default_rng(7)
  x = rng.standard_normal((2, 80, 12))
  score = rng.uniform(size=(2, 80))
  picks = np.asarray(_todre_select(jnp.asarray(x, jnp.float32), jnp.asarray(score, jnp.float32), 24, mode=mode))
  for b in range(2):
    np.testing.assert_array_equal(picks[b], _todre_float64(x[b], np.argmax(score[b]), 24, mode))
  assert (picks[:, 0] == score.argmax(-1)).all()  # the pivot is the top-[CLS]-attention token


@pytest.mark.parametrize("mode", ["max_sum", "k_center"])
def test_todre_covers_clusters_first(mode):
  """Tokens are scaled copies of 6 orthonormal centers: the first 6 picks hit 6 distinct clusters."""
  rng = np.random.default_rng(8)
  centers = np.linalg.qr(rng.standard_normal((16, 6)))[0].T  # (6, 16) orthonormal
  member = np.stack([rng.permutation(np.arange(60) % 6) for _ in range(2)])
  x = centers[member] * rng.uniform(0.5, 2.0, size=(2, 60, 1))
  score = rng.uniform(size=(2, 60))
  picks = np.asarray(_todre_select(jnp.asarray(x, jnp.float32), jnp.asarray(score, jnp.float32), 6, mode=mode))
  for b in range(2):
    assert sorted(member[b, picks[b]]) == list(range(6))
  divprune_picks = np.asarray(_divprune_select(jnp.asarray(x, jnp.float32), 6))
  for b in range(2):
    assert sorted(member[b, divprune_picks[b]]) == list(range(6))


def test_todre_reducer_and_plan_matrix():
  rng = np.random.default_rng(9)
  x = jnp.asarray(rng.standard_normal((2, 1 + 36, 8)), jnp.float32)
  cls = jnp.asarray(rng.uniform(size=(2, 37)), jnp.float32)

  @jax.jit
  def run(x, cls):
    tokens = Tokens.create(x, has_cls=True)
    out = ToDRE(ratio=0.25)(tokens, {"cls": cls})
    plan = ToDRE(ratio=0.25).plan(tokens, {"cls": cls})
    return (out.x, plan.index, jnp.einsum("bmn,bnc->bmc", plan_matrix(plan, tokens.size), x, precision="highest"),
            todre(tokens, cls, 0.25).x, divprune(tokens, 0.25).x, DivPrune(ratio=0.25)(tokens).x)

  out, index, via_matrix, out2, div, div2 = (np.asarray(a) for a in run(x, cls))
  assert out.shape == (2, 1 + 9, 8)
  np.testing.assert_array_equal(out, via_matrix)
  pivot = np.asarray(cls)[:, 1:].argmax(-1) + 1
  assert all(p in row for p, row in zip(pivot, index))
  np.testing.assert_array_equal(out2, out)
  np.testing.assert_array_equal(div, div2)


def test_invalid_arguments_name_the_field():
  for ratio in (0.0, -0.1, 1.5, float("nan"), True):
    with pytest.raises(ValueError, match="DivPrune.ratio"):
      DivPrune(ratio=ratio)
    with pytest.raises(ValueError, match="ToDRE.ratio"):
      ToDRE(ratio=ratio)
    with pytest.raises(ValueError, match="ratio"):
      keep_count(ratio, 10)
  with pytest.raises(ValueError, match="DivPrune.num_keep"):
    DivPrune(num_keep=0)
  with pytest.raises(ValueError, match="num_keep"):
    divprune_select(jnp.ones((1, 4, 2)), 0)
  with pytest.raises(ValueError, match="ToDRE.mode"):
    ToDRE(mode="k-center")
  with pytest.raises(ValueError, match="pivot_score"):
    todre_select(jnp.ones((1, 4, 2)), jnp.ones((1, 5)), 2)
  with pytest.raises(ValueError, match=r'metrics\["cls"\]'):
    ToDRE()(Tokens.create(jnp.ones((1, 4, 2))), {})
  masked = Tokens.create(jnp.ones((1, 4, 2))).replace(mask=jnp.ones((1, 4), bool))
  with pytest.raises(ValueError, match="DivPrune: tokens.mask"):
    DivPrune()(masked)
  with pytest.raises(ValueError, match="ToDRE: tokens.mask"):
    ToDRE()(masked, {"cls": jnp.ones((1, 4))})
