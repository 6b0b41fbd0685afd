"""T2T-ViT against the official yitu-opensource/T2T-ViT (goldens from scripts/goldens/make_t2t_goldens.py)."""
import json
import pathlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from golden.weights import t2t_random_state_dict
from tokax.interop import t2t as t2t_interop
from tokax.models.t2t_vit import T2TViT, parse_variant, soft_split
from tokax.reduction import ToMe

GOLDEN = pathlib.Path(__file__).resolve().parents[1] / "golden"
MODELS = {"t2t_vit_7": "7", "t2t_vit_t_14": "t_14"}


def _golden(name):
  meta = json.loads((GOLDEN / f"t2t_{name}.json").read_text())
  arrays = dict(np.load(GOLDEN / f"t2t_{name}.npz"))
  state = t2t_random_state_dict({k: tuple(v) for k, v in meta["state_dict_shapes"].items()}, meta["weight_seed"])
  size = meta["constructor"]["img_size"]
  images = np.random.default_rng(meta["image_seed"]).standard_normal((2, size, size, 3)).astype(np.float32)
  model = T2TViT(variant=MODELS[name], image_size=size, num_classes=1000)
  params = t2t_interop.convert_state_dict(state, model, qk_scale=meta["constructor"].get("qk_scale"))
  return meta, arrays, model, params, images


@pytest.fixture(scope="module")
def golden_runs():
  """Each golden model run once under jit, with its intermediates."""
  runs = {}
  for name in MODELS:
    meta, arrays, model, params, images = _golden(name)
    apply = jax.jit(lambda p, x, model=model: model.apply(p, x, mutable=["intermediates"]))
    logits, state = apply(params, images)
    runs[name] = (meta, arrays, model, params, images, np.asarray(logits), jax.device_get(state["intermediates"]))
  return runs


def _relative(actual, expected):
  return float(np.max(np.abs(np.asarray(actual) - expected)) / np.max(np.abs(expected)))


@pytest.mark.slow  # the module fixture compiles both models (~10 s on 2 cores)
@pytest.mark.parametrize("name", list(MODELS))
def test_logits_match_official(golden_runs, name):
  meta, arrays, _, _, _, logits, inter = golden_runs[name]
  assert _relative(logits, arrays["logits"]) <= 1e-4
  stem = inter["tokens_to_token"]
  assert _relative(stem["project_out"][0][:, :4], arrays["project"]) <= 1e-4
  depth = parse_variant(MODELS[name]).depth
  assert _relative(inter[f"blocks_{depth - 1}_out"][0][:, :4], arrays["block_last"]) <= 1e-4
  shapes = {k.removesuffix("_out"): list(v[0].shape) for k, v in stem.items()}
  shapes.update({k.removesuffix("_out"): list(v[0].shape) for k, v in inter.items() if k.startswith("blocks_")})
  assert shapes == meta["stage_shapes"]


def test_soft_split_equals_unfold_closed_form():
  """soft_split = torch's Unfold: feature (c, i, j) of token (r, s) is x_pad[r*stride + i, s*stride + j, c]."""
  x = np.random.default_rng(0).standard_normal((1, 9, 9, 2)).astype(np.float32)
  out = np.asarray(soft_split(jnp.asarray(x), 3, 2, 1))
  pad = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  expected = np.stack([pad[0, r * 2:r * 2 + 3, s * 2:s * 2 + 3].transpose(2, 0, 1).reshape(-1)
                       for r in range(5) for s in range(5)])
  np.testing.assert_array_equal(out[0], expected)


def test_performer_features_are_scaled_orthonormal_rows():
  """The performer's fixed w (m, d) = orthogonal_ * sqrt(m) as the official init: w w^T = m I."""
  from tokax.models.t2t_vit import _orthogonal_features

  w = np.asarray(_orthogonal_features(jax.random.key(3), (32, 64)), np.float64)
  np.testing.assert_allclose(w @ w.T, 32 * np.eye(32), atol=1e-4)


@pytest.mark.slow  # ToMe's 7 matching layers take ~12 s to compile on 2 cores
def test_tome_r8_under_jit(golden_runs):
  """T2T-ViT-7 at 224 with ToMe r=8: 197 tokens lose 8 per block, sizes still cover every patch."""
  _, _, model, params, images, dense_logits, _ = golden_runs["t2t_vit_7"]
  tome = model.clone(reduction=ToMe(r=8, prop_attn=True))

  @jax.jit
  @chex.assert_max_traces(n=1)
  def forward(p, x):
    return tome.apply(p, x, return_intermediates=True)

  logits, inter = forward(params, images)
  forward(params, images + 1.0)
  assert np.asarray(inter["num_tokens"]).tolist() == [197 - 8 * (i + 1) for i in range(7)]
  np.testing.assert_allclose(np.asarray(inter["size"]).sum(-1), 197.0)
  assert inter["assign"].shape == (2, 197) and int(inter["assign"].max()) < 141
  # Merging background-like random tokens moves the logits, but not arbitrarily far from dense.
  assert 0 < _relative(logits, dense_logits) < 1.0


def test_qk_scale_folding_is_exact_for_head_dim():
  """qk_scale=head_dim**-0.5 (a number) converts exactly like None; a bad qk_scale is refused."""
  _, _, model, _, _ = _golden("t2t_vit_t_14")
  meta = json.loads((GOLDEN / "t2t_t2t_vit_t_14.json").read_text())
  state = t2t_random_state_dict({k: tuple(v) for k, v in meta["state_dict_shapes"].items()}, 3)
  a = t2t_interop.convert_state_dict(state, model, qk_scale=None)
  b = t2t_interop.convert_state_dict(state, model, qk_scale=64 ** -0.5)
  np.testing.assert_allclose(a["params"]["blocks_0"]["attn"]["qkv"]["kernel"],
                             b["params"]["blocks_0"]["attn"]["qkv"]["kernel"], rtol=1e-6)
  c = t2t_interop.convert_state_dict(state, model, qk_scale="pretrained")  # width ** -0.5 = 384 ** -0.5
  ratio = c["params"]["blocks_0"]["attn"]["qkv"]["kernel"] / a["params"]["blocks_0"]["attn"]["qkv"]["kernel"]
  np.testing.assert_allclose(ratio[:, :384], np.sqrt(64 / 384), rtol=1e-5)
  np.testing.assert_allclose(ratio[:, 384:], 1.0)
  with pytest.raises(ValueError, match="qk_scale"):
    t2t_interop.convert_state_dict(state, model, qk_scale="big")


def test_converter_refuses_mismatches():
  meta = json.loads((GOLDEN / "t2t_t2t_vit_7.json").read_text())
  state = t2t_random_state_dict({k: tuple(v) for k, v in meta["state_dict_shapes"].items()}, 0)
  with pytest.raises(ValueError, match="no place in a transformer-stem"):
    t2t_interop.convert_state_dict(state, T2TViT(variant="7", tokens_type="transformer"))
  with pytest.raises(ValueError, match="num_classes"):
    t2t_interop.convert_state_dict(state, T2TViT(variant="7", num_classes=10))
  with pytest.raises(ValueError, match="sinusoid"):
    t2t_interop.convert_state_dict({**state, "pos_embed": np.ones((1, 197, 256), np.float32)}, T2TViT(variant="7"))
  with pytest.raises(ValueError, match="T2TViT.variant"):
    parse_variant("T2T-ViT-9")
  with pytest.raises(ValueError, match="image_size"):
    T2TViT(variant="7", image_size=40).init(jax.random.key(0), jnp.ones((1, 40, 40, 3)))


def test_trainer_builds_the_t2t_config():
  """configs/cluttered_digits_t2t.py goes through the trainer's model builder, full size and runlocal."""
  import importlib.util

  from tokax.train import optim
  from tokax.train.tasks import classifier
  from tokax.train.step import init_state

  path = pathlib.Path(__file__).resolve().parents[2] / "configs" / "cluttered_digits_t2t.py"
  spec = importlib.util.spec_from_file_location("cluttered_digits_t2t", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  full = classifier.model_from_config(module.get_config("variant=t_14"), 10)
  assert isinstance(full, T2TViT) and full.arch == parse_variant("t2t_vit_t_14") and full.image_size == 224
  config = module.get_config("runlocal")
  model = classifier.model_from_config(config, 10)
  assert isinstance(model, T2TViT) and model.arch.depth == 1 and model.arch.width == 32
  tx = optim.adamw(optim.lr_schedule(peak_lr=1e-3, warmup_steps=1, total_steps=3), weight_decay=0.05, grad_clip_norm=1.0)
  state = jax.eval_shape(lambda key: init_state(model, tx, key, (32, 32, 3)), jax.random.key(0))
  params = state.params["params"]
  assert params["head"]["kernel"].shape == (32, 10)
  assert params["tokens_to_token"]["attention1"]["w"].shape == (32, 64)  # performer features, no weight decay
  assert not optim.decay_mask(state.params)["params"]["tokens_to_token"]["attention1"]["w"]
