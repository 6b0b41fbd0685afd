"""tokax.pretrained: a model written as bf16 timm-layout safetensors + its JSON record loads back exactly."""
import functools

import jax
import numpy as np
import pytest

from tokax import pretrained
from tokax.models import ViT

from random_variables import write_pretrained

FIELDS = dict(variant="Ti/8", image_size=16, num_classes=5, width=32, depth=2, num_heads=2, mlp_dim=64)


def _write(directory, name="tiny"):
  """A random tiny ViT saved as pretrained.load expects; returns the bf16-rounded parameters."""
  return write_pretrained(directory, name, FIELDS, dict(name="digits", image_size=16))


def test_load_gives_the_saved_parameters_and_logits(tmp_path):
  rounded = _write(tmp_path)
  assert pretrained.available(str(tmp_path)) == ("tiny",)
  model, variables = pretrained.load("tiny", directory=str(tmp_path))
  jax.tree.map(functools.partial(np.testing.assert_allclose, atol=1e-6), jax.device_get(variables), rounded)
  images = np.random.default_rng(1).uniform(-1, 1, (3, 16, 16, 3)).astype(np.float32)
  want = jax.jit(ViT(**FIELDS).apply)(rounded, images)  # jitted: an eager forward compiles every op on its own
  np.testing.assert_allclose(jax.jit(model.apply)(variables, images), want, rtol=1e-5, atol=1e-5)
  reduced, _ = pretrained.load("tiny", directory=str(tmp_path), reduction="tome:2")
  _, inter = jax.jit(functools.partial(reduced.apply, return_intermediates=True))(variables, images)
  assert tuple(int(n) for n in inter["num_tokens"]) == reduced.reduction.token_counts(5, 2, 1)


def test_a_truncated_file_and_an_unknown_name_fail_naming_them(tmp_path):
  _write(tmp_path)
  path = tmp_path / "tiny.safetensors"
  path.write_bytes(path.read_bytes()[:-100])
  with pytest.raises(ValueError, match=r"tiny\.safetensors .*damaged or truncated"):
    pretrained.load("tiny", directory=str(tmp_path))
  with pytest.raises(ValueError, match=r"no model 'nope'.*\['tiny'\]"):
    pretrained.load("nope", directory=str(tmp_path))


def test_the_shipped_glyphs_model_scores_its_record_on_500_test_images():
  """glyphs_vit_ti16_112 (trained on a GPU, shipped as bf16) on the first 500 glyphs test images, float32 on the CPU."""
  from tokax.data import embedded

  record = pretrained.info("glyphs_vit_ti16_112")
  assert record["metrics"]["test/accuracy"] >= 0.95 and record["metrics"]["test/num_examples"] == 10_000
  model, variables = pretrained.load("glyphs_vit_ti16_112")
  test = embedded.load("glyphs", "test", image_size=record["data"]["image_size"], num_examples=500,
                       seed=record["data"]["split_seed"])
  forward = jax.jit(lambda v, x: model.apply(v, x * 2 - 1).argmax(-1))
  predictions = np.concatenate([forward(variables, test.images[i:i + 250]) for i in (0, 250)])
  accuracy = float(np.mean(predictions == test.labels))
  # 0.9924 on all 10,000 in bf16 on the GPU; 500 images: a standard error of ~0.4 points
  assert accuracy >= 0.97, accuracy
