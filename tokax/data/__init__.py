"""Input data: embedded offline datasets (offline.py), the input pipeline (pipeline.py: datasets by
name, string-named preprocessing from transforms.py, restorable host-local batches), tfds.py and
folder.py sources. tensorflow-datasets and grain are imported only when used."""

from tokax.data.offline import (
    BACKGROUNDS,
    DATASETS,
    PHOTO_SPLITS,
    SPLITS,
    TEXT_IMAGES,
    TEXTURES,
    ArrayDataset,
    bundled_image,
    iterate_batches,
    load,
    resize_bilinear,
    split_source_indices,
)
from tokax.data.pipeline import DataIterator, get_source, make_iterator

__all__ = [
    "BACKGROUNDS",
    "DATASETS",
    "PHOTO_SPLITS",
    "SPLITS",
    "TEXT_IMAGES",
    "TEXTURES",
    "ArrayDataset",
    "DataIterator",
    "get_source",
    "make_iterator",
    "bundled_image",
    "iterate_batches",
    "load",
    "resize_bilinear",
    "split_source_indices",
]
