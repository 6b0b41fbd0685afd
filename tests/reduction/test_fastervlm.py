"""FasterVLM's [CLS]-attention selection equals the official Theia-4869/FasterVLM code
(golden in tests/golden/fastervlm_selection.*), plus ties, clipping, jit and validation."""
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokax.reduction import Tokens, plan_matrix
from tokax.reduction.evit import cls_select, cls_select_plan


@pytest.fixture(scope="module")
def golden():
  from conftest import TESTS
  meta = json.loads((TESTS / "golden" / "fastervlm_selection.json").read_text())
  return meta, dict(np.load(TESTS / "golden" / "fastervlm_selection.npz"))


def _keeps(meta, dtype):
  return [c["keep"] for c in meta["cases"] if c["tag"].startswith(dtype)]


def test_head_mean_equals_official(golden):
  _, data = golden
  score = np.asarray(jnp.mean(jnp.asarray(data["attn_cls"]), axis=1))  # what metrics["cls"] holds
  np.testing.assert_allclose(score[:, 1:], data["fp32_score"], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_selection_equals_official(golden, dtype):
  meta, data = golden
  features = jnp.asarray(data["features"])
  if dtype == "fp32":
    score = jnp.mean(jnp.asarray(data["attn_cls"]), axis=1)
  else:  # the official fp16 head mean (fp16 values, with ties), [CLS] column prepended (unused)
    score = jnp.concatenate([jnp.ones((2, 1)), jnp.asarray(data["fp16_score"])], axis=1)
  for keep in _keeps(meta, dtype):
    plan = cls_select_plan(score, keep)
    mask = data[f"{dtype}_t{keep}_mask"]
    expected = np.stack([np.flatnonzero(m) + 1 for m in mask])  # official: original order, [CLS] dropped
    np.testing.assert_array_equal(np.asarray(plan.index), expected)
    t = np.asarray(plan_matrix(plan, jnp.ones(score.shape)))
    np.testing.assert_array_equal(t[:, :, 1:].sum(1), mask.astype(np.float32))  # T: one-hot rows of the kept set
    out = cls_select(Tokens.create(features), score, keep)
    assert not out.has_cls and out.x.shape == (2, keep, features.shape[-1])
    if dtype == "fp32":
      np.testing.assert_array_equal(np.asarray(out.x), data[f"fp32_t{keep}_selected"])
    else:  # the official fp16 path casts the features to fp16
      np.testing.assert_allclose(np.asarray(out.x), data[f"fp16_t{keep}_selected"], rtol=1e-3, atol=1e-3)
    assigned = np.asarray(out.assign)
    np.testing.assert_array_equal(assigned[:, 0], -1)  # [CLS] dropped
    np.testing.assert_array_equal((assigned[:, 1:] >= 0), mask)


def test_ties_at_the_boundary_keep_the_lower_index():
  # torch.topk leaves the order of equal scores unspecified (FasterVLM runs its tower in fp16, where
  # equal scores happen); tokax keeps the lower index among equal scores at the boundary.
  score = jnp.asarray([[0.5, 0.1, 0.3, 0.2, 0.2, 0.2, 0.05]])
  np.testing.assert_array_equal(np.asarray(cls_select_plan(score, 3).index), [[2, 3, 4]])


def test_per_image_selection_and_clipping():
  rng = np.random.default_rng(0)
  score = jnp.asarray(rng.random((3, 10)))
  x = jnp.asarray(rng.standard_normal((3, 10, 4)).astype(np.float32))
  out = cls_select(Tokens.create(x), score, 4)
  for b in range(3):
    keep = np.sort(np.argsort(-np.asarray(score[b, 1:]))[:4]) + 1
    np.testing.assert_array_equal(np.asarray(out.x[b]), np.asarray(x[b, keep]))
  everything = cls_select(Tokens.create(x), score, 100)  # more than there is: every patch token, in order
  np.testing.assert_array_equal(np.asarray(everything.x), np.asarray(x[:, 1:]))


def test_distillation_token_dropped_too():
  score = jnp.asarray([[0.4, 0.3, 0.1, 0.2]])
  x = jnp.arange(8.0).reshape(1, 4, 2)
  out = cls_select(Tokens.create(x, has_dist=True), score, 1)
  np.testing.assert_array_equal(np.asarray(out.x), [[[6.0, 7.0]]])
  assert not out.has_dist and out.num_prefix == 0


def test_jit_compiles_once():
  @jax.jit
  @chex.assert_max_traces(n=1)
  def select(x, score):
    return cls_select(Tokens.create(x), score, 5).x

  for seed in range(3):
    k1, k2 = jax.random.split(jax.random.key(seed))
    out = select(jax.random.normal(k1, (2, 17, 8)), jax.nn.softmax(jax.random.normal(k2, (2, 17))))
  assert out.shape == (2, 5, 8)


def test_constant_scores_and_duplicate_tokens():
  x = jnp.broadcast_to(jnp.asarray([1.0, -2.0, 3.0]), (2, 9, 3))  # every token the same vector
  score = jnp.full((2, 9), 1 / 9)
  out = cls_select(Tokens.create(x), score, 4)
  np.testing.assert_array_equal(np.asarray(out.assign[:, 1:5]), np.broadcast_to(np.arange(4), (2, 4)))
  assert np.isfinite(np.asarray(out.x)).all()


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, None])
def test_invalid_num_keep(bad):
  with pytest.raises(ValueError, match="num_keep"):
    cls_select_plan(jnp.ones((1, 5)), bad)


def test_needs_a_class_token():
  with pytest.raises(ValueError, match="class token"):
    cls_select(Tokens.create(jnp.ones((1, 4, 2)), has_cls=False), jnp.ones((1, 4)), 2)
