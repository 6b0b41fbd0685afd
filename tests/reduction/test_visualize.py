import numpy as np
import pytest

from tokax.reduction.visualize import draw_merges, patch_groups


def test_groups_take_their_mean_colour():
  rng = np.random.default_rng(0)
  image = rng.uniform(size=(8, 8, 3))
  # cls token + 4 patches of 4x4: patches 0 and 3 share token 1; patch 1 is token 2; patch 2 pruned.
  assign = np.array([0, 1, 2, -1, 1])
  out = draw_merges(image, assign, patch_size=4, num_prefix=1, boundary=0.0).astype(float) / 255
  shared = np.concatenate([image[:4, :4].reshape(-1, 3), image[4:, 4:].reshape(-1, 3)]).mean(0)
  np.testing.assert_allclose(out[0, 0], shared, atol=1 / 255)
  np.testing.assert_allclose(out[7, 7], shared, atol=1 / 255)
  np.testing.assert_allclose(out[0, 4], image[:4, 4:].reshape(-1, 3).mean(0), atol=1 / 255)
  np.testing.assert_allclose(out[5, 1], 0.2, atol=1 / 255)


def test_boundaries_darken_group_edges_only():
  image = np.full((8, 8, 3), 0.8)
  out = draw_merges(image, np.array([0, 1, 1, 2, 2]), patch_size=4, boundary=0.5)
  assert out[3, 2, 0] < out[1, 1, 0]  # row 3 borders the other group below
  assert out[1, 3, 0] == out[1, 1, 0]  # patches 0 and 1 are one group: no edge between them


def test_bad_grid_is_refused():
  with pytest.raises(ValueError, match="grid"):
    patch_groups(np.arange(6), 1, (2, 3))
