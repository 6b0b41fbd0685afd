"""An image-folder dataset: root/<class>/<image>, classes sorted by name (torchvision's ImageFolder).

  source = ImageFolder("/data/imagenet/train")
  source.classes; len(source); source[i] -> {"image": bytes (encoded), "label": int}

Files are read when indexed and decoded by the `decode` preprocessing op, so the worker threads
of the loader do the I/O and decoding in parallel.
"""
from __future__ import annotations

import os
from typing import Any

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


class ImageFolder:
  """Random access to root/<class>/<file>; the file list is sorted, so index i is the same everywhere."""

  def __init__(self, root: str, *, extensions: tuple[str, ...] = IMAGE_EXTENSIONS):
    if not os.path.isdir(root):
      raise ValueError(f"ImageFolder.root: {root!r} is not a directory (expected root/<class>/<image files>)")
    self.root = root
    self.classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    files, labels = [], []
    for label, name in enumerate(self.classes):
      for dirpath, dirnames, filenames in os.walk(os.path.join(root, name), followlinks=True):
        dirnames.sort()
        for f in sorted(filenames):
          if f.lower().endswith(extensions) and not f.startswith("."):
            files.append(os.path.join(dirpath, f))
            labels.append(label)
    if not files:
      raise ValueError(f"ImageFolder.root: no images with extensions {extensions} under {root!r}/<class>/")
    self.files, self.labels = files, labels
    self.num_classes = len(self.classes)

  def __len__(self) -> int:
    return len(self.files)

  def __getitem__(self, index: int) -> dict[str, Any]:
    with open(self.files[int(index)], "rb") as f:
      return {"image": f.read(), "label": self.labels[int(index)]}
