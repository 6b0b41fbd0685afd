"""An image-folder dataset: root/<class>/<image>, one class list per dataset (torchvision's ImageFolder order).

  train = ImageFolder("/data/flowers/train")                     # classes: train's class folders, sorted
  val = ImageFolder("/data/flowers/val", classes=train.classes)  # the same label for the same name
  len(train); train[i] -> {"image": bytes (encoded), "label": int, "path": str}
  bad = check("/data/flowers")                                   # [(path, reason)]: every file that does not decode

Classes: a dataset has one class list, its train split's class folders sorted by name; the other
splits are read with it (classes=), so a class missing from val/ shifts no label. A class folder the
list lacks, or one without images (it would take a label and shift every class after it), is an
error naming the folders. tokax.data.pipeline.get_source("folder:<root>", split) reads root/train's
list for every split; the trainer saves it into config.json (config.data.classes), and restoring and
`python -m tokax.evaluate` read it from there.

Files are read when indexed and decoded by the `decode` preprocessing op (in the loader's worker
threads or processes). Opening a folder stats every file: an empty file is an error naming it; a
file that does not decode fails in `decode` with its path when a batch reaches it. check(root)
decodes every file once and lists the bad ones (`python -m tokax.data.folder ROOT` prints them).
With skip_bad_images=True, bad files are replaced while loading and counted instead
(tokax.data.pipeline.DataIterator.bad_examples).
"""
from __future__ import annotations

import collections
import os
from collections.abc import Sequence
from typing import Any

from absl import logging

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
_SHOWN = 10  # paths named in one message


def _listed(paths: Sequence[str]) -> str:
  shown = ", ".join(repr(p) for p in paths[:_SHOWN])
  return f"[{shown}{f', ... ({len(paths) - _SHOWN} more)' if len(paths) > _SHOWN else ''}]"


def class_folders(root: str) -> list[str]:
  """The class folder names of root (sub-directories not starting with "."), sorted."""
  if not os.path.isdir(root):
    raise ValueError(f"ImageFolder.root: {root!r} is not a directory (expected root/<class>/<image files>)")
  return sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))


def _image_files(directory: str, extensions: tuple[str, ...]) -> list[tuple[str, int]]:
  """(path, size in bytes) of the image files under directory: each folder's files by name, then its sub-folders
  by name (os.walk's top-down order), symbolic links followed."""
  out, subdirs = [], []
  with os.scandir(directory) as entries:
    entries = sorted(entries, key=lambda e: e.name)
  for entry in entries:
    if entry.is_dir():
      subdirs.append(entry.path)
    elif entry.name.lower().endswith(extensions) and not entry.name.startswith("."):
      out.append((entry.path, entry.stat().st_size))
  for subdir in subdirs:
    out.extend(_image_files(subdir, extensions))
  return out


class ImageFolder:
  """Random access to root/<class>/<file>; the file list is sorted, so index i is the same everywhere.

  Args:
    root: the split's folder, root/<class>/<image files>.
    classes: the dataset's class list (label i is classes[i]); None: root's own class folders. A class
      folder of root that the list lacks is an error; a listed class root has no folder for is logged.
    extensions: the image file name endings read.
    skip_bad_images: empty files are kept (and replaced when loaded, see tokax.data.pipeline) instead of
      being an error here.
  """

  def __init__(self, root: str, *, classes: Sequence[str] | None = None,
               extensions: tuple[str, ...] = IMAGE_EXTENSIONS, skip_bad_images: bool = False):
    found = class_folders(root)
    self.root, self.skip_bad_images = root, bool(skip_bad_images)
    if classes is None:
      classes = found
    else:
      classes = [str(c) for c in classes]
      repeated = sorted(c for c, n in collections.Counter(classes).items() if n > 1)
      if repeated:
        raise ValueError(f"ImageFolder.classes: {repeated} appear more than once in the class list")
      listed = set(classes)
      extra = [os.path.join(root, c) for c in found if c not in listed]
      if extra:
        raise ValueError(f"ImageFolder: class folders {_listed(extra)} are not in the dataset's class list (the "
                         f"train split's {len(classes)} class folders, or config.data.classes): their images would "
                         "get no label or a wrong one; remove them, or add the classes to the train split and train "
                         "again")
    self.classes = list(classes)
    present = set(found)
    self.missing_classes = [c for c in self.classes if c not in present]
    if self.missing_classes:
      logging.warning("ImageFolder %s has no folder for %d of the dataset's %d classes: %s (their labels stay "
                      "unused here)", root, len(self.missing_classes), len(self.classes), self.missing_classes[:_SHOWN])
    files, labels, empty_folders, empty_files = [], [], [], []
    for label, name in enumerate(self.classes):
      if name not in present:
        continue
      found_files = _image_files(os.path.join(root, name), extensions)
      if not found_files:
        empty_folders.append(os.path.join(root, name))
      for path, size in found_files:
        files.append(path)
        labels.append(label)
        if size == 0:
          empty_files.append(path)
    if not files and not empty_folders:
      raise ValueError(f"ImageFolder.root: no images with extensions {extensions} under {root!r}/<class>/")
    if empty_folders:
      raise ValueError(f"ImageFolder: class folders without images ({', '.join(extensions)}): "
                       f"{_listed(empty_folders)}; an empty class still takes a label (classes are the train "
                       "split's folders, sorted) and shifts every class after it: remove the folders or add images")
    if empty_files:
      if not skip_bad_images:
        raise ValueError(f"ImageFolder: {len(empty_files)} empty image files (0 bytes) under {root!r}: "
                         f"{_listed(empty_files)}; remove or replace them (tokax.data.folder.check(root) lists every "
                         "file that does not decode), or set data.skip_bad_images=True to replace them while "
                         "loading (counted as bad_examples)")
      logging.warning("ImageFolder %s: %d empty image files, replaced while loading (skip_bad_images): %s",
                      root, len(empty_files), empty_files[:_SHOWN])
    self.files, self.labels, self.empty_files = files, labels, empty_files
    self.num_classes = len(self.classes)

  def __len__(self) -> int:
    return len(self.files)

  def __getitem__(self, index: int) -> dict[str, Any]:
    path = self.files[int(index)]
    with open(path, "rb") as f:
      return {"image": f.read(), "label": self.labels[int(index)], "path": path}


def check(root: str, *, extensions: tuple[str, ...] = IMAGE_EXTENSIONS, num_threads: int = 8
          ) -> list[tuple[str, str]]:
  """(path, reason) of every image file under root (all splits and classes, any depth) that is empty or does not
  decode, in path order; [] when every file decodes. One pass, each file read and fully decoded once."""
  from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

  from tokax.data.transforms import BadImageError, decode_image  # noqa: PLC0415

  if not os.path.isdir(root):
    raise ValueError(f"check: {root!r} is not a directory")

  def problem(path: str) -> str | None:
    try:
      with open(path, "rb") as f:
        data = f.read()
    except OSError as e:
      return f"cannot be read ({e})"
    try:
      decode_image(data, path)
    except BadImageError as e:
      return e.reason
    return None

  paths = [path for path, _ in _image_files(root, extensions)]
  with ThreadPoolExecutor(max(1, num_threads)) as pool:
    problems = list(pool.map(problem, paths))
  return [(path, reason) for path, reason in zip(paths, problems) if reason is not None]


def main(argv: Sequence[str] | None = None) -> int:
  """`python -m tokax.data.folder ROOT [ROOT ...]`: prints each bad file and its reason; exit status 1 if any."""
  import argparse  # noqa: PLC0415
  import sys  # noqa: PLC0415

  parser = argparse.ArgumentParser(prog="python -m tokax.data.folder",
                                   description="List the image files under ROOT that are empty or do not decode.")
  parser.add_argument("roots", nargs="+", metavar="ROOT")
  parser.add_argument("--num_threads", type=int, default=8)
  args = parser.parse_args(argv)
  bad = [item for root in args.roots for item in check(root, num_threads=args.num_threads)]
  for path, reason in bad:
    print(f"{path}\t{reason}")
  print(f"{len(bad)} bad image files", file=sys.stderr)
  return 1 if bad else 0


if __name__ == "__main__":
  raise SystemExit(main())
