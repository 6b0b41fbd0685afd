"""The classifier trainer on the input pipeline: an image folder with mixup, exact resume; the soft-label loss."""
import importlib.util
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from tokax.train import losses
from tokax.train import run as training
from tokax.train.tasks import classifier
from tokax.train import logging as metric_logging

REPO = pathlib.Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "folder_vit.py"
NUM_CLASSES, PER_CLASS = 3, 8


def _log_softmax64(x):
  x = np.asarray(x, np.float64)
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_soft_cross_entropy_closed_form_and_timm_smoothing_order():
  rng = np.random.default_rng(0)
  b, k, eps, lam = 5, 7, 0.1, 0.3
  logits = rng.normal(size=(b, k)).astype(np.float32) * 3
  labels = rng.integers(0, k, size=b)
  onehot = np.eye(k)[labels]
  mixed = lam * onehot + (1 - lam) * onehot[::-1]
  got = np.asarray(losses.soft_cross_entropy(jnp.asarray(logits), jnp.asarray(mixed, jnp.float32), label_smoothing=eps))
  # timm: mixup_target smooths each one-hot (off = eps/K, on = 1 - eps + eps/K) and then mixes.
  smooth = lambda y: y * (1 - eps) + eps / k
  timm_target = lam * smooth(onehot) + (1 - lam) * smooth(onehot[::-1])
  want = -(timm_target * _log_softmax64(logits)).sum(-1)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  # one-hot soft targets give the hard-label loss; the dispatcher picks by the labels' rank.
  hard = losses.classification_cross_entropy(jnp.asarray(logits), jnp.asarray(labels), label_smoothing=eps)
  soft = losses.classification_cross_entropy(jnp.asarray(logits), jnp.asarray(onehot, jnp.float32), label_smoothing=eps)
  np.testing.assert_allclose(np.asarray(soft), np.asarray(hard), rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match="targets"):
    losses.soft_cross_entropy(jnp.asarray(logits), jnp.ones((b, k + 1)))


def test_batch_ops_spec_fills_num_classes_and_refuses_double_smoothing():
  assert classifier.batch_ops_spec("mixup_cutmix", 10, 0.1) == "mixup_cutmix(num_classes=10, label_smoothing=0.0)"
  assert classifier.batch_ops_spec("mixup(0.2, num_classes=4)", 10, 0.0) == "mixup(0.2, num_classes=4, label_smoothing=0.0)"
  assert classifier.batch_ops_spec("", 10, 0.1) == ""
  with pytest.raises(ValueError, match="label_smoothing"):
    classifier.batch_ops_spec("cutmix(label_smoothing=0.1)", 10, 0.1)


def _image_folder(root):
  rng = np.random.default_rng(1)
  for split, per_class in (("train", PER_CLASS), ("val", 3)):
    for c in range(NUM_CLASSES):
      (root / split / f"class_{c}").mkdir(parents=True)
      for i in range(per_class):
        size = (int(rng.integers(18, 26)), int(rng.integers(18, 26)), 3)
        pixels = rng.integers(0, 256, size=size).astype(np.uint8)
        pixels[..., c] = 255  # a class cue, so the run can learn something
        Image.fromarray(pixels).save(root / split / f"class_{c}" / f"{i}.png")
  return root


def _config(root):
  spec = importlib.util.spec_from_file_location("folder_vit", CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(f"data=folder:{root},runlocal")
  config.progress_bar = False
  return config


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  """4 steps (3 per epoch, so into epoch 1) with mixup_cutmix, checkpoints at 2 and 4."""
  root = _image_folder(tmp_path_factory.mktemp("images"))
  workdir = tmp_path_factory.mktemp("straight")
  config = _config(root)
  return root, workdir, config, training.train(config, str(workdir))


def test_folder_run_with_mixup_resumes_to_bitwise_equal_params(straight, tmp_path):
  root, ref_dir, config, ref = straight
  assert ref.step == 4 and not ref.preempted
  assert ref.metrics["test/num_examples"] == 3 * NUM_CLASSES and 0 <= ref.metrics["val/accuracy"] <= 1
  records = metric_logging.read_metrics(ref_dir / "metrics.jsonl")
  assert [r["step"] for r in records if "train/loss" in r] == [1, 2, 3, 4]
  assert all(np.isfinite(r["train/loss"]) for r in records if "train/loss" in r)

  # The stream the trainer built: soft (B, K) labels summing to 1, restorable mid-epoch.
  data = classifier.train_data(config, classifier.source(config, "train"), NUM_CLASSES)
  stream = training.train_stream(config, data, slice(0, 8))
  first = [next(stream) for _ in range(2)]
  assert first[0]["label"].shape == (8, NUM_CLASSES) and first[0]["image"].shape == (8, 16, 16, 3)
  np.testing.assert_allclose(first[0]["label"].sum(-1), 1.0, rtol=1e-6)
  position = stream.position()
  assert position == {"epoch": 0, "position": 2, "seed": 0, "batch_size": 8, "num_examples": 24,
                      "dataset": f"folder:{root}"}
  after = next(stream)
  stream.restore(position)
  jax.tree.map(np.testing.assert_array_equal, next(stream), after)
  with pytest.raises(ValueError, match="batch_size"):
    stream.restore({**position, "batch_size": 16})

  # Resume: keep only checkpoint 2 of the straight run, rerun the same config: same final parameters.
  workdir = tmp_path / "resumed"
  shutil.copytree(ref_dir, workdir)
  shutil.rmtree(workdir / "checkpoints" / "4")
  resumed = training.train(config, str(workdir))
  assert resumed.step == 4
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(resumed.params), jax.device_get(ref.params))
  assert resumed.metrics == ref.metrics
  steps = [r["step"] for r in metric_logging.read_metrics(workdir / "metrics.jsonl") if "train/loss" in r]
  assert steps == [1, 2, 3, 4, 3, 4], steps  # the copied straight log, then the resumed steps 3 and 4
