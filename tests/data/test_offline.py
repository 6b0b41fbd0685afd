"""Tests of tokax.data.offline: the embedded datasets and the batch iterator (CPU, no network)."""
import itertools
import socket

import jax
import numpy as np
import pytest
from sklearn.datasets import load_digits

from tokax.data import offline
from tokax.data.offline import ArrayDataset, iterate_batches, load

SMALL = 64  # image side for the cluttered tests that do not care about resolution


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
  def refuse(*args, **kwargs):
    raise AssertionError("tokax.data.offline tried to reach the network")

  monkeypatch.setattr(socket.socket, "connect", refuse)
  monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def sklearn_digits():
  digits = load_digits()
  return digits.images / 16.0, digits.target


def random_dataset(n, size=4, seed=0):
  """A random ArrayDataset whose labels are the example ids 0..n-1."""
  images = np.random.default_rng(seed).uniform(size=(n, size, size, 3)).astype(np.float32)
  return ArrayDataset(images=images, labels=np.arange(n, dtype=np.int32), num_classes=n,
                      name="random")


# --- datasets ---------------------------------------------------------------------------------


@pytest.mark.parametrize("split", offline.SPLITS)
def test_digits_match_sklearn(split, sklearn_digits):
  images8, targets = sklearn_digits
  ds = load("digits", split)
  pool = offline.split_source_indices(split)
  assert ds.images.shape == (len(pool), 32, 32, 3) and ds.images.dtype == np.float32
  assert ds.labels.dtype == np.int32 and ds.source_index.dtype == np.int32
  assert sorted(ds.source_index) == sorted(pool)
  np.testing.assert_array_equal(ds.labels, targets[ds.source_index])
  assert 0.0 <= ds.images.min() and ds.images.max() <= 1.0
  np.testing.assert_array_equal(ds.images[..., 0], ds.images[..., 2])
  expected = jax.image.resize(images8[ds.source_index[:16]], (16, 32, 32), "linear")
  np.testing.assert_allclose(ds.images[:16, ..., 1], np.asarray(expected), atol=1e-5)
  assert (ds.name, ds.split, ds.num_classes, ds.boxes) == ("digits", split, 10, None)


@pytest.mark.parametrize("size", [32, 19])
def test_resize_bilinear_matches_jax_upsampling(size):
  images = np.random.default_rng(size).uniform(size=(5, 8, 8)).astype(np.float32)
  expected = jax.image.resize(images, (5, size, size), "linear")
  np.testing.assert_allclose(offline.resize_bilinear(images, size), expected, atol=1e-5)


def test_splits_are_disjoint_stratified_and_cover_every_digit(sklearn_digits):
  _, targets = sklearn_digits
  pools = {split: offline.split_source_indices(split) for split in offline.SPLITS}
  assert sum(len(p) for p in pools.values()) == len(targets)
  np.testing.assert_array_equal(np.sort(np.concatenate(list(pools.values()))),
                                np.arange(len(targets)))
  for split, fraction in zip(offline.SPLITS, (0.7, 0.1, 0.2)):
    assert abs(len(pools[split]) / len(targets) - fraction) < 0.01
    assert set(targets[pools[split]]) == set(range(10))


@pytest.mark.parametrize("name", ["digits", "cluttered_digits"])
def test_loaded_splits_never_share_a_source_digit(name):
  sources = {split: set(load(name, split, image_size=8, num_examples=150).source_index)
             for split in offline.SPLITS}
  for a, b in itertools.combinations(offline.SPLITS, 2):
    assert not sources[a] & sources[b], (a, b)
  for split in offline.SPLITS:
    assert sources[split] <= set(offline.split_source_indices(split))


@pytest.mark.parametrize("name", ["digits", "cluttered_digits"])
def test_same_seed_same_arrays_other_seed_other_arrays(name):
  first = load(name, "train", image_size=16, num_examples=40, seed=3)
  again = load(name, "train", image_size=16, num_examples=40, seed=3)
  other = load(name, "train", image_size=16, num_examples=40, seed=4)
  np.testing.assert_array_equal(first.images, again.images)
  np.testing.assert_array_equal(first.labels, again.labels)
  np.testing.assert_array_equal(first.source_index, again.source_index)
  assert not np.array_equal(first.images, other.images)
  assert not np.array_equal(first.source_index, other.source_index)


@pytest.mark.parametrize("image_size", [224, 112, SMALL])
def test_cluttered_shapes_ranges_labels_and_boxes(image_size, sklearn_digits):
  _, targets = sklearn_digits
  ds = load("cluttered_digits", "val", image_size=image_size, num_examples=12, seed=1)
  assert ds.images.shape == (12, image_size, image_size, 3) and ds.images.dtype == np.float32
  assert 0.0 <= ds.images.min() and ds.images.max() <= 1.0
  assert ds.labels.dtype == np.int32
  np.testing.assert_array_equal(ds.labels, targets[ds.source_index])
  top, left, height, width = ds.boxes.T
  assert np.all(height == width)
  assert np.all((top >= 0) & (left >= 0))
  assert np.all((top + height <= image_size) & (left + width <= image_size))
  assert np.all(height >= round(0.25 * image_size) - 1) and np.all(height <= 0.4 * image_size + 1)
  # Not a grey image: the backgrounds include colour photos and the digit is coloured.
  assert np.abs(ds.images[..., 0] - ds.images[..., 1]).max() > 0.05


def test_cluttered_defaults():
  assert load("cluttered_digits", "test", num_examples=2).images.shape == (2, 224, 224, 3)
  assert load("digits", "test", num_examples=2).images.shape == (2, 32, 32, 3)
  assert len(load("cluttered_digits", "val", image_size=8)) == 500


def test_cluttered_example_depends_only_on_seed_split_index():
  short = load("cluttered_digits", "train", image_size=SMALL, num_examples=10, seed=5)
  long = load("cluttered_digits", "train", image_size=SMALL, num_examples=1030, seed=5)
  np.testing.assert_array_equal(short.images, long.images[:10])
  np.testing.assert_array_equal(short.boxes, long.boxes[:10])
  assert len(set(long.source_index)) > 500  # the train pool is well used
  larger = load("cluttered_digits", "train", image_size=2 * SMALL, num_examples=10, seed=5)
  np.testing.assert_array_equal(larger.source_index, short.source_index)
  np.testing.assert_allclose(larger.boxes[:, 2] / 2, short.boxes[:, 2], atol=1)


def test_pasted_digit_is_the_labelled_one(sklearn_digits):
  images8, targets = sklearn_digits
  ds = offline._build_cluttered_digits("test", SMALL, 24, 7)
  background = offline._build_cluttered_digits("test", SMALL, 24, 7, paste_digits=False)
  others = np.random.default_rng(0).choice(len(targets), 60, replace=False)
  for i, (top, left, side, _) in enumerate(ds.boxes):
    outside = np.ones((SMALL, SMALL), bool)
    outside[top:top + side, left:left + side] = False
    np.testing.assert_array_equal(ds.images[i][outside], background.images[i][outside])
    change = np.abs(ds.images[i] - background.images[i])[~outside].max(-1).reshape(side, side)
    assert change.max() > 0.3

    def correlation(k):
      digit = offline.resize_bilinear(images8[k][None], side)[0]
      return np.corrcoef(digit.ravel(), change.ravel())[0, 1]

    pasted = correlation(ds.source_index[i])
    assert pasted > 0.95
    assert pasted > max(correlation(k) for k in others if targets[k] != ds.labels[i])
  # Most of the image is background: the reason token reduction helps.
  assert (ds.boxes[:, 2] ** 2 / SMALL**2).max() < 0.17


def test_backgrounds_ship_with_scikit_image():
  for name, loader in offline._background_loaders().items():
    photo = loader()
    assert photo.ndim in (2, 3) and min(photo.shape[:2]) >= 150, name
  assert len(offline._background_loaders()) == len(offline.BACKGROUNDS)


def test_arrays_are_read_only():
  ds = load("digits", "val", image_size=8, num_examples=4)
  with pytest.raises(ValueError):
    ds.images[0, 0, 0, 0] = 1.0
  with pytest.raises(ValueError):
    ds.labels[0] = 1


# --- iterate_batches --------------------------------------------------------------------------


def epoch_ids(batches):
  return [batch["label"][batch.get("mask", np.ones_like(batch["label"], bool))]
          for batch in batches]


def test_shuffled_epochs_cover_every_example_once():
  ds = random_dataset(23)
  batches = list(iterate_batches(ds, 5, seed=1, drop_remainder=False))
  assert len(batches) == 5
  for batch in batches:
    assert batch["image"].shape == (5, 4, 4, 3) and batch["image"].dtype == np.float32
    assert batch["label"].dtype == np.int32 and batch["mask"].dtype == bool
    real = batch["label"][batch["mask"]]
    np.testing.assert_array_equal(batch["image"][batch["mask"]], ds.images[real])
  ids = np.concatenate(epoch_ids(batches))
  np.testing.assert_array_equal(np.sort(ids), np.arange(23))
  assert not np.array_equal(ids, np.arange(23))

  dropped = list(iterate_batches(ds, 5, seed=1))
  assert len(dropped) == 4 and all("mask" not in b for b in dropped)
  assert len(set(np.concatenate(epoch_ids(dropped)))) == 20


def test_batches_are_deterministic_and_resumable():
  ds = random_dataset(20)
  two = epoch_ids(iterate_batches(ds, 4, seed=2, num_epochs=2))
  again = epoch_ids(iterate_batches(ds, 4, seed=2, num_epochs=2))
  other = epoch_ids(iterate_batches(ds, 4, seed=3, num_epochs=2))
  resumed = epoch_ids(iterate_batches(ds, 4, seed=2, epoch_offset=1))
  np.testing.assert_array_equal(np.concatenate(two), np.concatenate(again))
  assert not np.array_equal(np.concatenate(two), np.concatenate(other))
  np.testing.assert_array_equal(np.concatenate(two[5:]), np.concatenate(resumed))
  assert not np.array_equal(np.concatenate(two[:5]), np.concatenate(two[5:]))
  forever = iterate_batches(ds, 4, seed=2, num_epochs=None)
  assert len(list(itertools.islice(forever, 17))) == 17


def test_eval_order_padding_and_mask():
  ds = random_dataset(23)
  batches = list(iterate_batches(ds, 5, shuffle=False, drop_remainder=False))
  assert [b["image"].shape for b in batches] == [(5, 4, 4, 3)] * 5
  np.testing.assert_array_equal(np.concatenate(epoch_ids(batches)), np.arange(23))
  assert sum(int(b["mask"].sum()) for b in batches) == 23
  np.testing.assert_array_equal(batches[-1]["mask"], [True, True, True, False, False])
  assert not batches[-1]["image"][3:].any()


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, message", [
    (dict(name="mnist", split="train"), r"name must be one of \('digits', 'cluttered_digits', 'photo_crops'\)"),
    (dict(name="digits", split="training"), r"split must be one of \('train', 'val', 'test'\)"),
    (dict(name="digits", split="train", image_size=4), "image_size must be an int >= 8"),
    (dict(name="digits", split="train", image_size=32.0), "image_size must be an int"),
    (dict(name="cluttered_digits", split="train", num_examples=0), "num_examples must be"),
    (dict(name="digits", split="val", num_examples=10_000), "num_examples must be at most 180"),
    (dict(name="digits", split="val", seed=-1), "seed must be an int >= 0"),
])
def test_load_rejects_bad_input(kwargs, message):
  with pytest.raises(ValueError, match=message):
    load(**kwargs)


@pytest.mark.parametrize("kwargs, message", [
    (dict(batch_size=0), "batch_size must be an int >= 1"),
    (dict(batch_size=30), "batch_size must be at most the dataset size 23"),
    (dict(batch_size=4, epoch_offset=-1), "epoch_offset"),
    (dict(batch_size=4, num_epochs=0), "num_epochs"),
])
def test_iterate_batches_rejects_bad_input_at_once(kwargs, message):
  with pytest.raises(ValueError, match=message):
    iterate_batches(random_dataset(23), **kwargs)


def test_array_dataset_checks_shapes():
  with pytest.raises(ValueError, match="labels must have shape"):
    ArrayDataset(images=np.random.default_rng(0).uniform(size=(3, 4, 4, 3)),
                 labels=np.zeros(2, np.int32), num_classes=2, name="x")


def test_photo_crops_hold_out_photos_and_are_deterministic():
  train = load("photo_crops", "train", image_size=16, num_examples=40, seed=3)
  test = load("photo_crops", "test", image_size=16, num_examples=40, seed=3)
  names = lambda ds: {offline.BACKGROUNDS[i] for i in ds.labels}
  assert names(train) <= set(offline.PHOTO_SPLITS["train"]) and names(test) <= set(offline.PHOTO_SPLITS["test"])
  assert not set(offline.PHOTO_SPLITS["train"]) & set(offline.TEXTURES + offline.TEXT_IMAGES)
  np.testing.assert_array_equal(load("photo_crops", "train", image_size=16, num_examples=10, seed=3).images,
                                train.images[:10])
  assert train.images.std() > 0.05 and 0.0 <= train.images.min() and train.images.max() <= 1.0
