"""Input data: embedded offline datasets (offline.py)."""

from tokax.data.offline import (
    BACKGROUNDS,
    DATASETS,
    SPLITS,
    ArrayDataset,
    iterate_batches,
    load,
    resize_bilinear,
    split_source_indices,
)

__all__ = [
    "BACKGROUNDS",
    "DATASETS",
    "SPLITS",
    "ArrayDataset",
    "iterate_batches",
    "load",
    "resize_bilinear",
    "split_source_indices",
]
