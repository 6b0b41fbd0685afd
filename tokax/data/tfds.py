"""TensorFlow Datasets by name, through `tfds.data_source` (array_record, random access, no TensorFlow).

  source = data_source("tfds:imagenet2012:train[:99%]")   # or data_source("tfds:cifar10", split="test")
  len(source); source[i] -> {"image": (H, W, 3) uint8, "label": int, ...}

The dataset must already be prepared in array_record format in `data_dir` (tfds's default
~/tensorflow_datasets or $TFDS_DATA_DIR), e.g. `tfds build imagenet2012 --file_format=array_record`;
nothing is downloaded here (download=False). Tests serve it offline with tfds.testing.mock_data.
"""
from __future__ import annotations

from typing import Any

PREFIX = "tfds:"


def parse_name(name: str, split: str | None = None) -> tuple[str, str]:
  """"tfds:<name>[:split]" -> (name, split); a split in the name wins over the `split` argument."""
  if not isinstance(name, str) or not name.startswith(PREFIX) or len(name) == len(PREFIX):
    raise ValueError(f"data.name: expected 'tfds:<name>[:split]' (e.g. 'tfds:cifar10:train'); got {name!r}")
  dataset, _, name_split = name[len(PREFIX):].partition(":")
  split = name_split or split
  if not split:
    raise ValueError(f"data.name: {name!r} has no split; write 'tfds:{dataset}:train' or pass split=")
  return dataset, split


class TfdsSource:
  """A random-access view of one tfds split: len() and [i] -> dict of numpy values (keys filtered)."""

  def __init__(self, name: str, split: str | None = None, *, data_dir: str | None = None,
               keys: tuple[str, ...] | None = ("image", "label")):
    import tensorflow_datasets as tfds  # noqa: PLC0415 (optional dependency)

    self.name, self.split = parse_name(name, split)
    self.keys = keys
    self._source = tfds.data_source(self.name, split=self.split, data_dir=data_dir, download=False)
    self.num_classes = _num_classes(self._source)

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    example = self._source[int(index)]
    if self.keys is None:
      return dict(example)
    missing = [k for k in self.keys if k not in example]
    if missing:
      raise ValueError(f"tfds:{self.name}: examples have no {missing}; they have {sorted(example)} "
                       "(set the loader's keys)")
    return {k: example[k] for k in self.keys}


def _num_classes(source: Any) -> int | None:
  features = getattr(getattr(source, "dataset_info", None), "features", None)
  try:
    return int(features["label"].num_classes)
  except (KeyError, TypeError, AttributeError):
    return None


def data_source(name: str, split: str | None = None, *, data_dir: str | None = None,
                keys: tuple[str, ...] | None = ("image", "label")) -> TfdsSource:
  """TfdsSource(name, split, data_dir=..., keys=...)."""
  return TfdsSource(name, split, data_dir=data_dir, keys=keys)
