"""ToMe equals the official facebookresearch/ToMe timm patch (goldens in tests/golden)."""
import functools
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from golden.weights import random_state_dict
from tokax.interop.timm import convert_state_dict, export_state_dict
from tokax.models import ViT
from tokax.reduction import ToMe, source_matrix
import vit_testing
from vit_testing import apply as forward  # one jitted forward per (model, shapes), compiled with fast_compile()
from vit_testing import SMALL, fast_compile

MODELS = {
    "vit_small_patch16_224": dict(variant="S/16"),
    "deit_small_distilled_patch16_224": dict(variant="S/16", distilled=True),
}
SETTINGS = {
    "r0": ToMe(r=0), "r8": ToMe(r=8), "r13": ToMe(r=13), "r16": ToMe(r=16),
    "r16_-1": ToMe(r=(16, -1)), "r16_noprop": ToMe(r=16, prop_attn=False),
}


def _relative(a, b):
  return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


@pytest.fixture(scope="module", params=sorted(MODELS))
def golden(request):
  name = request.param
  from conftest import TESTS
  meta = json.loads((TESTS / "golden" / f"tome_{name}.json").read_text())
  data = dict(np.load(TESTS / "golden" / f"tome_{name}.npz"))
  model = ViT(num_classes=1000, **MODELS[name])
  abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
  zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract)
  shapes = {k: v.shape for k, v in export_state_dict(zeros).items()}
  params = convert_state_dict(random_state_dict(shapes, meta["weight_seed"]))
  return name, meta, data, model, params


def test_dense_logits_equal_timm(golden):
  _, _, data, model, params = golden
  logits, _ = forward(model, params, data["images"])
  assert _relative(logits, data["logits_dense"]) <= 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("tag", sorted(SETTINGS))
def test_tome_equals_official(golden, tag):
  name, meta, data, model, params = golden
  logits, inter = forward(model.clone(reduction=SETTINGS[tag]), params, data["images"])
  np.testing.assert_array_equal(np.asarray(inter["num_tokens"]), data[f"tokens_{tag}"])
  assert _relative(logits, data[f"logits_{tag}"]) <= 1e-4, name
  if tag != "r0":
    n_final = int(data[f"tokens_{tag}"][-1])
    source = np.asarray(source_matrix(inter["assign"], n_final))
    # T = the traced source: identical 0/1 matrices, so groups AND output order agree.
    np.testing.assert_array_equal(source, data[f"source_{tag}"])
    np.testing.assert_allclose(np.asarray(inter["size"]), data[f"source_{tag}"].sum(-1))


@pytest.fixture(scope="module")
def small_params():
  return vit_testing.small_params()


def test_jit_compiles_once_per_schedule(small_params):
  model = SMALL.clone(reduction=ToMe(r=4))

  @functools.partial(jax.jit, compiler_options=fast_compile())
  @chex.assert_max_traces(n=1)
  def logits(p, images):
    return model.apply(p, images)

  for seed in range(3):
    logits(small_params, jax.random.normal(jax.random.key(seed), (2, 64, 64, 3)))


@pytest.mark.parametrize("images", ["constant", "zeros_keys"])
def test_degenerate_inputs_give_no_nan(small_params, images):
  x = jnp.full((2, 64, 64, 3), 0.5)
  params = small_params
  if images == "zeros_keys":  # every key exactly zero: ToMe's official code divides 0 by 0 here
    params = jax.tree_util.tree_map_with_path(
        lambda path, v: jnp.zeros_like(v) if "qkv" in jax.tree_util.keystr(path) else v, params)
  for r in (4, 100, (8, -1)):  # 100 is more than half the tokens: clipped, as ToMe does
    logits, inter = forward(SMALL.clone(reduction=ToMe(r=r)), params, x)
    assert np.isfinite(np.asarray(logits)).all()
    assert np.isfinite(np.asarray(inter["size"])).all()
    if r == 100:  # 17 -> 1 + 16//2 ... half the unprotected tokens per layer
      assert list(np.asarray(inter["num_tokens"])[:3]) == [9, 5, 3]
