"""Every block method on one small ViT: jax.export round trip, visualisation, degenerate inputs."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import skimage.data
import skimage.transform

from tokax.models import ViT
from tokax.reduction import EViT, MCTF, PiToMe, Slim, ToMe
from tokax.reduction.dtome import DToMe
from tokax.reduction.visualize import draw_merges

DEPTH = 4
METHODS = {
    "tome": ToMe(r=8),
    "pitome": PiToMe(ratio=0.8),
    "mctf": MCTF(r=8),
    "evit": EViT(keep_rate=0.6, layers=(1, 2)),
    "evit_nofuse": EViT(keep_rate=0.6, layers=(1, 2), fuse_token=False),
    "dtome": DToMe(thresholds=(0.2,) * DEPTH),
    "slim": Slim(stage_blocks=(1, 1, 2)),
}


@pytest.fixture(scope="module")
def setup():
  model = ViT(variant="Ti/8", depth=DEPTH, image_size=64, num_classes=10)
  image = skimage.transform.resize(skimage.data.astronaut(), (64, 64), anti_aliasing=True).astype(np.float32)
  images = np.stack([image, image[::-1]])
  params = {}
  for name, method in METHODS.items():  # Slim adds its own parameters
    params[name] = model.clone(reduction=method).init(jax.random.key(0), images)
  return model, images, params


@pytest.mark.parametrize("name", sorted(METHODS))
def test_export_round_trip_gives_the_same_logits(setup, name):
  model, images, params = setup
  reduced = model.clone(reduction=METHODS[name])
  forward = jax.jit(reduced.apply)
  exported = jax.export.export(forward)(params[name], images)
  restored = jax.export.deserialize(exported.serialize())
  np.testing.assert_allclose(restored.call(params[name], images), forward(params[name], images), rtol=1e-6, atol=1e-6)
  assert "stablehlo" in exported.mlir_module()[:2000] or "func.func" in exported.mlir_module()


@pytest.mark.parametrize("name", sorted(METHODS))
def test_merge_map_draws_every_method(setup, name):
  model, images, params = setup
  _, inter = model.clone(reduction=METHODS[name]).apply(params[name], images, return_intermediates=True)
  assign = np.asarray(inter["assign"][0])
  picture = draw_merges(images[0], assign, patch_size=8, num_prefix=1)
  assert picture.shape == (64, 64, 3) and picture.dtype == np.uint8
  patches = assign[1:]
  if name == "evit_nofuse":  # pruned patches are drawn dark grey
    centres = picture[4::8, 4::8]  # one pixel inside every patch, away from the outlines
    assert (patches < 0).any() and np.allclose(centres[patches.reshape(8, 8) < 0], 51, atol=1)
  else:
    assert (patches >= 0).all() and len(np.unique(patches)) < patches.size  # patches share tokens


@pytest.mark.parametrize("name", sorted(METHODS))
@pytest.mark.parametrize("case", ["constant", "duplicate_tokens"])
def test_degenerate_images_give_finite_logits(setup, name, case):
  model, _, params = setup
  if case == "constant":
    images = np.full((2, 64, 64, 3), 0.3, np.float32)
  else:  # one 8x8 patch tiled: every patch token identical, positions differ
    patch = np.random.default_rng(0).uniform(size=(1, 8, 8, 3)).astype(np.float32)
    images = np.tile(patch, (2, 8, 8, 1))
  logits = model.clone(reduction=METHODS[name]).apply(params[name], images)
  assert np.isfinite(np.asarray(logits)).all()


@pytest.mark.parametrize("method", [ToMe(r=1000), PiToMe(ratio=0.5), MCTF(r=1000), EViT(keep_rate=0.01, layers=(0, 1, 2, 3)),
                                    DToMe(thresholds=(-float("inf"),) * DEPTH)])
def test_amounts_beyond_the_tokens_are_clipped(setup, method):
  """Every method clips an amount it cannot apply to what the tokens allow; none crashes."""
  model, images, _ = setup
  reduced = model.clone(reduction=method)
  params = reduced.init(jax.random.key(0), images)
  logits, inter = reduced.apply(params, images, return_intermediates=True)
  counts = np.asarray(inter["num_tokens"])
  assert np.isfinite(np.asarray(logits)).all() and counts.min() >= 2 and np.all(np.diff(counts) <= 0)
