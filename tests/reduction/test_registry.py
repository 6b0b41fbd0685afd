"""Registry methods train from a config through the one trainer, and every shipped config's reduction builds."""
import glob
import json
import math
import os

import jax
import numpy as np
import pytest

from tokax import reduction
from tokax.train import run as training
from tokax.train.step import init_state, make_train_step
from tokax.train.tasks import classifier
from tokax.train.config_utils import load_config_file

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEPTH = 2  # every registry method below still reduces in both blocks


def _tiny_config(spec):
  config = load_config_file(os.path.join(REPO, "configs", "digits_vit.py:runlocal"))
  config.model.depth = DEPTH
  config.progress_bar = False
  if isinstance(spec, str):  # as --config.reduction=evit:0.7 would set it
    config.reduction = spec
  else:
    del config.reduction
    config.reduction = spec
  return config


def _check_counts(model, params, spec):
  method = model.reduction
  assert method == reduction.build(spec)
  images = np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype(np.float32)
  _, inter = jax.jit(lambda p, x: model.apply(p, x, return_intermediates=True))(params, images)
  counts = tuple(int(n) for n in inter["num_tokens"])
  assert counts == method.token_counts(65, DEPTH, 1) and counts[-1] < 65


def test_a_registry_method_trains_from_the_config(tmp_path):
  """One full run of the trainer (data, steps, evaluation, metrics file) with a reduction from a string spec."""
  spec = "tome:4"  # as --config.reduction=tome:4 would set it
  result = training.train(_tiny_config(spec), str(tmp_path))
  with open(tmp_path / "metrics.jsonl", encoding="utf-8") as f:
    losses = [row["train/loss"] for row in map(json.loads, f) if "train/loss" in row]
  assert losses and all(math.isfinite(v) for v in losses)
  assert math.isfinite(result.metrics["test/loss"])
  _check_counts(result.model, result.params, spec)


@pytest.mark.parametrize("spec", [dict(name="evit", keep_rate=0.7), dict(name="pitome", ratio=0.8)])
def test_registry_methods_from_a_config_take_a_train_step(spec):
  """The model the trainer builds from the config (classifier.model_from_config) takes one jitted train step."""
  config = _tiny_config(spec)
  model = classifier.model_from_config(config, 10)
  schedule, tx = classifier.optimizer(config, total_steps=3, warmup_steps=1)
  image_shape = (config.model.image_size, config.model.image_size, 3)
  state = jax.jit(init_state, static_argnums=(0, 1, 3))(model, tx, jax.random.key(0), image_shape)
  step = jax.jit(make_train_step(model=model, tx=tx, schedule=schedule, max_shift=config.augment.max_shift))
  rng = np.random.default_rng(0)
  batch = {"image": rng.uniform(size=(4, *image_shape)).astype(np.float32),
           "label": rng.integers(0, 10, size=4).astype(np.int32)}
  state, metrics = step(state, batch)
  assert int(state.step) == 1 and math.isfinite(float(metrics["loss"])) and math.isfinite(float(metrics["grad_norm"]))
  _check_counts(model, state.params, spec)


def test_dtome_says_why_it_does_not_train_from_a_config():
  with pytest.raises(ValueError, match="'dtome' needs calibration.*calibrate_dtome"):
    classifier.model_from_config(_tiny_config("dtome:4"), 10)


@pytest.mark.parametrize("path", sorted(p for p in glob.glob(os.path.join(REPO, "configs", "*.py"))
                                          if not p.endswith("__init__.py")))
def test_every_config_reduction_builds(path):
  for arg in ("", ":runlocal"):
    config = load_config_file(path + arg)
    if "reduction" in config:
      reduction.build(config.reduction, calibration=False)
    for method in list(config.get("methods", {})) + list(config.get("post_methods", {})):
      from tokax.bench import sweep
      sweep.method_spec(method, None)
