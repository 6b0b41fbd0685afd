"""Tests of tokax.data.glyphs: determinism, splits, pins, classes x fonts, bad input, the pipeline view."""
import hashlib
import pickle
import socket

import numpy as np
import pytest

from tokax.data import embedded, glyphs, offline, pipeline

SMALL = 32


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
  def refuse(*args, **kwargs):
    raise AssertionError("tokax.data.glyphs tried to reach the network")

  monkeypatch.setattr(socket.socket, "connect", refuse)
  monkeypatch.setattr(socket, "create_connection", refuse)


def digest(image: np.ndarray) -> str:
  return hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()[:16]


# --- determinism and splits -------------------------------------------------------------------


def test_examples_depend_only_on_seed_split_index():
  images, labels = glyphs.build("train", 12, image_size=SMALL)
  order = [11, 3, 3, 0, 7]
  picked, picked_labels, _ = glyphs.generate("train", order, image_size=SMALL)
  np.testing.assert_array_equal(picked, images[order])
  np.testing.assert_array_equal(picked_labels, labels[order])
  more, _ = glyphs.build("train", 20, image_size=SMALL)  # a longer set extends, never changes
  np.testing.assert_array_equal(more[:12], images)
  tail, _ = glyphs.build("train", 4, image_size=SMALL, start=8)
  np.testing.assert_array_equal(tail, images[8:])
  source = glyphs.GlyphSource("train", num_examples=12, image_size=SMALL)
  assert source[5]["label"] == labels[5]
  np.testing.assert_array_equal(source[5]["image"], images[5])
  other_seed, _ = glyphs.build("train", 12, image_size=SMALL, seed=1)
  assert not np.array_equal(other_seed, images)


def test_splits_draw_from_disjoint_streams():
  draws = {split: np.stack([glyphs.example_draws(0, split, i) for i in range(64)]) for split in glyphs.SPLITS}
  for a in glyphs.SPLITS:
    for b in glyphs.SPLITS:
      if a < b:
        assert not np.isin(draws[a], draws[b]).any(), (a, b)
  images = {split: glyphs.build(split, 4, image_size=SMALL)[0] for split in glyphs.SPLITS}
  for i in range(4):
    assert len({images[split][i].tobytes() for split in glyphs.SPLITS}) == 3


# Computed once on the reference machine (Pillow 13.0 / its FreeType, numpy 2): the first 4 images
# of each split, seed 0. Another FreeType build may move glyph edge pixels.
PINS = {
    64: {
        "train": ["237a0a168d2196b9", "272791603329caf8", "69eb962d82fe7f18", "a851ac3b5da72803"],
        "val": ["88f6e1a1cf99a1be", "5525c4002534440f", "a5e611696bbd85ab", "fdf0bd7364deec45"],
        "test": ["c157e02e56fe1c62", "3055986634cf7c48", "906d9f409c626c49", "240473fd9125d8e0"],
    },
    224: {
        "train": ["e4be5b5eccb2b611", "f3e32c6eb60d7cb3", "c63be341adb1964f", "9232126a0c2362c0"],
        "val": ["ff9fb6229f3147e0", "10b226129e59e2f9", "17bf3d8fa72259db", "1702c483a6b543b2"],
        "test": ["9e107acc5054aa16", "3d5067a844cc5d79", "1b9fd0b4f0201e1c", "a790cbb89721696b"],
    },
}
PIN_LABELS = {"train": [12, 0, 6, 4], "val": [20, 18, 18, 31], "test": [15, 18, 25, 14]}


@pytest.mark.parametrize("image_size", [64, 224])
def test_first_images_pinned_bit_for_bit(image_size):
  for split in glyphs.SPLITS:
    images, labels = glyphs.build(split, 4, image_size=image_size)
    assert [digest(image) for image in images] == PINS[image_size][split], split
    assert labels.tolist() == PIN_LABELS[split], split


# --- classes, fonts, statistics ---------------------------------------------------------------


def test_class_list_is_documented():
  assert glyphs.NUM_CLASSES == len(set(glyphs.CLASSES)) == 32
  assert not set(glyphs.DROPPED) & set(glyphs.CLASSES)
  assert set(glyphs.DROPPED) | set(glyphs.CLASSES) == set("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ")
  assert not set(glyphs.DISTRACTORS) & set(glyphs.CLASSES)


def test_every_class_renders_in_every_font():
  fonts = glyphs.available_fonts()
  assert fonts.skipped == {}, fonts.skipped  # all of FONT_FILES ship with matplotlib
  for path in fonts.paths:
    masks = [glyphs.glyph_mask(path, char, 12, 0) for char in glyphs.CLASSES + glyphs.DISTRACTORS]
    for char, mask in zip(glyphs.CLASSES + glyphs.DISTRACTORS, masks):
      assert (mask > 128).sum() >= 4, (path, char)
    # no placeholder boxes: the class glyphs of one font all differ
    assert len({(m.shape, m.tobytes()) for m in masks}) == len(masks), path


def test_labels_are_uniform():
  n, k = 6400, glyphs.NUM_CLASSES
  labels = [glyphs.label_of(glyphs.example_draws(0, "train", i)) for i in range(n)]
  counts = np.bincount(labels, minlength=k)
  chi2 = ((counts - n / k) ** 2 / (n / k)).sum()
  assert chi2 < 70, (chi2, counts)  # 31 degrees of freedom: P(chi2 > 70) ~ 1e-4


def test_glyph_covers_a_minority_of_the_image():
  size = 64
  _, _, boxes = glyphs.generate("val", np.arange(200), image_size=size)
  area = boxes[:, 2] * boxes[:, 3] / size ** 2
  assert area.max() < 0.55 and area.mean() < 0.3, (area.max(), area.mean())
  draws = glyphs.example_draws(0, "val", 0)
  image, _, (top, left, h, w) = glyphs.render(draws, size)
  no_glyph = draws.copy()
  no_glyph[glyphs._OPACITY_U] = -glyphs._OPACITY[0] / (glyphs._OPACITY[1] - glyphs._OPACITY[0])  # opacity 0
  background, _, _ = glyphs.render(no_glyph, size)
  changed = (image != background).any(axis=-1)
  assert 0.03 < changed.mean() < 0.3
  assert not changed[:top].any() and not changed[top + h:].any()


def test_distractors_leave_the_class_and_label():
  plain, labels, boxes = glyphs.generate("test", np.arange(16), image_size=SMALL)
  cluttered, labels_d, boxes_d = glyphs.generate("test", np.arange(16), image_size=SMALL, distractors=3)
  np.testing.assert_array_equal(labels, labels_d)
  np.testing.assert_array_equal(boxes, boxes_d)
  assert (plain != cluttered).any()


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, field", [
    (dict(split="training"), "split"),
    (dict(indices=[-1]), "index"),
    (dict(indices=[2 ** 31]), "index"),
    (dict(indices=[0.5]), "index"),
    (dict(seed=-1), "seed"),
    (dict(seed=2 ** 31), "seed"),
    (dict(seed=True), "seed"),
    (dict(image_size=4), "image_size"),
    (dict(distractors=9), "distractors"),
])
def test_bad_arguments_name_the_argument(kwargs, field):
  args = dict(split="train", indices=[0], image_size=SMALL, seed=0)
  args.update(kwargs)
  with pytest.raises(ValueError, match=field):
    glyphs.generate(args.pop("split"), args.pop("indices"), **args)


def test_source_rejects_bad_indices_and_names():
  source = glyphs.GlyphSource("val", num_examples=10, image_size=SMALL)
  for index in (-1, 10, 2 ** 31, True):
    with pytest.raises(ValueError, match="index"):
      source[index]
  with pytest.raises(ValueError, match="split"):
    glyphs.GlyphSource("dev")
  with pytest.raises(ValueError, match="num_examples"):
    glyphs.GlyphSource("val", num_examples=0)
  with pytest.raises(ValueError, match="glyphs"):
    pipeline.get_source("glyphs:clutter=3", "train")


def test_a_font_that_fails_to_load_is_skipped(monkeypatch, tmp_path):
  broken = tmp_path / "broken.ttf"
  broken.write_bytes(b"not a font")
  files = glyphs.FONT_FILES[:2] + (str(broken), str(tmp_path / "missing.ttf"))
  monkeypatch.setattr(glyphs, "FONT_FILES", files)
  fonts = glyphs.available_fonts()
  assert set(fonts.skipped) == {str(broken), str(tmp_path / "missing.ttf")}
  assert fonts.loaded == glyphs.FONT_FILES[:2]
  assert fonts.fallback == (0, 1, 0, 0)
  source = glyphs.GlyphSource("train", num_examples=64, image_size=SMALL)
  assert set(source.skipped_fonts) == set(fonts.skipped) == set(source.info["skipped_fonts"])
  batch = [source[i]["image"] for i in range(64)]  # some drew the broken fonts: no crash
  assert all(image.shape == (SMALL, SMALL, 3) for image in batch)
  monkeypatch.setattr(glyphs, "FONT_FILES", (str(broken),))
  with pytest.raises(ValueError, match="no font"):
    glyphs.available_fonts()


# --- views: pipeline Source, offline.load -----------------------------------------------------


def test_source_runs_through_the_pipeline():
  source = pipeline.get_source("glyphs", "train", image_size=SMALL, num_examples=40, seed=0)
  assert isinstance(source, glyphs.GlyphSource) and source.num_classes == glyphs.NUM_CLASSES
  assert pickle.loads(pickle.dumps(source))[3]["label"] == source[3]["label"]
  it = pipeline.make_iterator("glyphs", batch_size=8, split="train", num_threads=2,
                              source_kwargs=dict(image_size=SMALL, num_examples=40))
  first = next(it)
  assert first["image"].shape == (8, SMALL, SMALL, 3) and first["image"].dtype == np.uint8
  assert first["label"].shape == (8,)
  state = it.get_state()
  second = next(it)
  it.set_state(state)
  np.testing.assert_array_equal(next(it)["image"], second["image"])
  it.close()
  order = it._order(0)[8:16]
  np.testing.assert_array_equal(second["image"], glyphs.generate("train", order, image_size=SMALL)[0])


def test_offline_load_view():
  ds = embedded.load("glyphs:distractors=2", "val", image_size=SMALL, num_examples=6, seed=3)
  assert isinstance(ds, offline.ArrayDataset) and ds.num_classes == glyphs.NUM_CLASSES
  assert ds.images.dtype == np.float32 and ds.images.shape == (6, SMALL, SMALL, 3)
  images, labels, _ = glyphs.generate("val", np.arange(6), image_size=SMALL, seed=3, distractors=2)
  np.testing.assert_array_equal(ds.images, images / np.float32(255))
  np.testing.assert_array_equal(ds.labels, labels)
