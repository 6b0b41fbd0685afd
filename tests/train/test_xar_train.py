"""The xar task resumes exactly: a run restarted from its step-2 checkpoint ends on the straight run's state."""
import importlib.util
import pathlib
import shutil

import jax
import numpy as np
import pytest

from tokax.train import checkpoint
from tokax.train import run as training
from tokax.train.restore import load_run

REPO = pathlib.Path(__file__).resolve().parents[2]


def _config():
  spec = importlib.util.spec_from_file_location("digits_xar", REPO / "configs" / "digits_xar.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("runlocal")  # 4 steps of 16 over 64 digits: one epoch
  config.model.update(width=16, num_heads=1)
  config.checkpoint_every_steps, config.keep_checkpoints = 2, 3
  config.progress_bar = False
  return config


@pytest.mark.slow
def test_restart_from_a_checkpoint_equals_the_straight_run(tmp_path):
  straight = training.train(_config(), str(tmp_path / "straight"))
  assert straight.step == 4 and np.isfinite(straight.metrics["train/final_loss"])
  assert checkpoint.check_directory(str(tmp_path / "straight" / "checkpoints")) == [2, 4]

  # A run that stopped after step 2: only that checkpoint (with its data position) is left.
  shutil.copytree(tmp_path / "straight" / "checkpoints" / "2", tmp_path / "resumed" / "checkpoints" / "2")
  resumed = training.train(_config(), str(tmp_path / "resumed"))
  assert resumed.step == 4
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(resumed.params), jax.device_get(straight.params))
  run = load_run(str(tmp_path / "resumed"))  # from the run's config.json: num_classes 10, num_train 64
  assert run.task == "xar" and run.step == 4 and int(run.state.step) == 4
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(run.variables), jax.device_get(straight.params))
  jax.tree.map(np.testing.assert_array_equal, run.variables, run.state.ema_params)
