"""apply_plan equals multiplying by the plan's token matrix T, for every plan form."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokax.reduction import (DensePlan, MergePlan, SelectPlan, Tokens, apply_plan, bipartite_matching_plan,
                             plan_matrix, source_matrix)


def _tokens(seed=0, b=2, n=9, c=5):
  rng = np.random.default_rng(seed)
  t = Tokens.create(jnp.asarray(rng.standard_normal((b, n, c)), jnp.float32))
  return t.replace(size=jnp.asarray(rng.integers(1, 5, size=(b, n)), jnp.float32))


def test_merge_plan_is_size_weighted_mean():
  t = _tokens()
  dst = jnp.asarray([[0, 1, 1, 2, 0, 3, 3, 3, 2], [0, 0, 1, 1, 2, 2, 3, 3, 3]], jnp.int32)
  plan = MergePlan(dst=dst, num_out=4)
  out = apply_plan(t, plan)
  x, s, d = np.asarray(t.x, np.float64), np.asarray(t.size), np.asarray(dst)
  for b in range(2):
    for j in range(4):
      members = d[b] == j
      np.testing.assert_allclose(out.x[b, j], (x[b, members] * s[b, members, None]).sum(0) / s[b, members].sum(),
                                 rtol=1e-5)
      assert out.size[b, j] == s[b, members].sum()
  np.testing.assert_allclose(out.x, jnp.einsum("bmn,bnc->bmc", plan_matrix(plan, t.size), t.x), rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(out.assign, dst)  # from the identity assignment


def test_select_plan_gathers_and_marks_dropped():
  t = _tokens()
  plan = SelectPlan(index=jnp.asarray([[0, 4, 2], [0, 1, 8]], jnp.int32))
  out = apply_plan(t, plan)
  np.testing.assert_array_equal(out.x, jnp.einsum("bmn,bnc->bmc", plan_matrix(plan, t.size), t.x))
  np.testing.assert_array_equal(out.assign[0], [0, -1, 2, -1, 1, -1, -1, -1, -1])
  np.testing.assert_array_equal(out.size, np.take_along_axis(np.asarray(t.size), np.asarray(plan.index), 1))


def test_dense_plan_and_chained_assignment():
  t = _tokens()
  rng = np.random.default_rng(3)
  matrix = jnp.asarray(rng.uniform(size=(2, 4, 9)) * (rng.uniform(size=(2, 4, 9)) > 0.5), jnp.float32)
  out = apply_plan(t, DensePlan(matrix))
  np.testing.assert_allclose(out.x, jnp.einsum("bmn,bnc->bmc", matrix, t.x), rtol=1e-6)


@pytest.mark.parametrize("has_cls", [True, False])
def test_bipartite_plan_matches_brute_force(has_cls):
  rng = np.random.default_rng(1)
  metric = rng.standard_normal((3, 11, 6)).astype(np.float32)
  r = 4
  plan = bipartite_matching_plan(jnp.asarray(metric), r, has_cls=has_cls, has_dist=False)
  groups = np.asarray(source_matrix(plan.dst, plan.num_out))  # (B, N', N)
  m = metric / np.linalg.norm(metric, axis=-1, keepdims=True)
  for b in range(3):
    a, bb = m[b, 0::2], m[b, 1::2]
    sim = a @ bb.T
    if has_cls:
      sim[0] = -np.inf
    best = sim.max(1)
    merged = np.argsort(-best, kind="stable")[:r]
    expect = {}
    for i in range(a.shape[0]):
      key = ("b", int(sim[i].argmax())) if i in merged else ("a", i)
      expect.setdefault(key, set()).add(2 * i)
    for j in range(bb.shape[0]):
      expect.setdefault(("b", j), set()).add(2 * j + 1)
    got = {frozenset(np.flatnonzero(row)) for row in groups[b]}
    assert got == {frozenset(v) for v in expect.values()}


def test_matmul_and_scatter_merges_agree():
  t = _tokens(seed=5, n=12)
  t = t.replace(mask=jnp.asarray(np.random.default_rng(2).uniform(size=(2, 12)) > 0.2))
  plan = bipartite_matching_plan(t.x, 5, has_cls=True, has_dist=False)
  a = apply_plan(t, plan, method="scatter")
  b = apply_plan(t, plan, method="matmul")
  np.testing.assert_allclose(a.x, b.x, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(a.size, b.size)
  np.testing.assert_array_equal(a.assign, b.assign)
  np.testing.assert_array_equal(a.mask, b.mask)
