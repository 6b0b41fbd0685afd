"""Input pipeline: string-named ops (closed forms), mixup/cutmix, tfds (mock), image folder, exact restore."""
import numpy as np
import pytest

from tokax.data import pipeline, transforms


def _rng(seed=0):
  return np.random.default_rng(seed)


def test_ops_closed_forms():
  image = _rng().integers(0, 256, (20, 30, 3), dtype=np.uint8)
  out = transforms.parse("random_crop(8, 10)|flip_lr|value_range(-1, 1)")({"image": image, "label": 1}, _rng(5))
  rng = _rng(5)  # the same draws, by hand
  top, left = rng.integers(20 - 8 + 1), rng.integers(30 - 10 + 1)
  crop = image[top:top + 8, left:left + 10]
  crop = crop[:, ::-1] if rng.random() < 0.5 else crop
  np.testing.assert_allclose(out["image"], crop / 127.5 - 1.0, atol=1e-6)
  assert out["image"].dtype == np.float32 and out["label"] == 1
  ops = transforms.parse(["resize_small(12)", "central_crop(12)"])({"image": image}, _rng())
  assert ops["image"].shape == (12, 12, 3)
  norm = transforms.parse("normalize")({"image": image}, _rng())["image"]
  np.testing.assert_allclose(norm, (image / 255.0 - transforms.IMAGENET_MEAN) / transforms.IMAGENET_STD, rtol=1e-5)
  crop = transforms.parse("inception_crop(16)")({"image": image}, _rng(3))["image"]
  assert crop.shape == (16, 16, 3) and crop.dtype == np.uint8
  with pytest.raises(ValueError, match="unknown example op 'rotate'"):
    transforms.parse("decode|rotate(3)")
  with pytest.raises(ValueError, match="resize first"):
    transforms.parse("random_crop(40)")({"image": image}, _rng())


def test_mixup_and_cutmix_closed_forms():
  b, k = 6, 5
  labels = np.array([0, 1, 2, 3, 4, 0])
  images = np.broadcast_to(np.arange(1, b + 1, dtype=np.float32)[:, None, None, None], (b, 16, 20, 3)).copy()
  images += _rng(1).standard_normal(images.shape).astype(np.float32) * 0.01
  batch = {"image": images, "label": labels}
  onehot = transforms.one_hot(labels, k, 0.1)
  np.testing.assert_allclose(onehot.sum(-1), 1.0, rtol=1e-6)

  mixed = transforms.parse_batch(f"mixup(0.8, num_classes={k}, label_smoothing=0.1)")(batch, _rng(2))
  lam = float(mixed["mix_lambda"][0])
  assert lam == pytest.approx(float(_rng(2).beta(0.8, 0.8)))
  np.testing.assert_allclose(mixed["image"], lam * images + (1 - lam) * images[::-1], rtol=1e-6)
  np.testing.assert_allclose(mixed["label"], lam * onehot + (1 - lam) * onehot[::-1], rtol=1e-6)
  np.testing.assert_allclose(mixed["label"].sum(-1), 1.0, rtol=1e-6)

  for seed in range(4):
    cut = transforms.parse_batch(f"cutmix(1.0, num_classes={k})")(batch, _rng(seed))
    lam = float(cut["mix_lambda"][0])
    from_partner = np.abs(cut["image"] - images[::-1]) < 0.1  # the pasted box: the mirror image's values
    assert from_partner[..., 0].mean(axis=(1, 2)) == pytest.approx(np.full(b, 1 - lam))  # area = 1 - lambda
    np.testing.assert_allclose(cut["label"].sum(-1), 1.0, rtol=1e-6)
    hard = transforms.one_hot(labels, k)
    np.testing.assert_allclose(cut["label"], lam * hard + (1 - lam) * hard[::-1], rtol=1e-6)
  both = transforms.parse_batch(f"mixup_cutmix(num_classes={k})")(batch, _rng(0))
  np.testing.assert_allclose(both["label"].sum(-1), 1.0, rtol=1e-6)


def _source(n=23, size=12):
  images = _rng(7).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
  return [{"image": images[i], "label": i} for i in range(n)]


def test_restore_mid_epoch_and_process_slices():
  source = _source()
  kwargs = dict(batch_size=4, seed=3, preprocess="random_crop(8)|flip_lr|value_range(0, 1)", num_threads=2)
  straight = pipeline.DataIterator(source, **kwargs)
  batches = [next(straight) for _ in range(9)]  # 5 batches per epoch: crosses into epoch 1
  epoch0 = np.concatenate([b["label"] for b in batches[:5]])
  assert len(set(epoch0.tolist())) == 20  # each example at most once per epoch
  epoch1 = np.concatenate([b["label"] for b in batches[5:9]])
  assert not np.array_equal(epoch1, epoch0[:16])  # a new permutation every epoch

  resumed = pipeline.DataIterator(source, **kwargs)
  next(resumed), next(resumed), next(resumed)
  state = resumed.get_state()
  assert state == {"epoch": 0, "position": 3}
  fresh = pipeline.DataIterator(source, **kwargs)
  fresh.set_state(state)
  for expected in batches[3:9]:
    got = next(fresh)
    np.testing.assert_array_equal(got["label"], expected["label"])
    np.testing.assert_array_equal(got["image"], expected["image"])
  assert fresh.get_state() == {"epoch": 1, "position": 4}

  halves = [pipeline.DataIterator(source, process_index=p, process_count=2, **kwargs) for p in range(2)]
  for expected in batches[:2]:
    got = [next(h) for h in halves]
    np.testing.assert_array_equal(np.concatenate([g["image"] for g in got]), expected["image"])
  with pytest.raises(ValueError, match="position"):
    fresh.set_state({"epoch": 0, "position": 5})


def test_eval_order_padding_and_batch_ops():
  source = _source(n=10)
  it = pipeline.DataIterator(source, batch_size=4, shuffle=False, drop_remainder=False, num_epochs=1,
                             preprocess="value_range(0, 1)", num_threads=1)
  batches = list(it)
  assert [b["mask"].sum() for b in batches] == [4, 4, 2]
  np.testing.assert_array_equal(np.concatenate([b["label"][b["mask"]] for b in batches]), np.arange(10))
  np.testing.assert_allclose(batches[0]["image"], np.stack([s["image"] for s in source[:4]]) / 255.0, rtol=1e-6)
  mixed = next(pipeline.DataIterator(source, batch_size=4, batch_preprocess="mixup_cutmix(num_classes=10)",
                                     preprocess="value_range(0, 1)", num_threads=1))
  assert mixed["label"].shape == (4, 10)
  np.testing.assert_allclose(mixed["label"].sum(-1), 1.0, rtol=1e-6)


def test_tfds_mock_data():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
    it = pipeline.make_iterator("tfds:mnist:train", batch_size=4, seed=0, num_threads=2,
                                preprocess="decode|resize(16)|value_range(-1, 1)")
    source = it.source
    assert len(source) == 12 and source.num_classes == 10
    batch = next(it)
    assert batch["image"].shape == (4, 16, 16, 3) and batch["image"].dtype == np.float32
    first = np.random.default_rng((pipeline._ORDER_SALT, 0, 0)).permutation(12)[:4]
    np.testing.assert_array_equal(batch["label"], [source[int(i)]["label"] for i in first])
    image = transforms.pil_resize(np.repeat(source[int(first[0])]["image"], 3, axis=-1), 16, 16)
    np.testing.assert_allclose(batch["image"][0], image / 127.5 - 1.0, atol=1e-6)
  with pytest.raises(ValueError, match="no split"):
    pipeline.get_source("tfds:mnist", split="")


def test_image_folder(tmp_path):
  from PIL import Image

  images = _rng(4).integers(0, 256, (5, 9, 11, 3), dtype=np.uint8)
  for i, cls in enumerate(["cat", "ant", "cat", "bee", "ant"]):
    (tmp_path / "train" / cls).mkdir(parents=True, exist_ok=True)
    Image.fromarray(images[i]).save(tmp_path / "train" / cls / f"{i}.png")
  it = pipeline.make_iterator(f"folder:{tmp_path}", split="train", batch_size=5, shuffle=False, num_threads=1,
                              preprocess="decode")
  assert it.source.classes == ["ant", "bee", "cat"]
  batch = next(it)
  np.testing.assert_array_equal(batch["label"], [0, 0, 1, 2, 2])
  np.testing.assert_array_equal(batch["image"], images[[1, 4, 3, 0, 2]])  # PNG is lossless
  with pytest.raises(ValueError, match="not a directory"):
    pipeline.get_source(f"folder:{tmp_path}/missing", split="")


def test_input_benchmark_smoke():
  from tokax.bench import input_pipeline

  source = input_pipeline.synthetic_jpegs(4)
  assert source[0]["image"][:2] == b"\xff\xd8"  # JPEG
  row = input_pipeline.measure(source, threads=1, batch=2, batches=1, preprocess=input_pipeline.DEFAULT_PREPROCESS)
  assert row["image_shape"] == [224, 224, 3] and row["dtype"] == "float32" and row["images_per_s"] > 0


def test_worker_processes_give_the_same_batches_and_restore():
  """num_workers=2 (spawned processes) yields the threads' batches bit for bit, also after set_state;
  uint8 batches (no value_range) come back uint8 and normalize_images reads them as 0..255."""
  import jax.numpy as jnp

  from tokax.train.model import normalize_images

  source = _source()
  kwargs = dict(batch_size=4, seed=3, preprocess="random_crop(8)|flip_lr")
  threads = pipeline.DataIterator(source, num_threads=2, **kwargs)
  expected = [next(threads) for _ in range(7)]  # into epoch 1
  workers = pipeline.DataIterator(source, num_workers=2, **kwargs)
  workers.set_state({"epoch": 0, "position": 2})
  for want in expected[2:]:
    got = next(workers)
    np.testing.assert_array_equal(got["label"], want["label"])
    np.testing.assert_array_equal(got["image"], want["image"])
  workers.close()
  assert got["image"].dtype == np.uint8
  np.testing.assert_allclose(normalize_images(jnp.asarray(got["image"])), got["image"] / 127.5 - 1.0, atol=1e-6)
  with pytest.raises(ValueError, match="num_workers"):
    pipeline.DataIterator(source, num_workers=-1, **kwargs)


class _TorchOrderSource(list):
  """A list Source whose shuffled epochs use torch.randperm(N, generator=manual_seed(epoch)): the permutation
  timm's RepeatAugSampler draws for set_epoch(epoch)."""

  def epoch_order(self, seed, epoch):
    import torch

    del seed
    return torch.randperm(len(self), generator=torch.Generator().manual_seed(epoch)).numpy()


def _timm_repeat_aug_sampler():
  """timm.data.distributed_sampler.RepeatAugSampler, loaded from timm's file alone (it needs only torch): importing
  the timm package imports torchvision, ~10 s here."""
  import importlib.util
  import os

  timm_dir = importlib.util.find_spec("timm").submodule_search_locations[0]
  spec = importlib.util.spec_from_file_location("timm_distributed_sampler",
                                                os.path.join(timm_dir, "data", "distributed_sampler.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.RepeatAugSampler


def test_repeated_augmentation_order_is_timms_repeat_aug_sampler():
  RepeatAugSampler = _timm_repeat_aug_sampler()  # noqa: N806

  for n, processes, batch_size in ((23, 1, 6), (23, 2, 4), (300, 2, 16), (300, 3, 12), (517, 4, 8)):
    source = _TorchOrderSource({"label": i} for i in range(n))
    for epoch in (0, 1):
      sampler = [RepeatAugSampler(source, num_replicas=processes, rank=p, num_repeats=3) for p in range(processes)]
      for p, s in enumerate(sampler):
        s.set_epoch(epoch)
        timm_order = list(s)
        permutation = source.epoch_order(0, epoch)
        indices, copies = pipeline.repeated_augmentation_order(permutation, 3, processes, p)
        assert indices.tolist() == timm_order
        assert len(timm_order) == pipeline.repeated_augmentation_selected(n, 3, processes)
        np.testing.assert_array_equal(permutation[copies // 3], indices)  # copy j: entry j of the repeated list

        it = pipeline.DataIterator(source, batch_size=batch_size, seed=0, process_index=p, process_count=processes,
                                   repeated_augmentation=3, keys=("label",), num_threads=1)
        assert it.steps_per_epoch == len(timm_order) // (batch_size // processes)
        labels = [it.load_batch(epoch * it.steps_per_epoch + k)["label"] for k in range(it.steps_per_epoch)]
        used = it.steps_per_epoch * (batch_size // processes)
        assert np.concatenate(labels).tolist() == timm_order[:used]  # process p's stream, whole local batches
    # per process: ceil(N / P) for N < 256, else N rounded down to 256, over P (an epoch of about N examples)
    assert len(timm_order) == {23: -(-23 // processes), 300: 256 // processes, 517: 512 // processes}[n]
  counts = np.bincount(pipeline.repeated_augmentation_order(np.arange(300), 3, 1, 0)[0])  # 3 copies in a row
  assert (counts[:85] == 3).all() and counts[85] == 1 and counts.sum() == 256
  with pytest.raises(ValueError, match="repeated_augmentation: a training order"):
    pipeline.DataIterator(_source(), batch_size=4, repeated_augmentation=3, drop_remainder=False)


def test_repeated_augmentation_draws_differ_and_resume_is_exact():
  source = _source(n=23, size=16)
  spec = "random_crop(9)|flip_lr|value_range(0, 1)"
  kwargs = dict(batch_size=6, seed=4, preprocess=spec, num_threads=2, repeated_augmentation=3)
  straight = pipeline.DataIterator(source, **kwargs)
  assert straight.steps_per_epoch == 3  # 23 selected (ceil(23 / 1), N < 256): 3 whole batches of 6
  batches = [next(straight) for _ in range(7)]  # into epoch 2
  ops = transforms.parse(spec)
  permutation = np.random.default_rng((pipeline._ORDER_SALT, 4, 0)).permutation(23)
  indices, copies = pipeline.repeated_augmentation_order(permutation, 3, 1, 0)
  epoch0 = np.concatenate([b["image"] for b in batches[:3]])
  for slot in range(18):  # each image: the example's crop drawn with the key (seed, epoch, index, copy)
    index, copy = int(indices[slot]), int(copies[slot])
    want = ops(dict(source[index]), np.random.default_rng((pipeline._EXAMPLE_SALT, 4, 0, index, copy)))["image"]
    np.testing.assert_array_equal(epoch0[slot], want)
  labels = np.concatenate([b["label"] for b in batches[:3]])
  np.testing.assert_array_equal(labels, indices[:18])
  assert (labels[0::3] == labels[1::3]).all() and (labels[0::3] == labels[2::3]).all()  # 3 copies in a row
  groups = epoch0.reshape(6, 3, -1)
  differ = [not np.array_equal(g[a], g[b]) for g in groups for a, b in ((0, 1), (0, 2), (1, 2))]
  assert sum(differ) >= 16  # the repeats are different augmentations (18 pairs; a crop collision is rare)

  fresh = pipeline.DataIterator(source, **kwargs)
  fresh.set_state({"epoch": 0, "position": 2})
  for expected in batches[2:7]:
    got = next(fresh)
    np.testing.assert_array_equal(got["label"], expected["label"])
    np.testing.assert_array_equal(got["image"], expected["image"])
  assert fresh.get_state() == {"epoch": 2, "position": 1}
  plain = next(pipeline.DataIterator(source, **{**kwargs, "repeated_augmentation": 0}))
  assert len(set(plain["label"].tolist())) == 6  # off: each example once per epoch, as before
