"""Tiny tfds datasets on disk, built by the tests themselves (no network, no TensorFlow).

  name = build_tiny_imagenet(tmp_path, file_format="tfrecord", num_train=24, num_val=8)
  source = tokax.data.tfds.data_source(f"tfds:{name}:train", data_dir=tmp_path)
  tiny_imagenet_examples("train", num_train)   # what the builder's generator yields, in order

The dataset is imagenet2012-shaped: "image" (JPEG bytes of varied sizes), "label" (ClassLabel, 1000
classes), "file_name"; splits train and validation. tfds's own builder machinery writes it
(dataset_info.json, features.json, sharded files) in array_record or TFRecord. For TFRecord, tfds writes
through tf.io.TFRecordWriter, so that one call is swapped for tokax.data.tfrecord.write (the same
framing): everything else on disk is what `tfds build --file_format=tfrecord` writes. Shuffling is off
(DatasetInfo.disable_shuffling), so the files hold the examples in the generator's order.
"""
from __future__ import annotations

import io
import os
from unittest import mock

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from tokax.data import tfrecord

NAME = "tokax_tiny_imagenet"
NUM_CLASSES = 1000
FILE_FORMATS = ("array_record", "tfrecord")
_SPLIT_SEED = {"train": 0, "validation": 1}


def tiny_imagenet_examples(split: str, num_examples: int, *, seed: int = 0) -> list[dict]:
  """The examples the builder's generator yields for `split`, in order: {"image": JPEG bytes, "label", "file_name"}.

  Images are random (a smooth colour field plus noise) of sizes 16..72 x 16..72, JPEG-encoded by PIL.
  """
  rng = np.random.default_rng((seed, _SPLIT_SEED[split]))
  examples = []
  for i in range(num_examples):
    height, width = (int(v) for v in rng.integers(16, 73, 2))
    coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    field = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR), np.int16)
    pixels = np.clip(field + rng.integers(-40, 41, field.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=int(rng.integers(70, 96)))
    examples.append({"image": buffer.getvalue(), "label": int(rng.integers(NUM_CLASSES)),
                     "file_name": f"{split}_{i:05d}.JPEG"})
  return examples


class TokaxTinyImagenet(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """imagenet2012's features and splits at a few dozen examples (see the module docstring).

  Not registered with tfds: readers find the prepared copy by its files (tfds's ReadOnlyBuilder), as they
  find any dataset prepared elsewhere; importing this module twice is harmless.
  """

  VERSION = tfds.core.Version("1.0.0")

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    """This file (tfds's own lookup goes through importlib_resources for a module inside a namespace package)."""
    return epath.Path(__file__)

  def __init__(self, *, num_train: int = 24, num_val: int = 8, seed: int = 0, **kwargs):
    self._sizes, self._seed = {"train": num_train, "validation": num_val}, seed
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, disable_shuffling=True, supervised_keys=("image", "label"),
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(encoding_format="jpeg"),
            "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
            "file_name": tfds.features.Text(),
        }))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split) for split in self._sizes}

  def _generate_examples(self, split):
    for i, example in enumerate(tiny_imagenet_examples(split, self._sizes[split], seed=self._seed)):
      yield i, example


def _write_tfrecord(path, iterator) -> None:
  """TfRecordFileAdapter.write_examples without tf.io.TFRecordWriter."""
  tfrecord.write(path, (serialized for _, serialized in iterator))


def build_tiny_imagenet(data_dir: str | os.PathLike, *, file_format: str = "array_record", num_train: int = 24,
                        num_val: int = 8, seed: int = 0, num_shards: int | None = 3) -> str:
  """Prepares the tiny imagenet2012-shaped dataset in `data_dir`, in `file_format`; returns its tfds name.

  num_shards: files per split (tfds's DownloadConfig.num_shards; None: tfds decides, one file here).
  Read it with data_source(f"tfds:{name}:train", data_dir=data_dir).
  """
  if file_format not in FILE_FORMATS:
    raise ValueError(f"file_format: one of {FILE_FORMATS}; got {file_format!r}")
  builder = TokaxTinyImagenet(data_dir=os.fspath(data_dir), file_format=file_format, num_train=num_train,
                              num_val=num_val, seed=seed)
  config = tfds.download.DownloadConfig(compute_stats=tfds.download.ComputeStatsMode.SKIP, num_shards=num_shards)
  adapter = tfds.core.file_adapters.TfRecordFileAdapter
  with mock.patch.object(adapter, "write_examples", staticmethod(_write_tfrecord)):
    builder.download_and_prepare(download_config=config)
  return NAME
