"""Every embedded dataset by name: the offline ones (tokax.data.offline) and glyphs (tokax.data.glyphs).

  load("glyphs", "test", image_size=64, num_examples=500)   # an offline.ArrayDataset, float32 in [0, 1]
  num_classes("cluttered_digits")                           # 10

A name may carry options after a colon ("glyphs:distractors=3"); `base_name` drops them.
"""
from __future__ import annotations

from typing import Any

from tokax.data import glyphs, offline

DATASETS: tuple[str, ...] = (*offline.DATASETS, "glyphs")


def base_name(name: str) -> str:
  """"glyphs:distractors=3" -> "glyphs"; "offline:digits" -> "digits"."""
  return str(name).removeprefix("offline:").partition(":")[0]


def is_embedded(name: str) -> bool:
  """Whether `name` is an embedded dataset (not "tfds:" / "folder:" and listed in DATASETS)."""
  return base_name(name) in DATASETS


def check_name(name: str) -> str:
  """base_name(name), or a ValueError listing DATASETS."""
  base = base_name(name)
  if base not in DATASETS:
    raise ValueError(f"data.name: unknown embedded dataset {name!r}; expected one of {DATASETS}, "
                     "'tfds:<name>[:split]' or 'folder:<root>'")
  return base


def num_classes(name: str) -> int:
  """The class count of embedded dataset `name`."""
  base = check_name(name)
  if base == "glyphs":
    return glyphs.NUM_CLASSES
  if base == "photo_crops":
    return len(offline.BACKGROUNDS)
  return offline.NUM_CLASSES


def load(name: str, split: str, **kwargs: Any) -> offline.ArrayDataset:
  """One split in memory (kwargs: image_size, num_examples, seed; see offline.load / glyphs.load)."""
  if check_name(name) == "glyphs":
    return glyphs.load(str(name).removeprefix("offline:"), split, **kwargs)
  return offline.load(base_name(name), split, **kwargs)
