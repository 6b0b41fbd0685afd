"""load_run: a run restores from its own config.json (overrides included), for the sweep and as a teacher.

The run: configs/folder_vit.py:runlocal on an image folder of 3 classes, with data.num_classes=3 set
over the config file (the field a folder run may set; what --config.data.num_classes=3 does on the
command line, whose overrides tests/train/test_train_cli.py checks), 2 steps, trained in this process
so that load_run is compared with the trainer's own result. Re-running the config file without that
override built a 10-class head (the sweep's former restore: "CheckpointError: head/bias: saved [3] ...");
config.json records the resolved num_classes.
"""
import json
import pathlib

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
  """(image root, workdir, TrainResult) of a 2-step folder run with data.num_classes=3."""
  from tokax.train import run as training

  root = _image_folder(tmp_path_factory.mktemp("images"))
  workdir = tmp_path_factory.mktemp("folder_run")
  config = config_utils.load_config_file(f"{REPO}/configs/folder_vit.py:data=folder:{root},runlocal")
  config.data.num_classes, config.total_steps, config.progress_bar = 3, 2, False
  return root, workdir, training.train(config, str(workdir))


def test_load_run_rebuilds_the_run_from_its_config_json(folder_run):
  root, workdir, trained = folder_run
  run = load_run(str(workdir))
  assert run.task == "classifier" and run.step == 2 and trained.step == 2
  assert run.config.data.num_classes == 3 and run.config.model.num_classes == 3  # the override, saved
  assert run.model.num_classes == 3 and run.variables["params"]["head"]["bias"].shape == (3,)
  # its logits are those of the trained parameters: the final test accuracy is reproduced exactly
  test = classifier.load_split(run.config, "test")
  assert test.images.shape == (2 * NUM_CLASSES, 16, 16, 3) and test.num_classes == 3
  logits = jax.jit(run.model.apply)(run.variables, normalize_images(jnp.asarray(test.images)))
  assert float(np.mean(np.argmax(logits, -1) == test.labels)) == trained.metrics["test/accuracy"]
  # the config file alone (no override, the former restore) describes another model
  rerun = config_utils.load_config_file(f"configs/folder_vit.py:data=folder:{root},runlocal")
  assert rerun.data.num_classes is None and rerun.model.num_classes is None


def test_load_run_equals_the_trainer_in_process(folder_run):
  _, workdir, trained = folder_run
  run = load_run(str(workdir))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(run.variables), jax.device_get(trained.params))
  images = normalize_images(np.random.default_rng(0).uniform(size=(4, 16, 16, 3)).astype(np.float32))
  np.testing.assert_array_equal(jax.jit(run.model.apply)(run.variables, images),
                                jax.jit(trained.model.apply)(trained.params, images))
  assert run.model == trained.model


def test_a_teacher_and_the_sweep_restore_the_folder_run(folder_run, tmp_path):
  _, workdir, trained = folder_run
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
  assert rows["dense"]["top1"] == rows["sit (trained)"]["top1"] == trained.metrics["test/accuracy"]
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
