"""TensorFlow Datasets by name, random access, without TensorFlow: array_record and TFRecord.

  source = data_source("tfds:imagenet2012:train[:99%]")   # or data_source("tfds:cifar10", split="test")
  len(source); source[i] -> {"image": (H, W, 3) uint8, "label": int, ...}

Names: "tfds:<name>[/<config>][:<version>][:<split>]" (e.g. "tfds:imagenet2012:5.1.0:validation"); the
split takes tfds's split syntax ("train[:99%]", "train+validation").

The dataset must already be prepared (nothing is downloaded here). Where it is looked for, in order:
the `data_dir` argument (config.data.data_dir), else $TFDS_DATA_DIR, else ~/tensorflow_datasets
(tfds's own default, with any directory registered through tfds.core.add_data_dir). Both on-disk
formats that `tfds build` writes are read:

- array_record (`tfds build <name> --file_format=array_record`): through tfds.data_source.
- TFRecord (tfds's default format, what most prepared directories hold): the shards named in the
  split's dataset_info.json are read here (tokax.data.tfrecord: an offset index built once per shard
  on first use, the length CRC of every record checked while indexing and the data CRC on each read,
  verify_crc=False skips the latter); records are tf.Example protos, decoded by the dataset's own
  features (features.deserialize_example_np, tfds's NumPy parser), as tfds.data_source does.

A dataset that is not found or not prepared, or a split it does not have, is a ValueError that says
which directories were searched, the `tfds build` command that prepares it, and the splits it has.
Tests build tiny datasets in both formats (tests/data/tfds_testing.py) or serve one through
tfds.testing.mock_data.
"""
from __future__ import annotations

import os
import re
import textwrap
import threading
from typing import Any

import numpy as np

from tokax.data import tfrecord

PREFIX = "tfds:"
RANDOM_ACCESS_FORMATS = frozenset({"array_record", "parquet"})  # what tfds.data_source reads itself
_VERSION = re.compile(r"^\d+\.\d+\.\d+$")


def parse_name(name: str, split: str | None = None) -> tuple[str, str]:
  """"tfds:<name>[:<version>][:split]" -> (name[:version], split); a split in the name wins over `split`."""
  if not isinstance(name, str) or not name.startswith(PREFIX) or len(name) == len(PREFIX):
    raise ValueError(f"data.name: expected 'tfds:<name>[:split]' (e.g. 'tfds:cifar10:train'); got {name!r}")
  dataset, _, name_split = name[len(PREFIX):].partition(":")
  version, _, after_version = name_split.partition(":")
  if _VERSION.match(version):
    dataset, name_split = f"{dataset}:{version}", after_version
  split = name_split or split
  if not split:
    raise ValueError(f"data.name: {name!r} has no split; write 'tfds:{dataset}:train' or pass split=")
  return dataset, split


def data_dirs(data_dir: str | None = None) -> list[str]:
  """The directories a dataset is looked for in, in order: `data_dir` alone when given, else
  $TFDS_DATA_DIR, else tfds's default ~/tensorflow_datasets (and any registered with tfds.core.add_data_dir)."""
  given = data_dir or os.environ.get("TFDS_DATA_DIR")
  if given:
    return [os.path.expanduser(os.fspath(given))]
  from tensorflow_datasets.core.utils import file_utils  # noqa: PLC0415 (optional dependency)

  return [os.fspath(d) for d in file_utils.list_data_dirs()]


class TfRecordSplit:
  """Random access to a split of a TFRecord-prepared tfds dataset: len(), [i] -> the decoded example.

  Args:
    shards: (path, skip, take, examples_in_shard) per shard file, in order: the split's file instructions.
    features: the dataset's tfds FeaturesDict (decodes a record with deserialize_example_np).
    verify_crc: check each record's data CRC when it is read (the length CRCs are always checked).
  """

  def __init__(self, shards: list[tuple[str, int, int, int]], features: Any, *, verify_crc: bool = True):
    self.shards = [(str(path), int(skip), int(take), int(total)) for path, skip, take, total in shards]
    self.features, self.verify_crc = features, verify_crc
    self._starts = np.cumsum([0] + [take for _, _, take, _ in self.shards])
    self._indexes: list[np.ndarray | None] = [None] * len(self.shards)
    self._locks = [threading.Lock() for _ in self.shards]

  def __getstate__(self) -> dict[str, Any]:
    return {k: v for k, v in self.__dict__.items() if k != "_locks"}

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.__dict__.update(state)
    self._locks = [threading.Lock() for _ in self.shards]

  def __len__(self) -> int:
    return int(self._starts[-1])

  def _shard_index(self, shard: int) -> np.ndarray:
    """(N, 2) int64 (data offset, length) of every record of a shard, built on first use."""
    index = self._indexes[shard]
    if index is None:
      with self._locks[shard]:
        index = self._indexes[shard]
        if index is None:
          path, _, _, total = self.shards[shard]
          offsets, lengths = tfrecord.index(path)
          if len(offsets) != total:
            raise tfrecord.CorruptRecordError(
                f"{path}: holds {len(offsets)} records but dataset_info.json says {total} (an incomplete or "
                "replaced shard: prepare the dataset again)")
          index = self._indexes[shard] = np.stack([offsets, lengths], axis=1)
    return index

  def record(self, index: int) -> bytes:
    """The serialized tf.Example of example `index` of the split."""
    n = len(self)
    if not -n <= index < n:
      raise IndexError(f"index {index} out of range for a split of {n} examples")
    index %= n
    shard = int(np.searchsorted(self._starts, index, side="right")) - 1
    path, skip, _, _ = self.shards[shard]
    offset, length = self._shard_index(shard)[skip + index - int(self._starts[shard])]
    return tfrecord.read(path, int(offset), int(length), verify=self.verify_crc)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return self.features.deserialize_example_np(self.record(int(index)))


class TfdsSource:
  """A random-access view of one tfds split: len() and [i] -> dict of numpy values (keys filtered).

  Attributes:
    name, split: the dataset ("imagenet2012" or "imagenet2012:5.1.0") and split ("train[:99%]").
    data_dir: the directory given (argument or $TFDS_DATA_DIR), None for tfds's default ones.
    file_format: "array_record", "tfrecord", ... (what the prepared dataset holds); None under
      tfds.testing.mock_data.
    num_classes: the label feature's class count, None without a ClassLabel "label".
  """

  def __init__(self, name: str, split: str | None = None, *, data_dir: str | None = None,
               keys: tuple[str, ...] | None = ("image", "label"), verify_crc: bool = True):
    import tensorflow_datasets as tfds  # noqa: PLC0415 (optional dependency)

    self.name, self.split = parse_name(name, split)
    self.keys = keys
    given = data_dir or os.environ.get("TFDS_DATA_DIR")
    self.data_dir = os.path.expanduser(os.fspath(given)) if given else None
    try:
      builder = tfds.builder(self.name, data_dir=self.data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
      raise ValueError(_not_found_message(self.name, self.data_dir, builder=None)) from e
    info = builder.info
    self.file_format = None
    if builder.is_prepared():
      formats = _file_formats(info)
      self.file_format = info.file_format.value if info.file_format else None
      _check_split(self.name, info, self.split)
      if formats & RANDOM_ACCESS_FORMATS:
        self.file_format = "array_record" if "array_record" in formats else min(formats & RANDOM_ACCESS_FORMATS)
        chosen = {"file_format": self.file_format} if len(formats) > 1 else {}
        self._source = builder.as_data_source(split=self.split, **chosen)
      elif self.file_format == "tfrecord":  # the split's file instructions name the primary format's files
        shards = [(fi.filename, fi.skip, fi.take, fi.examples_in_shard)
                  for fi in info.splits[self.split].file_instructions]
        self._source = TfRecordSplit(shards, info.features, verify_crc=verify_crc)
      else:
        raise ValueError(f"tfds:{self.name}: prepared in {builder.data_dir} as {sorted(formats)}, which is read "
                         f"without TensorFlow only as array_record or tfrecord; prepare it again with "
                         f"{_build_command(self.name, self.data_dir, builder)}")
    else:
      try:  # not prepared: only tfds.testing.mock_data serves it
        self._source = builder.as_data_source(split=self.split)
      except (KeyError, ValueError, NotImplementedError, OSError, AssertionError) as e:
        raise ValueError(_not_found_message(self.name, self.data_dir, builder=builder)) from e
    self.num_classes = _num_classes(info.features)

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    n, index = len(self._source), int(index)
    if not -n <= index < n:
      raise IndexError(f"tfds:{self.name}:{self.split}: index {index} out of range for {n} examples")
    example = self._source[index % n]
    if self.keys is None:
      return dict(example)
    missing = [k for k in self.keys if k not in example]
    if missing:
      raise ValueError(f"tfds:{self.name}: examples have no {missing}; they have {sorted(example)} "
                       "(set the loader's keys)")
    return {k: example[k] for k in self.keys}


def _file_formats(info: Any) -> set[str]:
  """The file formats a prepared dataset holds ("array_record", "tfrecord", ...)."""
  formats = info.available_file_formats() if hasattr(info, "available_file_formats") else {info.file_format}
  return {f.value for f in formats if f}


def _check_split(name: str, info: Any, split: str) -> None:
  try:
    info.splits[split]
  except (KeyError, ValueError, AssertionError) as e:
    available = sorted(info.splits)
    raise ValueError(f"tfds:{name}: no split {split!r}; it has {available} (write e.g. "
                     f"'tfds:{name}:{available[0] if available else 'train'}'; tfds says: {e})") from e


def _build_command(name: str, data_dir: str | None, builder: Any) -> str:
  """"`tfds build ...`", with where a manually downloaded dataset's files go."""
  target = data_dir or data_dirs(None)[0]
  command = f"`tfds build {name.split(':')[0]} --data_dir={target} --file_format=array_record`"
  if getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None):
    instructions = " ".join(textwrap.dedent(builder.MANUAL_DOWNLOAD_INSTRUCTIONS).split())
    command += (f" after downloading its files by hand into {os.path.join(target, 'downloads', 'manual')} "
                f"(or pass --manual_dir=<dir>; tfds says: {instructions})")
  return command


def _not_found_message(name: str, data_dir: str | None, *, builder: Any) -> str:
  searched = data_dirs(data_dir)
  if builder is None:
    what = (f"tfds:{name}: not found: no tensorflow-datasets builder of that name and no prepared copy "
            f"(<dir>/{name.split(':')[0]}/<version>/dataset_info.json) under {searched}")
  else:
    what = (f"tfds:{name}: not prepared: no dataset_info.json in {builder.data_dir} (searched {searched}; "
            "data_dir: the config's data.data_dir, else $TFDS_DATA_DIR, else ~/tensorflow_datasets)")
  return (f"{what}. Point data.data_dir at a prepared copy (array_record, or tfds's default tfrecord), or "
          f"prepare it once with {_build_command(name, data_dir, builder)}")


def _num_classes(features: Any) -> int | None:
  try:
    return int(features["label"].num_classes)
  except (KeyError, TypeError, AttributeError):
    return None


def data_source(name: str, split: str | None = None, *, data_dir: str | None = None,
                keys: tuple[str, ...] | None = ("image", "label"), verify_crc: bool = True) -> TfdsSource:
  """TfdsSource(name, split, data_dir=..., keys=..., verify_crc=...)."""
  return TfdsSource(name, split, data_dir=data_dir, keys=keys, verify_crc=verify_crc)
