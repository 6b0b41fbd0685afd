"""xAR metrics against closed forms (the train -> sample path runs in notebooks/xar.ipynb)."""
import numpy as np
import scipy.linalg

from tokax.bench import xar_metrics

def test_frechet_distance_closed_form():
  rng = np.random.default_rng(0)
  a = rng.standard_normal((4000, 3))
  b = rng.standard_normal((4000, 3)) * 2 + 1
  s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
  want = np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(s_a + s_b - 2 * scipy.linalg.sqrtm(s_a @ s_b).real)
  assert abs(xar_metrics.frechet_distance(a, b) - want) < 1e-8
  assert abs(want - (3 * 1 + 3 * (1 + 4 - 4))) < 0.4  # N(0, I) vs N(1, 4I): 3 + 3 (1 + 4 - 2 * 2)
  assert abs(xar_metrics.frechet_distance(a, a)) < 1e-8


def test_nearest_neighbour_distance_brute_force():
  rng = np.random.default_rng(1)
  q, r = rng.uniform(size=(5, 4, 4, 3)), rng.uniform(size=(7, 4, 4, 3))
  brute = np.mean([min(np.linalg.norm(x.mean(-1) - y.mean(-1)) for y in r) for x in q])
  assert abs(xar_metrics.nearest_neighbour_distance(q, r) - brute) < 1e-10
