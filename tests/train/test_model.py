"""Models from config data: MODELS[name](**fields); a bad field names the class and its fields."""
import jax.numpy as jnp
import ml_collections
import pytest

from tokax.models import T2TViT, ViT
from tokax.train.model import build_model, from_fields, module_fields
from tokax.train.tasks import classifier


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
