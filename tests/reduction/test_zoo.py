"""Every method on one small ViT: the registry contract (over tokax.reduction.METHODS, here REGISTRY, so a new method is
tested without edits), jax.export round trip, visualisation, degenerate inputs.

One model (4 blocks, 8 x 8 patches + cls) and one image batch throughout, run through the jitted `init` and `forward`
below: each (method, shape) compiles once per process, and the methods without parameters share one dense init.
"""
import dataclasses
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import skimage.data
import skimage.transform

from tokax.models import ViT
from tokax.reduction import PLACEMENTS, EViT, MCTF, PiToMe, Slim, ToMe, Tokens, build, calibrate_dtome
from tokax.reduction.base import PROTOCOLS, Method
from tokax.reduction.registry import METHODS as REGISTRY, fields_of
from tokax.reduction.dtome import DToMe
from tokax.reduction.visualize import draw_merges

from random_variables import random_variables
from vit_testing import fast_compile

TINY = dict(variant="Ti/4", width=32, depth=4, num_heads=2, mlp_dim=64, image_size=32, num_classes=10)
DEPTH, PATCH, NUM_TOKENS = TINY["depth"], 4, 65  # 8 x 8 patches + cls
MODEL = ViT(**TINY)
METHODS = {
    "tome": ToMe(r=8),
    "pitome": PiToMe(ratio=0.6),
    "mctf": MCTF(r=8),
    "evit": EViT(keep_rate=0.6, layers=(1, 2)),
    "evit_nofuse": EViT(keep_rate=0.6, layers=(1, 2), fuse_token=False),
    "dtome": DToMe(thresholds=(0.2,) * DEPTH),
    "slim": Slim(stage_blocks=(1, 1, 2)),
}


@functools.partial(jax.jit, static_argnums=0, compiler_options=fast_compile())
def init(model, images):
  return model.init(jax.random.key(0), images)


@functools.partial(jax.jit, static_argnums=0, compiler_options=fast_compile())
def forward(model, params, images):
  return model.apply(params, images, return_intermediates=True)


@pytest.fixture(scope="module")
def images():
  image = skimage.transform.resize(skimage.data.astronaut(), (32, 32), anti_aliasing=True).astype(np.float32)
  return np.stack([image, image[::-1]])


@pytest.fixture(scope="module")
def dense(images):
  """Parameters of every method but Slim (the only one that adds its own)."""
  return init(MODEL, images)


def params_for(method, dense, images):
  return init(MODEL.clone(reduction=method), images) if method.placement == "end" else dense


@pytest.mark.parametrize("name", sorted(METHODS))
def test_export_round_trip_gives_the_same_outputs(dense, images, name):
  reduced = MODEL.clone(reduction=METHODS[name])
  params = params_for(METHODS[name], dense, images)
  exported = jax.export.export(jax.jit(functools.partial(reduced.apply, return_intermediates=True)))(params, images)
  restored = jax.export.deserialize(exported.serialize())
  call = jax.jit(restored.call, compiler_options=fast_compile())
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6),
               call(params, images), forward(reduced, params, images))
  assert "stablehlo" in exported.mlir_module()[:2000] or "func.func" in exported.mlir_module()


@pytest.mark.parametrize("name", sorted(METHODS))
def test_merge_map_draws_every_method(dense, images, name):
  reduced = MODEL.clone(reduction=METHODS[name])
  _, inter = forward(reduced, params_for(METHODS[name], dense, images), images)
  assign = np.asarray(inter["assign"][0])
  picture = draw_merges(images[0], assign, patch_size=PATCH, num_prefix=1)
  assert picture.shape == (32, 32, 3) and picture.dtype == np.uint8
  patches = assign[1:]
  if name == "evit_nofuse":  # pruned patches are drawn dark grey
    centres = picture[PATCH // 2::PATCH, PATCH // 2::PATCH]  # one pixel inside every patch, away from the outlines
    assert (patches < 0).any() and np.allclose(centres[patches.reshape(8, 8) < 0], 51, atol=1)
  else:
    assert (patches >= 0).all() and len(np.unique(patches)) < patches.size  # patches share tokens


@pytest.mark.parametrize("name", sorted(METHODS))
@pytest.mark.parametrize("case", ["constant", "duplicate_tokens"])
def test_degenerate_images_give_finite_logits(dense, images, name, case):
  if case == "constant":
    bad = np.full(images.shape, 0.3, np.float32)
  else:  # one patch tiled: every patch token identical, positions differ
    patch = np.random.default_rng(0).uniform(size=(1, PATCH, PATCH, 3)).astype(np.float32)
    bad = np.tile(patch, (2, 8, 8, 1))
  logits, inter = forward(MODEL.clone(reduction=METHODS[name]), params_for(METHODS[name], dense, images), bad)
  assert np.isfinite(np.asarray(logits)).all() and np.isfinite(np.asarray(inter["features"])).all()


@pytest.mark.parametrize("method", [ToMe(r=1000), PiToMe(ratio=0.5), MCTF(r=1000), EViT(keep_rate=0.01, layers=(0, 1, 2, 3)),
                                    DToMe(thresholds=(-float("inf"),) * DEPTH)])
def test_amounts_beyond_the_tokens_are_clipped(dense, images, method):
  """Every method clips an amount it cannot apply to what the tokens allow; none crashes."""
  logits, inter = forward(MODEL.clone(reduction=method), dense, images)
  counts = np.asarray(inter["num_tokens"])
  assert np.isfinite(np.asarray(logits)).all() and counts.min() >= 2 and np.all(np.diff(counts) <= 0)


# --- the registry contract, for every entry of REGISTRY ------------------------------------------------

def two_strengths(cls):
  """Two valid strengths: counts for an int strength field, kept fractions otherwise."""
  default = next(f.default for f in dataclasses.fields(cls) if f.name == cls.strength_field)
  if isinstance(default, int) and not isinstance(default, bool):
    return (2, 8)
  return (0.9, 0.6)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_class_states_its_contract(name):
  cls = REGISTRY[name]
  assert isinstance(cls(), Method)
  assert cls.placement in PLACEMENTS and isinstance(cls.scores, tuple)
  assert cls.strength_field in fields_of(cls), f"{name}: strength_field must name a field"
  for fact in ("placement", "scores", "strength_field", "needs_calibration", "variable_tokens"):
    assert fact not in fields_of(cls), f"{name}.{fact} must be a ClassVar, not a field"
  assert isinstance(cls(), PROTOCOLS[cls.placement])
  for other, protocol in PROTOCOLS.items():  # no method carries the hooks of another placement
    assert other == cls.placement or not isinstance(cls(), protocol), (name, other)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_short_string_equals_the_dict_and_sets_the_strength(name):
  cls = REGISTRY[name]
  for strength in two_strengths(cls):
    built = build(f"{name}:{strength}")
    assert built == build(dict(name=name, **{cls.strength_field: strength})) == cls(**{cls.strength_field: strength})
    assert getattr(built, cls.strength_field) == strength
  assert build(name) == cls()


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_bad_names_fields_and_strengths_fail_naming_them(name):
  cls = REGISTRY[name]
  with pytest.raises(ValueError, match=f"unknown fields \\['bogus'\\]; {cls.__name__} has fields"):
    build(dict(name=name, bogus=1))
  for bad in (-1, 1.5):
    with pytest.raises(ValueError, match=re.escape(f"{cls.__name__}.{cls.strength_field}")):
      build(f"{name}:{bad}")


def test_unknown_name_lists_the_registry_and_none_means_dense():
  with pytest.raises(ValueError, match="unknown method 'tomee'.*'tome'"):
    build("tomee:16")
  with pytest.raises(ValueError, match="has no 'name'"):
    build(dict(r=16))
  with pytest.raises(ValueError, match="takes no fields"):
    build(dict(name="none", r=0))
  assert build(None) is build("none") is build(dict(name="none")) is None
  assert build("tome:16,-1") == ToMe(r=(16, -1))
  assert build("evit:0.7,fuse_token=False,layers=(1, 2)") == EViT(keep_rate=0.7, fuse_token=False, layers=(1, 2))
  with pytest.raises(ValueError, match="needs calibration"):
    build("dtome:4", calibration=False)


def test_config_dicts_build_like_dicts():
  import ml_collections

  config = ml_collections.ConfigDict(dict(reduction=dict(name="mctf", r=4, activate_layers=(1, 2))))
  assert build(config.reduction) == MCTF(r=4, activate_layers=(1, 2))


def _block_counts(method, dense, images):
  """Token counts do not depend on the weights: a method's own parameters (Slim's) are drawn from their shapes
  (random_variables), not initialised by one more init program per strength."""
  model = MODEL.clone(reduction=method)
  params = random_variables(model, images.shape[1:]) if method.placement == "end" else dense
  _, inter = forward(model, params, images)
  return tuple(int(n) for n in inter["num_tokens"])


@pytest.mark.parametrize("name", sorted(n for n, c in REGISTRY.items() if c.placement != "post"))
def test_token_counts_equal_the_forward(dense, images, name):
  cls = REGISTRY[name]
  counts = []
  for strength in two_strengths(cls):
    method = build(f"{name}:{strength}")
    got = _block_counts(method, dense, images)
    assert got == method.token_counts(NUM_TOKENS, DEPTH, 1), strength
    counts.append(got)
    if cls.needs_calibration and strength == two_strengths(cls)[-1]:  # once: the calibrated model's counts are
      # its static shapes, the same code path at any strength (only the threshold values differ)
      calibrated = calibrate_dtome(MODEL, dense, [images], method)
      assert _block_counts(calibrated, dense, images) == calibrated.token_counts(NUM_TOKENS, DEPTH, 1)
  if not cls.variable_tokens:
    assert counts[0] != counts[1] and counts[1][-1] < NUM_TOKENS  # the strength does something


@pytest.mark.parametrize("name", sorted(n for n, c in REGISTRY.items() if c.placement == "post"))
def test_post_reducers_report_their_output_tokens(name):
  cls = REGISTRY[name]
  x = jax.random.normal(jax.random.key(0), (2, NUM_TOKENS, 16))
  cls_row = jax.nn.softmax(jax.random.normal(jax.random.key(1), (2, NUM_TOKENS)), axis=-1)
  outs = []
  for strength in two_strengths(cls):
    reducer = build(f"{name}:{strength}")
    call = lambda x, c: reducer(Tokens.create(x), {"cls": c})  # one call signature for every post reducer
    out = jax.jit(call)(x, cls_row)
    assert out.num_tokens == reducer.output_tokens(NUM_TOKENS, 1) < NUM_TOKENS
    outs.append(out.num_tokens)
  assert outs[0] != outs[1]
  with pytest.raises(ValueError, match="post-encoder"):
    MODEL.clone(reduction=build(name)).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


@dataclasses.dataclass(frozen=True)
class Spy:
  """A block method that records which hooks the block calls, then delegates to `inner`."""
  inner: object

  def __getattr__(self, name):
    if name == "inner":
      raise AttributeError(name)
    value = getattr(self.inner, name)
    if name not in ("reduce", "attention_layer", "reduce_with_attention", "module"):
      return value

    def hook(*args, **kwargs):
      CALLS.add(name)
      return value(*args, **kwargs)
    return hook


CALLS: set = set()
HOOKS = {"mid": {"reduce"}, "pre": {"attention_layer", "reduce_with_attention"}, "end": {"module"}}


@pytest.mark.parametrize("name", sorted(n for n, c in REGISTRY.items() if c.placement != "post"))
def test_the_block_calls_the_hooks_of_the_placement(images, name):
  CALLS.clear()
  spied = MODEL.clone(reduction=Spy(build(name)))
  jax.eval_shape(lambda x: spied.init(jax.random.key(0), x), images)  # traces the blocks; compiles nothing
  assert CALLS == HOOKS[REGISTRY[name].placement]
