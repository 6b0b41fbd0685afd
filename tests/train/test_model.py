"""Models from config data: MODELS[name](**fields); a bad field names the class and its fields."""
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from tokax import kernels
from tokax.models import T2TViT, ViT
from tokax.models.xar import XAR
from tokax.train import config_utils
from tokax.train import run as training
from tokax.train.model import MODELS, build_model, from_fields, module_fields
from tokax.train.tasks import classifier

CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "configs"


def test_build_model_passes_the_fields_through():
  model = build_model("vit", variant="Ti/4", image_size=16, num_classes=3, width=32, depth=1, num_heads=2,
                      mlp_dim=64, dtype="bfloat16")
  assert model == ViT(variant="Ti/4", image_size=16, num_classes=3, width=32, depth=1, num_heads=2, mlp_dim=64,
                      dtype=jnp.bfloat16)
  assert isinstance(build_model("t2t_vit", variant="7", num_classes=3, image_size=32), T2TViT)
  # config.json stores tuples as lists: they come back as tuples
  assert from_fields(ViT, {"variant": "Ti/4", "layer_scale": None}).variant == "Ti/4"


def test_unknown_field_names_the_model_class_and_its_fields():
  with pytest.raises(ValueError, match=r"config.model: T2TViT has no fields mlp_dim, pool; its fields are variant, "
                                       r"tokens_type, width"):
    build_model("t2t_vit", variant="7", pool="cls", mlp_dim=64)
  with pytest.raises(ValueError, match=r"ViT has no field tokens_type; its fields are .*mlp_dim"):
    build_model("vit", tokens_type="performer")
  with pytest.raises(ValueError, match=r"config.model.name: unknown model 'resnet'; expected one of \['t2t_vit', 'vit'\]"):
    build_model("resnet")
  assert "parent" not in module_fields(ViT) and "name" not in module_fields(ViT)


def test_num_classes_comes_from_the_data_unless_the_config_sets_it():
  config = ml_collections.ConfigDict({"model": {"num_classes": None}, "data": {"name": "folder:/x", "num_classes": None}})
  source = type("Source", (), {"num_classes": 3})()
  assert classifier.num_classes_of(config, source) == 3
  config.data.num_classes = 4
  with pytest.raises(ValueError, match="config.data.num_classes says 4, the data says 3"):
    classifier.num_classes_of(config, source)
  config.data.name, config.data.num_classes = "digits", None
  assert classifier.num_classes_of(config) == 10  # a saved run of an embedded dataset, from config.json alone
  config.data.name = "tfds:x"
  with pytest.raises(ValueError, match="does not say how many classes"):
    classifier.num_classes_of(config)


# --- config.model.attention (issue 14): named, checked, in every ViT-family config -------------------


def test_unknown_attention_names_config_model_attention_and_the_choices():
  for name in ("vit", "t2t_vit"):
    with pytest.raises(ValueError, match=r"config.model.attention: unknown attention implementation 'flash'; "
                                         r"expected one of xla, cudnn, pallas, auto"):
      build_model(name, attention="flash")
  with pytest.raises(ValueError, match=r"config.model.interpret: expected True or False; got 'yes'"):
    build_model("vit", attention="pallas", interpret="yes")
  with pytest.raises(ValueError, match=r"config.model.attention: unknown attention implementation 'flash'"):
    from_fields(XAR, {"token_dim": 4, "grid_size": 2, "attention": "flash"})  # xAR's task builds through from_fields
  for value in (None, *kernels.IMPLEMENTATIONS):
    assert build_model("vit", attention=value).attention == value
  assert build_model("t2t_vit", attention="pallas", interpret=True).interpret


def _config_files():
  return sorted(p.name for p in CONFIGS.glob("*.py") if p.name != "__init__.py")


def test_every_vit_family_config_has_model_attention():
  """`--config.model.attention=...` works with every config that builds a ViT-family model or xAR (locked configs
  refuse a field they lack), and "auto" is the default."""
  checked, missing = [], []
  for name in _config_files():
    config = config_utils.load_config_file(f"tokax:{name}")
    model = config.get("model")
    if not hasattr(model, "get"):  # "pretrained:<timm name>" evaluation configs, sweeps read a checkpoint's
      continue
    if model.get("name") in MODELS:
      wanted = {"attention": "auto", "interpret": False}
    elif config.get("task") == "xar":
      wanted = {"attention": "auto"}
    else:
      continue
    if {key: model.get(key, "<missing>") for key in wanted} != wanted:
      missing.append(name)
      continue
    config.model.attention = "pallas"  # what the flag does, on the locked config
    checked.append(name)
  assert not missing, f"config.model lacks attention='auto' (and interpret=False for ViT / T2T-ViT) in {missing}"
  assert {"digits_vit.py", "cluttered_digits_t2t.py", "glyphs_vit.py", "digits_xar.py"} <= set(checked)


@pytest.mark.slow
def test_t2t_transformer_stem_and_blocks_with_pallas_equal_xla():
  """T2T-ViT's attention plumbing: the transformer stem (one head, 64 wide) and the blocks through the TPU kernel
  (Pallas' interpreter), logits and gradients equal to xla's."""
  images = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)), jnp.float32)
  fields = dict(variant="t_14", image_size=32, width=32, depth=1, num_heads=2, mlp_ratio=2.0, num_classes=3)
  ref = build_model("t2t_vit", **fields, attention="xla")
  model = build_model("t2t_vit", **fields, attention="pallas", interpret=True)
  params = jax.jit(ref.init)(jax.random.key(0), images)
  head = jax.random.normal(jax.random.key(1), params["params"]["head"]["kernel"].shape)
  params = {"params": {**params["params"], "head": {**params["params"]["head"], "kernel": head}}}
  loss = lambda m: jax.jit(jax.value_and_grad(lambda p: jnp.sum(m.apply(p, images) ** 2)))
  (ref_value, ref_grads), (value, grads) = loss(ref)(params), loss(model)(params)
  jaxpr = str(jax.make_jaxpr(lambda p: model.apply(p, images))(params))
  assert jaxpr.count("pallas_call") == 3  # attention1, attention2, the block
  np.testing.assert_allclose(value, ref_value, rtol=1e-5)
  stem = ref_grads["params"]["tokens_to_token"]["attention1"]["attn_qkv"]["kernel"]
  assert float(jnp.abs(stem).max()) > 0
  for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
    np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5 * float(jnp.abs(r).max()))


def _train_digits(workdir, attention):
  config = config_utils.load_config_file("tokax:digits_vit.py:runlocal")
  config.progress_bar = False
  config.model.attention, config.model.interpret = attention, attention == "pallas"
  config.reduction = "evit:0.5,layers=(0,)"  # block 0 asks the kernel for the "cls" score
  return training.train(config, str(workdir))


@pytest.mark.slow
def test_training_with_pallas_attention_equals_xla(tmp_path):
  """python -m tokax.train's run with --config.model.attention=pallas --config.model.interpret=True (the TPU kernel
  interpreted, EViT taking its scores) trains to the same metrics as attention=xla."""
  ref = _train_digits(tmp_path / "xla", "xla")
  result = _train_digits(tmp_path / "pallas", "pallas")
  assert result.step == ref.step == 3
  for key in ("val/loss", "test/loss"):
    np.testing.assert_allclose(result.metrics[key], ref.metrics[key], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(result.params), jax.tree.leaves(ref.params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
