"""The tokenizer task end to end, in process: train with a GAN, restore, evaluate the workdir."""
import importlib.util
import json
import pathlib
import shutil

import jax
import numpy as np
import pytest

from tokax.train import evaluate_tokenizer
from tokax.train import logging as metric_logging
from tokax.train import run as training
from tokax.train.restore import load_run

REPO = pathlib.Path(__file__).resolve().parents[2]


def _config_module(name):
  spec = importlib.util.spec_from_file_location(name, REPO / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _tiny_config(total_steps):
  config = _config_module("digits_tokenizer").get_config("runlocal,gan")
  config.quantizer.name = "vq_ema"  # a quantizer with state ("quantizer_state") that must resume too
  config.quantizer.latent_dim = 2
  config.quantizer.kwargs = {"codebook_size": 16}
  config.model.update(filters=8, norm_groups=4, channel_multipliers=(1,))  # stride 1: the fewest ops to compile
  config.discriminator.update(ndf=4, norm_groups=4, num_layers=1)
  config.total_steps = total_steps
  config.checkpoint_every_steps, config.keep_checkpoints = 1, 2
  config.eval_every_steps = 0
  config.progress_bar = False
  return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("tok")
  first = training.train(_tiny_config(2), str(workdir))
  return workdir, first


@pytest.mark.slow
def test_train_then_resume(trained):
  workdir, first = trained
  assert first.step == 2 and np.isfinite(first.metrics["val/psnr"])
  assert 0 < first.metrics["val/usage"] <= 1 and first.metrics["val/bits_per_image"] == pytest.approx(32 * 32 * 4)
  records = metric_logging.read_metrics(workdir / "metrics.jsonl")
  train_records = [r for r in records if "train/loss" in r]
  assert [r["step"] for r in train_records] == [1, 2]
  assert {"train/d_loss", "train/g_loss", "train/gan_weight", "train/model/usage"} <= set(train_records[-1])
  assert train_records[-1]["train/gan_weight"] > 0  # disc_start = 1: the adversarial term is on at step 2
  assert all(not isinstance(v, str) for r in records for v in r.values())  # nothing non-finite
  assert json.loads((workdir / "config.json").read_text())["task"] == "tokenizer"

  # Restarting in the same workdir restores step 2 (EMA weights, quantizer state, discriminator and
  # both optimizers: an abstract TokenizerState with target shardings) and trains nothing again.
  resumed = training.train(_tiny_config(2), str(workdir))
  records = metric_logging.read_metrics(workdir / "metrics.jsonl")
  assert [r["step"] for r in records if "train/loss" in r] == [1, 2]
  assert resumed.step == 2 and sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["1", "2"]
  assert resumed.metrics["val/psnr"] == pytest.approx(first.metrics["val/psnr"], abs=1e-5)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(resumed.params), jax.device_get(first.params))


@pytest.mark.slow
def test_restart_from_step_one_equals_the_straight_run(trained, tmp_path):
  workdir, first = trained
  # A run that stopped after step 1: only that checkpoint (with its data position) is left.
  shutil.copytree(workdir / "checkpoints" / "1", tmp_path / "checkpoints" / "1")
  resumed = training.train(_tiny_config(2), str(tmp_path))
  assert resumed.step == 2
  # EMA and raw weights, the VQ-EMA codebook state: bitwise those of the straight run
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(resumed.params), jax.device_get(first.params))
  raw = [load_run(str(w), ema=False).variables for w in (workdir, tmp_path)]
  jax.tree.map(np.testing.assert_array_equal, *raw)
  assert int(raw[0]["quantizer_state"]["quantizer"]["step"]) == 2  # the EMA updates of both steps are in it


@pytest.mark.slow
def test_evaluate_workdir(trained, tmp_path):
  workdir, _ = trained
  rows = evaluate_tokenizer.evaluate_workdirs([str(workdir)], str(tmp_path), suites=("digits", "text"), num_examples=6,
                                    batch_size=6)
  assert [r["suite"] for r in rows] == ["digits", "text", "all"]
  assert all(np.isfinite(r["psnr"]) for r in rows[:2]) and 0 < rows[2]["usage"] <= 1
  assert (tmp_path / f"{workdir.name}_grid.png").exists()
  assert "| digits |" in (tmp_path / "tokenizer_eval.md").read_text()


def test_task_and_loss_config_errors(tmp_path):
  config = _tiny_config(1)
  config.task = "segmentation"
  with pytest.raises(ValueError, match="config.task"):
    training.train(config, str(tmp_path))
  from tokax.train.tokenizer_step import LossConfig
  with pytest.raises(ValueError, match="loss.gan"):
    LossConfig(gan="wgan")
  with pytest.raises(ValueError, match="training directory"):
    evaluate_tokenizer.evaluate_workdirs([str(tmp_path / "missing")], str(tmp_path))
