"""Entity groupings: bijections, brute-force masks, round trips, the official cell layout."""
import numpy as np
import pytest

from tokax.models.entities import make_entities

PERMUTATION_CASES = [("patch", 6, 0), ("cell", 6, 2), ("cell", 6, 3), ("cell", 16, 8), ("subsample", 6, 3),
                     ("subsample", 8, 2), ("image", 5, 0)]


@pytest.mark.parametrize("kind,grid,size", PERMUTATION_CASES)
def test_permutation_entities(kind, grid, size):
  ents = make_entities(kind, grid, size)
  assert sorted(ents.order) == list(range(grid * grid))  # a bijection
  assert np.all(np.diff(ents.entity_id) >= 0)
  expected_entities = {"patch": grid * grid, "image": 1}.get(kind, (grid // max(size, 1)) ** 2 if kind == "cell"
                                                            else size * size)
  assert ents.num_entities == expected_entities
  # brute force: token at raster (r, c) belongs to the entity the definition says
  rows, cols = np.divmod(ents.order, grid)
  for pos in range(ents.seq_len):
    r, c = rows[pos], cols[pos]
    want = {"patch": r * grid + c, "image": 0,
            "cell": (r // max(size, 1)) * (grid // max(size, 1)) + c // max(size, 1),
            "subsample": (r % max(size, 1)) * max(size, 1) + c % max(size, 1)}[kind]
    assert ents.entity_id[pos] == want
  np.testing.assert_array_equal(ents.positions, np.stack([rows, cols], -1))
  mask = ents.block_causal_mask()
  brute = np.array([[ents.entity_id[j] <= ents.entity_id[i] for j in range(ents.seq_len)]
                    for i in range(ents.seq_len)])
  np.testing.assert_array_equal(mask, brute)
  latent = np.random.default_rng(grid).standard_normal((2, grid, grid, 3))
  seq = ents.to_sequence(latent)
  np.testing.assert_array_equal(ents.from_sequence(seq), latent)
  np.testing.assert_array_equal(seq[:, 0], latent[:, 0, 0])


def test_cells_match_official_clusterify():
  """Official clusterify: (B, C, 16, 16) -> reshape (B, C, 2, 8, 2, 8) -> 'nchpwq->nhwpqc' -> (B, 256, C)."""
  ents = make_entities("cell", 16, 8)
  x = np.random.default_rng(0).standard_normal((2, 5, 16, 16))
  official = np.einsum("nchpwq->nhwpqc", x.reshape(2, 5, 2, 8, 2, 8)).reshape(2, 256, 5)
  np.testing.assert_array_equal(ents.to_sequence(x.transpose(0, 2, 3, 1)), official)
  np.testing.assert_array_equal(ents.sizes, [64] * 4)


def test_scale_entities_are_area_pyramids():
  ents = make_entities("scale", 8)
  assert ents.scales == (2, 4, 8) and ents.seq_len == 4 + 16 + 64 and not ents.is_permutation
  latent = np.random.default_rng(1).standard_normal((1, 8, 8, 2))
  seq = ents.to_sequence(latent)
  np.testing.assert_allclose(seq[0, 0], latent[0, :4, :4].mean((0, 1)))
  np.testing.assert_allclose(seq[0, 4 + 5], latent[0, 2:4, 2:4].mean((0, 1)))  # scale 4, row 1, col 1
  np.testing.assert_array_equal(ents.from_sequence(seq), latent)
  np.testing.assert_allclose(ents.positions[0], [1.5, 1.5])  # centre of the top-left 4x4 block
  assert ents.uniform_size is None and list(ents.offsets) == [0, 4, 20, 84]


@pytest.mark.parametrize("kwargs,match", [
    (dict(kind="cell", grid=6, size=4), "positive divisor"),
    (dict(kind="subsample", grid=6, size=0), "positive divisor"),
    (dict(kind="hexagon", grid=6), "unknown kind"),
    (dict(kind="scale", grid=8, scales=(2, 3, 8)), "increasing divisors"),
])
def test_bad_entities_name_the_field(kwargs, match):
  with pytest.raises(ValueError, match=match):
    make_entities(**kwargs)
