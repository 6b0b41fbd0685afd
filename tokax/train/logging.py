"""Metrics as JSON lines, written by process 0 only; and a quieter absl log for the command lines."""
from __future__ import annotations

import json
import logging
import math
import os
from typing import Any

import jax
import numpy as np
from absl import logging as absl_logging


def _to_python(value: Any) -> Any:
  if isinstance(value, (np.ndarray, np.generic, jax.Array)):
    value = np.asarray(value).item() if np.ndim(value) == 0 else np.asarray(value).tolist()
  if isinstance(value, float) and not math.isfinite(value):
    return repr(value)  # JSON has no nan/inf
  return value


class MetricWriter:
  """Appends {"step": s, **metrics} lines to a file (metrics.jsonl); a no-op off process 0."""

  def __init__(self, path: str):
    self._file = None
    if jax.process_index() == 0:
      os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
      self._file = open(path, "a", encoding="utf-8")

  def write(self, step: int, metrics: dict[str, Any]) -> None:
    if self._file is None:
      return
    record = {"step": int(step), **{k: _to_python(v) for k, v in metrics.items()}}
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None

  def __enter__(self) -> "MetricWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def read_metrics(path: str) -> list[dict[str, Any]]:
  """All records of a metrics.jsonl file, in order."""
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def quiet_orbax_info() -> None:
  """Hides orbax's INFO lines (dozens per checkpoint) from the absl log; its warnings and errors still show.

  For command-line entry points; library code leaves logging configuration to its caller.
  """
  absl_logging.get_absl_handler().addFilter(
      lambda record: record.levelno >= logging.WARNING or "/orbax/" not in record.pathname)
