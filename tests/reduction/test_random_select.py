"""Random selection ("random", the DivPrune / FasterVLM papers' baseline; no official code): a float64 numpy
re-implementation from the same uniform draws, the kept set's invariants, seeds, per-token keep frequencies, the ViT
post-encoder path, and validation."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokax.bench.measure import post_forward
from tokax.models import ViT
from tokax.reduction import FasterVLM, RandomSelect, Tokens, build

from random_variables import random_variables
from vit_testing import fast_compile


@functools.partial(jax.jit, static_argnums=(0, 2, 3))
def select(reducer, x, has_cls=True, has_dist=False):
  """reducer(Tokens (B, N, C)), one compile per (reducer, shape, prefix)."""
  return reducer(Tokens.create(x, has_cls=has_cls, has_dist=has_dist))


def features(shape, seed=0):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def numpy_select(x, ratio, seed, prefix):
  """float64 reference: the top-k of the same uniform draws (ties: lower index), in original order.

  Returns (kept features (B, k, C), kept original indices (B, k), assign (B, N))."""
  batch, n, _ = x.shape
  k = max(1, int((n - prefix) * ratio))
  draws = np.asarray(jax.random.uniform(jax.random.key(seed), (batch, n - prefix)), np.float64)
  index = np.sort(np.argsort(-draws, axis=1, kind="stable")[:, :k], axis=1) + prefix
  assign = np.full((batch, n), -1)
  for b in range(batch):
    assign[b, index[b]] = np.arange(k)
  return np.take_along_axis(x.astype(np.float64), index[:, :, None], axis=1), index, assign


@pytest.mark.parametrize("prefix", [0, 1, 2])
@pytest.mark.parametrize("ratio,seed", [(0.25, 0), (0.6, 7)])
def test_equals_the_numpy_reference(prefix, ratio, seed):
  x = features((3, 19, 8))
  out = select(RandomSelect(ratio=ratio, seed=seed), jnp.asarray(x), prefix >= 1, prefix == 2)
  kept, index, assign = numpy_select(x, ratio, seed, prefix)
  k = max(1, int((19 - prefix) * ratio))
  assert out.x.shape == (3, k, 8) and out.num_prefix == 0 and not out.has_cls and not out.has_dist
  np.testing.assert_array_equal(np.asarray(out.x, np.float64), kept)
  np.testing.assert_array_equal(np.asarray(out.assign), assign)
  np.testing.assert_array_equal(np.asarray(out.size), np.ones((3, k)))
  for b in range(3):  # k distinct patch tokens in increasing original order, the prefix dropped
    assert np.all(np.diff(index[b]) > 0) and index[b].min() >= prefix
    assert np.all(assign[b, :prefix] == -1)


@pytest.mark.parametrize("ratio", [0.9, 0.5, 0.25, 0.1, 0.01, 1.0])
def test_keeps_fastervlms_count(ratio):
  for n, prefix in ((65, 1), (577, 1), (198, 2), (49, 0)):
    want = max(1, int((n - prefix) * ratio))
    assert RandomSelect(ratio=ratio).output_tokens(n, prefix) == FasterVLM(ratio=ratio).output_tokens(n, prefix) == want


def test_ratio_one_keeps_every_patch_token_in_order():
  x = features((2, 17, 4), seed=1)
  out = select(RandomSelect(ratio=1.0, seed=3), jnp.asarray(x))
  np.testing.assert_array_equal(np.asarray(out.x), x[:, 1:])


def test_seeds():
  x = jnp.asarray(features((8, 33, 4), seed=2))
  first, again, other = (np.asarray(select(RandomSelect(0.25, seed=s), x).assign) for s in (5, 5, 6))
  np.testing.assert_array_equal(first, again)
  assert not np.array_equal(first >= 0, other >= 0)
  kept = first[:, 1:] >= 0  # (B, N - P): per-image subsets, not one subset for the batch
  assert len({tuple(row) for row in kept}) > 1


def test_every_patch_token_is_kept_with_frequency_k_over_n():
  images, patches, ratio = 4000, 16, 0.25
  k = max(1, int(patches * ratio))
  x = jnp.asarray(features((images, 1 + patches, 2), seed=3))
  kept = np.asarray(select(RandomSelect(ratio=ratio, seed=11), x).assign)[:, 1:] >= 0  # (images, patches)
  assert np.all(kept.sum(1) == k)
  p = k / patches
  tolerance = 5 * np.sqrt(p * (1 - p) / images)  # 5 sigma of a binomial frequency: about 0.034
  np.testing.assert_array_less(np.abs(kept.mean(0) - p), tolerance)
  assert len({tuple(row) for row in kept}) > 1000  # of C(16, 4) = 1820 subsets: images draw independently


TINY = ViT(variant="Ti/4", width=32, depth=4, num_heads=2, mlp_dim=64, image_size=32, num_classes=10)


def test_post_encoder_path_through_vit():
  """tokax.bench.measure's post path (as evaluate and the sweep run FasterVLM): the dense encoder, then the
  reducer on its output tokens, then the head on the mean of the kept tokens (no [CLS] left)."""
  params = random_variables(TINY, (32, 32, 3))
  images = np.random.default_rng(4).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  reducer = build("random:0.5,seed=3")
  assert reducer == RandomSelect(ratio=0.5, seed=3)
  logits, reduced = jax.jit(post_forward(TINY, reducer), compiler_options=fast_compile())(params, images)
  _, inter = jax.jit(functools.partial(TINY.apply, return_intermediates=True),
                     compiler_options=fast_compile())(params, images)
  dense = np.asarray(inter["features"])  # (2, 65, 32), the normed encoder output
  kept, index, assign = numpy_select(dense, 0.5, 3, 1)
  assert reduced.x.shape == (2, 32, 32) and reduced.num_prefix == 0
  np.testing.assert_allclose(np.asarray(reduced.x), kept, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(reduced.assign), assign)
  head = params["params"]["head"]
  expected = kept.mean(1) @ np.asarray(head["kernel"], np.float64) + np.asarray(head["bias"], np.float64)
  np.testing.assert_allclose(np.asarray(logits), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("bad", [0, 0.0, -0.5, 1.5, float("nan"), True, "0.5", None])
def test_bad_ratio(bad):
  with pytest.raises(ValueError, match=r"RandomSelect\.ratio"):
    RandomSelect(ratio=bad)


@pytest.mark.parametrize("bad", [-1, 2**32, 1.0, 0.5, True, False, "0", None])
def test_bad_seed(bad):
  with pytest.raises(ValueError, match=r"RandomSelect\.seed"):
    RandomSelect(seed=bad)
  with pytest.raises(ValueError, match=r"RandomSelect\.seed"):
    build(dict(name="random", ratio=0.5, seed=bad))


def test_seed_normalised_and_hashable():
  method = RandomSelect(ratio=1, seed=np.int64(4))
  assert type(method.seed) is int and type(method.ratio) is float and hash(method) == hash(RandomSelect(1.0, 4))
