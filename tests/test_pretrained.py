"""tokax.pretrained: a model written as bf16 timm-layout safetensors + its JSON record loads back exactly."""
import functools
import hashlib
import json

import jax
import ml_dtypes
import numpy as np
import pytest

from tokax import pretrained
from tokax.interop import export_state_dict
from tokax.models import ViT

from random_variables import random_variables

FIELDS = dict(variant="Ti/8", image_size=16, num_classes=5, width=32, depth=2, num_heads=2, mlp_dim=64)


def _write(directory, name="tiny"):
  """A random tiny ViT saved as pretrained.load expects; returns the bf16-rounded parameters."""
  from safetensors.numpy import save_file

  params = random_variables(ViT(**FIELDS), (16, 16, 3), seed=3)
  rounded = jax.tree.map(lambda p: p.astype(ml_dtypes.bfloat16).astype(np.float32), params)
  # safetensors.numpy has no bfloat16: store float16 bytes of the bf16-rounded values (exact: they fit float16's range
  # and bf16's 8-bit mantissa fits float16's 11 bits), as a shipped file stores bf16 ones; C order, since
  # save_file writes an array's buffer as it lies (the exported kernels are transposed views)
  state = {k: np.ascontiguousarray(v, np.float16) for k, v in export_state_dict(rounded).items()}
  path = directory / f"{name}.safetensors"
  save_file(state, str(path))
  record = dict(model=FIELDS, data=dict(name="digits", image_size=16), metrics={}, command="test", commit="test",
                card="cpu", sha256=hashlib.sha256(path.read_bytes()).hexdigest())
  (directory / f"{name}.json").write_text(json.dumps(record))
  return rounded


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
