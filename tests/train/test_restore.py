"""load_run: a run restores from its own config.json (overrides included), for the sweep and as a teacher.

The run: configs/folder_vit.py:runlocal on an image folder of 3 classes, trained through the real
command line with --config.data.num_classes=3 (the field a folder run may set), 2 steps. Re-running
the config file without that override built a 10-class head (the sweep's former restore:
"CheckpointError: head/bias: saved [3] ..."); config.json records the resolved num_classes.
"""
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

from tokax.bench import sweep
from tokax.train import config_utils
from tokax.train.model import normalize_images
from tokax.train.restore import RunError, load_run
from tokax.train.tasks import classifier

REPO = pathlib.Path(__file__).resolve().parents[2]
NUM_CLASSES = 3


def _image_folder(root):
  rng = np.random.default_rng(2)
  for split, per_class in (("train", 6), ("val", 2)):
    for c in range(NUM_CLASSES):
      (root / split / f"class_{c}").mkdir(parents=True)
      for i in range(per_class):
        pixels = rng.integers(0, 256, size=(20, 20, 3)).astype(np.uint8)
        pixels[..., c] = 255
        Image.fromarray(pixels).save(root / split / f"class_{c}" / f"{i}.png")
  return root


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
  """(image root, workdir, the CLI's final JSON line) of a 2-step folder run with --config.data.num_classes=3."""
  root = _image_folder(tmp_path_factory.mktemp("images"))
  workdir = tmp_path_factory.mktemp("folder_run")
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  proc = subprocess.run(
      [sys.executable, "-m", "tokax.train", f"--config={REPO}/configs/folder_vit.py:data=folder:{root},runlocal",
       f"--workdir={workdir}", "--config.data.num_classes=3", "--config.total_steps=2", "--config.progress_bar=False"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return root, workdir, json.loads(proc.stdout.strip().splitlines()[-1])


def test_load_run_rebuilds_the_run_from_its_config_json(folder_run):
  root, workdir, final = folder_run
  run = load_run(str(workdir))
  assert run.task == "classifier" and run.step == 2 and final["step"] == 2
  assert run.config.data.num_classes == 3 and run.config.model.num_classes == 3  # the override, saved
  assert run.model.num_classes == 3 and run.variables["params"]["head"]["bias"].shape == (3,)
  # its logits are those of the trained parameters: the final test accuracy is reproduced exactly
  test = classifier.load_split(run.config, "test")
  assert test.images.shape == (2 * NUM_CLASSES, 16, 16, 3) and test.num_classes == 3
  logits = run.model.apply(run.variables, normalize_images(jnp.asarray(test.images)))
  assert float(np.mean(np.argmax(logits, -1) == test.labels)) == final["test/accuracy"]
  # the config file alone (no override, the former restore) describes another model
  rerun = config_utils.load_config_file(f"configs/folder_vit.py:data=folder:{root},runlocal")
  assert rerun.data.num_classes is None and rerun.model.num_classes is None


def test_load_run_equals_the_trainer_in_process(tmp_path):
  from tokax.train import run as training

  config = config_utils.load_config_file("configs/digits_vit.py:runlocal")
  config.total_steps, config.progress_bar = 2, False
  result = training.train(config, str(tmp_path))
  run = load_run(str(tmp_path))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(run.variables), jax.device_get(result.params))
  images = normalize_images(jax.random.uniform(jax.random.key(0), (4, 32, 32, 3)))
  np.testing.assert_array_equal(run.model.apply(run.variables, images), result.model.apply(result.params, images))
  assert run.model == result.model


def test_a_teacher_and_the_sweep_restore_the_folder_run(folder_run, tmp_path):
  _, workdir, final = folder_run
  teacher = classifier.load_teacher(ml_collections.ConfigDict({"teacher_workdir": str(workdir)}), NUM_CLASSES)
  jax.tree.map(np.testing.assert_array_equal, teacher.variables, jax.device_get(load_run(str(workdir)).variables))
  with pytest.raises(ValueError, match="has 3 classes, this run's data 10"):
    classifier.load_teacher(ml_collections.ConfigDict({"teacher_workdir": str(workdir)}), 10)
  with pytest.raises(ValueError, match="teacher_config is no longer needed"):
    classifier.load_teacher(ml_collections.ConfigDict({"teacher_workdir": str(workdir),
                                                       "teacher_config": "configs/folder_vit.py"}), NUM_CLASSES)

  config = config_utils.load_config_file("configs/sweep_cluttered_digits.py:runlocal")
  config.checkpoint.update(workdir=str(workdir), train=False)
  config.trained.sit.workdir = str(workdir)  # the same run as a trained row
  config.methods = {"tome": [2]}
  config.repeats = 1
  result = sweep.run(config, str(tmp_path / "sweep"))
  rows = {r["method"]: r for r in result["rows"]}
  assert rows["dense"]["top1"] == rows["sit (trained)"]["top1"] == final["test/accuracy"]
  assert rows["sit (trained)"]["step"] == 2 and rows["sit (trained)"]["fine_tuned"]
  config.trained.sit.config = "configs/cluttered_digits_sit.py"  # the former field: refused, not ignored
  with pytest.raises(ValueError, match="trained.sit.config is no longer needed"):
    sweep.run(config, str(tmp_path / "sweep2"))


def test_a_workdir_without_a_run_names_what_is_missing(tmp_path):
  with pytest.raises(RunError, match=rf"'{tmp_path / 'nothing'}' is not a tokax training directory: the directory "
                                     r"does not exist"):
    load_run(str(tmp_path / "nothing"))
  with pytest.raises(RunError, match="holds no config.json"):
    load_run(str(tmp_path))
  (tmp_path / "config.json").write_text(json.dumps({"task": "xar"}))
  with pytest.raises(RunError, match=r"holds a xar run \(config.json\) but no checkpoint under .*checkpoints"):
    load_run(str(tmp_path))
