"""load_checkpoint: timm state dicts saved as .safetensors / .pth load into the same function."""
import jax
import numpy as np
import pytest

from interop.interop_helpers import images, random_timm, relative, run_timm
from tokax.interop import check_params, from_timm, load_checkpoint
from tokax.models import ViT

SIZE = 64  # Ti/16 at 64 px: a 4x4 grid, fast on the CPU


@pytest.fixture(scope="module")
def tiny(timm):
  """(timm model, tokax model, params, jitted tokax forward) for a 10-class Ti/16 at 64 px."""
  reference = random_timm(timm, "vit_tiny_patch16_224", seed=2, img_size=SIZE, num_classes=10)
  model, params = from_timm(reference)
  return reference, model, params, jax.jit(model.apply)


def _assert_same_params(a, b):
  flat_a, flat_b = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
  assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
  for (path, x), (_, y) in zip(flat_a, flat_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))


def _state(reference):
  return {k: v.detach().numpy().copy() for k, v in reference.state_dict().items()}


def test_safetensors_and_pth_give_timm_logits(tiny, tmp_path):
  import torch
  from safetensors.numpy import save_file
  reference, model, params, forward = tiny
  state = _state(reference)
  save_file(state, str(tmp_path / "vit.safetensors"))
  # A DeiT-style training checkpoint: {"model": ...} around a DistributedDataParallel state dict.
  torch.save({"model": {f"module.{k}": torch.from_numpy(v) for k, v in state.items()}, "epoch": 3},
             tmp_path / "vit.pth")
  x = images(2, SIZE)
  want = run_timm(reference, x)
  for name in ("vit.safetensors", "vit.pth"):
    loaded = load_checkpoint(tmp_path / name, model)
    _assert_same_params(loaded, params)
    assert relative(forward(loaded, x), want) <= 1e-4, name


def test_bfloat16_checkpoints(tiny, tmp_path):
  import torch
  from safetensors.torch import save_file
  reference, model, params, forward = tiny
  state = {k: v.to(torch.bfloat16) for k, v in reference.state_dict().items()}
  save_file(state, str(tmp_path / "bf16.safetensors"))
  torch.save(state, tmp_path / "bf16.pth")
  for name in ("bf16.safetensors", "bf16.pth"):
    loaded = load_checkpoint(tmp_path / name, model)
    np.testing.assert_array_equal(loaded["params"]["blocks_3"]["mlp_fc1"]["kernel"],
                                  state["blocks.3.mlp.fc1.weight"].float().numpy().T)
    assert relative(forward(loaded, images(2, SIZE)), forward(params, images(2, SIZE))) <= 2e-2, name


def test_no_embed_class_checkpoint_gets_zero_prefix_positions(timm, tmp_path):
  """DeiT-III checkpoints carry a (1, N, C) position table: the class token gets a zero row."""
  from safetensors.numpy import save_file
  reference = random_timm(timm, "deit3_small_patch16_224", seed=3, img_size=32, num_classes=5)
  assert tuple(reference.pos_embed.shape) == (1, 4, 384)
  save_file(_state(reference), str(tmp_path / "deit3.safetensors"))
  model = ViT(variant="S/16", num_classes=5, image_size=32, layer_scale=1e-6)
  params = load_checkpoint(tmp_path / "deit3.safetensors", model)
  np.testing.assert_array_equal(params["params"]["pos_embed"][0, 0], 0.0)
  x = images(2, 32)
  assert relative(model.apply(params, x), run_timm(reference, x)) <= 1e-4


def test_headless_model_drops_the_classifier(tiny, tmp_path):
  from safetensors.numpy import save_file
  reference, model, _, _ = tiny
  save_file(_state(reference), str(tmp_path / "vit.safetensors"))
  features = model.clone(num_classes=0)
  params = load_checkpoint(tmp_path / "vit.safetensors", features)
  assert "head" not in params["params"]
  x = images(2, SIZE)
  import torch
  with torch.no_grad():
    want = reference.forward_head(reference.forward_features(torch.from_numpy(x.transpose(0, 3, 1, 2))),
                                  pre_logits=True).numpy()
  assert relative(features.apply(params, x), want) <= 1e-4


@pytest.mark.parametrize("change, message", [
    (dict(num_classes=1000), r"head/kernel: checkpoint shape \(192, 10\), model shape \(192, 1000\): "
                             r"set ViT\(num_classes=10\)"),
    (dict(image_size=96), r"pos_embed: checkpoint shape \(1, 17, 192\), model shape \(1, 37, 192\): "
                          r"set ViT\(image_size=64\)"),
    (dict(variant="S/16"), r"(?s)variant 'Ti/16': set ViT\(variant='Ti/16'\).*\n  patch_embed/kernel: checkpoint shape \(16, 16, 3, 192\), model shape "
                           r"\(16, 16, 3, 384\): set ViT\(variant='Ti/16'\)"),
    (dict(pool="gap"), r"missing fc_norm/bias .*set ViT\(pool='cls'\)"),
    (dict(distilled=True), r"missing dist_token \(model shape \(1, 1, 192\)\): set ViT\(distilled=False\)"),
    (dict(layer_scale=1e-5), r"missing blocks_\{0..11\}/ls1/gamma .*set ViT\(layer_scale=None\)"),
])
def test_mismatch_names_parameter_shapes_and_field(tiny, tmp_path, change, message):
  from safetensors.numpy import save_file
  reference, model, _, _ = tiny
  save_file(_state(reference), str(tmp_path / "vit.safetensors"))
  with pytest.raises(ValueError, match=message):
    load_checkpoint(tmp_path / "vit.safetensors", model.clone(**change))


def test_check_params_reports_every_problem_at_once(tiny):
  _, model, params, _ = tiny
  with pytest.raises(ValueError) as info:
    check_params(params, model.clone(num_classes=3, qkv_bias=False))
  text = str(info.value)
  assert "head/bias: checkpoint shape (10,), model shape (3,)" in text
  assert "unexpected blocks_{0..11}/attn/qkv/bias (checkpoint shape (576,)): set ViT(qkv_bias=True)" in text


def test_unknown_suffix_and_non_vit_state_dict(tiny, tmp_path):
  from safetensors.numpy import save_file
  _, model, _, _ = tiny
  (tmp_path / "vit.ckpt.gz").write_bytes(b"")
  with pytest.raises(ValueError, match=r"unknown checkpoint type .*expected .safetensors"):
    load_checkpoint(tmp_path / "vit.ckpt.gz", model)
  save_file({"conv1.weight": np.zeros((4, 3, 3, 3), np.float32)}, str(tmp_path / "resnet.safetensors"))
  with pytest.raises(ValueError, match=r"timm keys with no tokax counterpart: \['conv1.weight'\]"):
    load_checkpoint(tmp_path / "resnet.safetensors", model)
