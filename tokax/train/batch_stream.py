"""An endless, shuffled, restorable stream of this process's rows of each global batch.

Epoch e visits the examples in the order np.random.default_rng((salt, seed, e)).permutation(N)
(the order of tokax.data.offline.iterate_batches), dropping the last partial batch. Every process
computes the same global batch and keeps its rows, so the global batch does not depend on the
number of processes. The position (epoch, batch within the epoch) is saved with each checkpoint.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from tokax.data import offline


class BatchStream:
  """Iterator of {"image": (b, H, W, 3), "label": (b,)}: rows `rows` of each global batch of `batch_size`.

  Args:
    dataset: the training split.
    batch_size: global batch size B.
    seed: seed of the per-epoch permutations.
    rows: the rows of each global batch this process loads (default: all of them).
  """

  def __init__(self, dataset: offline.ArrayDataset, batch_size: int, *, seed: int, rows: slice | None = None):
    if not 0 < batch_size <= len(dataset):
      raise ValueError(f"batch_size: expected 1..{len(dataset)} (the train set size); got {batch_size}")
    self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
    self.rows = slice(0, batch_size) if rows is None else rows
    self.batches_per_epoch = len(dataset) // batch_size
    self.epoch, self.batch = 0, 0
    self._order = None

  def __iter__(self) -> "BatchStream":
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self._order is None:
      self._order = offline.epoch_permutation(len(self.dataset), self.seed, self.epoch)
    start = self.batch * self.batch_size
    index = self._order[start:start + self.batch_size][self.rows]
    self.batch += 1
    if self.batch == self.batches_per_epoch:
      self.epoch, self.batch, self._order = self.epoch + 1, 0, None
    return {"image": self.dataset.images[index], "label": self.dataset.labels[index]}

  def position(self) -> dict[str, Any]:
    """What restore() needs to continue from here, as JSON-able data (with what it must match)."""
    return {"epoch": self.epoch, "batch": self.batch, "seed": self.seed, "batch_size": self.batch_size,
            "num_examples": len(self.dataset), "dataset": self.dataset.name}

  def restore(self, position: dict[str, Any]) -> None:
    """Continues from a position() of a stream over the same data; a different stream is an error."""
    for key in ("seed", "batch_size", "num_examples", "dataset"):
      if position.get(key) != self.position()[key]:
        raise ValueError(f"data position: the checkpoint's stream has {key}={position.get(key)!r} but this run's has "
                         f"{self.position()[key]!r}; resume with the config that wrote the checkpoint")
    if not (0 <= position["batch"] < self.batches_per_epoch and position["epoch"] >= 0):
      raise ValueError(f"data position: batch {position['batch']} of epoch {position['epoch']} is out of range")
    self.epoch, self.batch, self._order = int(position["epoch"]), int(position["batch"]), None

  def skip_to_step(self, step: int) -> None:
    """Positions the stream after `step` batches from the start."""
    epoch, batch = divmod(step, self.batches_per_epoch)
    self.restore({**self.position(), "epoch": epoch, "batch": batch})


class PipelineStream:
  """BatchStream's interface over a tokax.data.pipeline.DataIterator (tfds / image folder / preprocessed data).

  The iterator already yields this process's contiguous slice of each global batch; position()
  is its get_state() ({"epoch", "position"}) plus what a restore must match, so a checkpoint's
  data item resumes the stream exactly (batch k is a pure function of (seed, k)).

  Args:
    iterator: the train DataIterator (shuffled, drop_remainder, endless).
    dataset: the data.name it reads, recorded in the position.
  """

  def __init__(self, iterator: Any, dataset: str):
    self.iterator, self.dataset = iterator, dataset
    self.batch_size, self.seed = iterator.batch_size, iterator.seed
    self.batches_per_epoch = iterator.steps_per_epoch

  def __iter__(self) -> "PipelineStream":
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    return next(self.iterator)

  def position(self) -> dict[str, Any]:
    """get_state() and the stream's identity, as JSON-able data."""
    return {**self.iterator.get_state(), "seed": self.seed, "batch_size": self.batch_size,
            "num_examples": len(self.iterator.source), "dataset": self.dataset}

  def restore(self, position: dict[str, Any]) -> None:
    """Continues from a position() of a stream over the same data; a different stream is an error."""
    for key in ("seed", "batch_size", "num_examples", "dataset"):
      if position.get(key) != self.position()[key]:
        raise ValueError(f"data position: the checkpoint's stream has {key}={position.get(key)!r} but this run's has "
                         f"{self.position()[key]!r}; resume with the config that wrote the checkpoint")
    if "position" not in position:
      raise ValueError(f"data position: {position!r} was written by the offline batch stream, not the input "
                       "pipeline; resume with the config that wrote the checkpoint")
    self.iterator.set_state({"epoch": position["epoch"], "position": position["position"]})
