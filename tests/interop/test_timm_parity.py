"""from_timm: tokax logits equal timm's (CPU, float32, randomised weights, batch 2)."""
import jax
import numpy as np
import pytest

from interop.interop_helpers import images, random_timm, randomize_, relative, run_timm
from tokax.interop import convert_state_dict, export_state_dict, from_timm

# timm name, create_model kwargs, expected ViT fields.
PARITY = {
    "vit_tiny_patch16_224": ({}, dict(variant="Ti/16", pool="cls", layer_scale=None)),
    "vit_small_patch16_224": ({}, dict(variant="S/16", pool="cls")),
    "vit_base_patch32_224": ({}, dict(variant="B/32", pool="cls")),
    "deit_small_distilled_patch16_224": ({}, dict(variant="S/16", distilled=True)),
    "deit3_small_patch16_224": ({}, dict(variant="S/16", layer_scale=1e-6)),  # and no_embed_class
    "vit_small_patch16_224-avg": ({"global_pool": "avg"}, dict(variant="S/16", pool="gap", class_token=True)),
}


@pytest.mark.parametrize("key", sorted(PARITY))
def test_logits_equal_timm(timm, key):
  kwargs, expected = PARITY[key]
  reference = random_timm(timm, key.split("-")[0], seed=1, **kwargs)
  model, params = from_timm(reference)
  for field, value in expected.items():
    assert getattr(model, field) == value, field
  x = images(2, 224)
  logits = np.asarray(jax.jit(model.apply)(params, x))
  want = run_timm(reference, x)
  assert logits.shape == want.shape == (2, 1000)
  assert np.abs(want).mean() > 0.1  # a dead head would make the comparison vacuous
  assert relative(logits, want) <= 1e-4


def test_export_round_trips_exactly(timm):
  for name in ("deit_small_distilled_patch16_224", "deit3_small_patch16_224"):
    state = {k: v.numpy() for k, v in random_timm(timm, name, img_size=32).state_dict().items()}
    back = export_state_dict(convert_state_dict(state))
    assert back.keys() == state.keys()
    for key, value in state.items():
      np.testing.assert_array_equal(back[key], value, err_msg=key)


def _tiny(timm, **kwargs):
  """A Ti/16 timm VisionTransformer at 32 px (2x2 patches) with the given options."""
  from timm.models.vision_transformer import VisionTransformer
  args = dict(img_size=32, patch_size=16, embed_dim=192, depth=12, num_heads=3, num_classes=10, weight_init="skip")
  return VisionTransformer(**{**args, **kwargs}).eval()


@pytest.mark.parametrize("kwargs, message", [
    (dict(reg_tokens=4), r"register tokens \(reg_tokens=4\)"),
    (dict(qk_norm=True), r"qk-norm"),
    (dict(pre_norm=True), r"pre-norm"),
    (dict(no_embed_class=True, dynamic_img_size=True), r"dynamic_img_size"),
    (dict(global_pool="map"), r"attention pooling"),
    (dict(fc_norm=True), r"token pooling with fc_norm"),
    (dict(global_pool="avg", fc_norm=False), r"avg pooling with the final norm before pooling"),
    (dict(global_pool="max"), r"global_pool='max'"),
    (dict(mlp_ratio=2.0), r"no tokax ViT size has embed_dim=192, depth=12, num_heads=3, mlp hidden=384"),
    (dict(act_layer="gelu_tanh"), r"tokax uses exact GELU"),
    (dict(scale_mlp_norm=True), r"scale_mlp_norm"),
])
def test_refuses_unsupported_timm_models(timm, kwargs, message):
  with pytest.raises(ValueError, match=message):
    from_timm(_tiny(timm, **kwargs))


def test_refuses_a_registered_timm_model_with_reg_tokens(timm):
  with pytest.raises(ValueError, match=r"VisionTransformer uses features tokax's ViT does not support"):
    from_timm(timm.create_model("vit_small_patch16_224", pretrained=False, img_size=32, reg_tokens=4))


@pytest.mark.parametrize("kwargs, expected", [
    (dict(class_token=False, global_pool="avg"), dict(class_token=False, pool="gap")),
    (dict(num_classes=0, qkv_bias=False, drop_path_rate=0.1), dict(num_classes=0, qkv_bias=False, drop_path=0.1)),
])
def test_small_configurations_equal_timm(timm, kwargs, expected):
  reference = _tiny(timm, **kwargs)
  randomize_(reference, seed=5)
  model, params = from_timm(reference)
  for field, value in expected.items():
    assert getattr(model, field) == pytest.approx(value), field
  x = images(2, 32)
  assert relative(jax.jit(model.apply)(params, x), run_timm(reference, x)) <= 1e-4
