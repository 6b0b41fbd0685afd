"""tokax.create_model: timm names from a Hugging Face hub cache laid out as huggingface_hub lays it out (offline),
the shipped models, and the errors that name the fix. No network: HF_HUB_OFFLINE=1 throughout."""
import subprocess
import sys

import jax
import numpy as np
import pytest
from safetensors.numpy import save_file

import tokax
from golden.weights import random_state_dict
from tokax import pretrained
from tokax.interop import convert_state_dict, export_state_dict, timm_names
from tokax.models import ViT
from tokax.reduction import ToMe
from vit_testing import fast_compile

NAME = "vit_tiny_patch16_224.augreg_in21k_ft_in1k"  # timm's default tag of vit_tiny_patch16_224
COMMIT = "0123456789abcdef0123456789abcdef01234567"
# What the name must build, written out rather than read from the parser under test.
REFERENCE = ViT(variant="Ti/16", image_size=224, num_classes=1000, pool="cls", class_token=True, qkv_bias=True)


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
  """(cache dir, timm state dict): random ViT-Ti/16 weights as NAME's model.safetensors in the hub cache layout."""
  shapes = jax.eval_shape(REFERENCE.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 224, 224, 3), np.float32))
  zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
  state = random_state_dict({k: v.shape for k, v in export_state_dict(zeros).items()}, seed=4)
  cache = tmp_path_factory.mktemp("hf_hub")
  repo = cache / f"models--timm--{NAME}"
  (repo / "snapshots" / COMMIT).mkdir(parents=True)
  (repo / "refs").mkdir()
  (repo / "refs" / "main").write_text(COMMIT)
  save_file(state, str(repo / "snapshots" / COMMIT / "model.safetensors"))
  return cache, state


@pytest.fixture
def offline(monkeypatch, hub_cache):
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache[0]))
  return hub_cache


def _assert_trees_equal(got, want):
  assert jax.tree.structure(got) == jax.tree.structure(want)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(got), want)


def test_a_timm_name_from_the_offline_cache_computes_what_the_vit_and_convert_state_dict_compute(offline):
  _, state = offline
  model, variables = tokax.create_model(NAME, pretrained=True, reduction="tome:16")
  want_model = REFERENCE.clone(reduction=ToMe(r=16))
  assert model == want_model
  want = convert_state_dict(state)
  _assert_trees_equal(variables, want)
  images = np.random.default_rng(0).uniform(-1, 1, (2, 224, 224, 3)).astype(np.float32)
  forward = jax.jit(lambda m, v, x: m.apply(v, x, return_intermediates=True), static_argnums=0,
                    compiler_options=fast_compile())
  logits, inter = forward(model, variables, images)
  want_logits, _ = forward(want_model, jax.tree.map(np.asarray, want), images)
  assert logits.shape == (2, 1000) and np.abs(want_logits).mean() > 0.1  # a dead head would prove nothing
  np.testing.assert_allclose(logits, want_logits, rtol=1e-6, atol=1e-6)
  assert tuple(int(n) for n in inter["num_tokens"]) == ToMe(r=16).token_counts(197, 12, 1)
  # without a tag: timm's default tag, the same cache entry
  _, untagged = tokax.create_model("vit_tiny_patch16_224", pretrained=True)
  _assert_trees_equal(untagged, want)


def test_num_classes_resets_the_head_as_timm_does_and_0_drops_it(offline):
  _, state = offline
  want = convert_state_dict(state)["params"]
  model, variables = tokax.create_model(NAME, pretrained=True, num_classes=10)
  assert model.num_classes == 10
  head = jax.device_get(variables["params"].pop("head"))
  np.testing.assert_array_equal(head["kernel"], np.zeros((192, 10)))  # tokax's own (zero) init of the head
  np.testing.assert_array_equal(head["bias"], np.zeros(10))
  _assert_trees_equal(variables["params"], {k: v for k, v in want.items() if k != "head"})
  model, variables = tokax.create_model(NAME, pretrained=True, num_classes=0)
  assert model.num_classes == 0 and "head" not in variables["params"]


def test_offline_without_the_file_says_where_it_looked_and_how_to_fetch_it(monkeypatch, tmp_path):
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
  repo = "timm/deit_small_patch16_224.fb_in1k"
  with pytest.raises(ValueError, match=rf"create_model\('deit_small_patch16_224', pretrained=True\): {repo}/"
                     rf"model.safetensors: offline .* not in the Hugging Face cache {tmp_path} .*"
                     rf"hf download {repo} model.safetensors --cache-dir {tmp_path}"):
    tokax.create_model("deit_small_patch16_224", pretrained=True)


def test_an_unreachable_hub_with_nothing_cached_says_the_same(monkeypatch, tmp_path):
  huggingface_hub = pytest.importorskip("huggingface_hub")
  from huggingface_hub import errors

  def unreachable(*args, **kwargs):
    raise errors.LocalEntryNotFoundError("cannot reach the hub")

  monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
  monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
  monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
  monkeypatch.setattr(huggingface_hub, "hf_hub_download", unreachable)
  with pytest.raises(ValueError, match=r"could not be reached, and it is not in the Hugging Face cache .*"
                     r"hf download timm/vit_small_patch16_224.dino model.safetensors --cache-dir"):
    tokax.create_model("vit_small_patch16_224.dino", pretrained=True, cache_dir=tmp_path)


def test_bad_names_tags_and_fields_fail_naming_the_fix():
  with pytest.raises(ValueError, match=r"unknown model 'vit_base_patch16_244' \(did you mean 'vit_base_patch16_224'.*"
                     r"tokax.list_models\(\) lists them"):
    tokax.create_model("vit_base_patch16_244")
  with pytest.raises(ValueError, match=r"vit_tiny_patch16_224 has no tag 'in1k'; its tags are "
                     r"vit_tiny_patch16_224.augreg_in21k_ft_in1k, vit_tiny_patch16_224.augreg_in21k"):
    tokax.create_model("vit_tiny_patch16_224.in1k")
  with pytest.raises(ValueError, match=r"'img_size': not a ViT field; .* image_size"):
    tokax.create_model("vit_tiny_patch16_224", img_size=112)
  with pytest.raises(ValueError, match=r"timm has no pretrained weights for vit_large_patch14_224"):
    tokax.create_model("vit_large_patch14_224", pretrained=True)


def test_overrides_that_change_shapes_fail_naming_the_parameters(offline):
  with pytest.raises(ValueError, match=r"(?s)create_model\('vit_tiny_patch16_224', pretrained=True\): the weights in .*"
                     r"model.safetensors do not fit .*pos_embed: checkpoint shape \(1, 197, 192\), model shape"):
    tokax.create_model("vit_tiny_patch16_224", pretrained=True, image_size=112)


def test_a_shipped_model_loads_as_tokax_pretrained_loads_it():
  name = "glyphs_vit_ti16_112"
  want_model, want = pretrained.load(name, reduction="tome:2")
  model, variables = tokax.create_model(name, pretrained=True, reduction=ToMe(r=2))
  assert model == want_model
  _assert_trees_equal(variables, want)


def test_pretrained_false_builds_the_named_architecture_and_inits_it():
  model, variables = tokax.create_model("deit3_small_patch16_224", reduction=dict(name="evit", keep_rate=0.7),
                                        num_classes=5, depth=1, image_size=32)
  assert (model.variant, model.layer_scale, model.distilled, model.num_classes) == ("S/16", 1e-6, False, 5)
  assert model.reduction.keep_rate == 0.7
  assert variables["params"]["head"]["kernel"].shape == (384, 5)
  assert variables["params"]["blocks_0"]["ls1"]["gamma"].shape == (384,)
  kwargs, norm = timm_names.parse_timm_name("vit_small_patch8_224")  # dino only: no classifier, ImageNet's mean
  assert (kwargs["num_classes"], norm["mean"]) == (0, timm_names.IMAGENET_MEAN)


def test_list_models_is_timms_list_with_the_shipped_models():
  assert "vit_base_patch16_224" in tokax.list_models()
  assert "glyphs_vit_ti16_112" in tokax.list_models() and "glyphs_vit_ti16_112" in tokax.list_models(pretrained=True)
  assert tokax.list_models("deit_tiny*", pretrained=True) == [
      "deit_tiny_distilled_patch16_224.fb_in1k", "deit_tiny_patch16_224.fb_in1k"]
  assert "vit_large_patch14_224" in tokax.list_models() and not tokax.list_models("vit_large_patch14*", pretrained=True)


def test_importing_tokax_stays_cheap():
  code = ("import sys, tokax; assert 'jax' not in sys.modules, 'import tokax imported jax'; "
          "assert 'create_model' in dir(tokax); tokax.__version__")
  subprocess.run([sys.executable, "-c", code], check=True)


def test_without_huggingface_hub_pretrained_timm_names_say_what_to_install(monkeypatch, tmp_path):
  monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import huggingface_hub raises ImportError
  with pytest.raises(ImportError, match=r"pip install 'tokax\[hub\]'"):
    tokax.create_model("vit_tiny_patch16_224", pretrained=True, cache_dir=tmp_path)


def test_a_distilled_models_two_heads_are_both_reset():
  from tokax import factory

  model = ViT(variant="Ti/16", distilled=True, num_classes=7)
  old = {"kernel": np.ones((192, 1000), np.float32), "bias": np.ones(1000, np.float32)}
  params = factory._fresh_heads({"params": {"head": old, "head_dist": old, "norm": {"scale": 1}}}, model)["params"]
  assert sorted(params) == ["head", "head_dist", "norm"]
  for head in ("head", "head_dist"):
    assert params[head]["kernel"].shape == (192, 7) and not params[head]["kernel"].any() and not params[head]["bias"].any()
