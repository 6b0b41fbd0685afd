"""Input data: embedded offline datasets (offline.py)."""

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

__all__ = [
    "BACKGROUNDS",
    "DATASETS",
    "PHOTO_SPLITS",
    "SPLITS",
    "TEXT_IMAGES",
    "TEXTURES",
    "ArrayDataset",
    "bundled_image",
    "iterate_batches",
    "load",
    "resize_bilinear",
    "split_source_indices",
]
