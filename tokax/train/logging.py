"""Metrics as JSON lines, written by process 0 only; and a quieter absl log and stderr for the command lines."""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import traceback
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


def _is_closed_loop_callback(value: BaseException | None, tb: Any) -> bool:
  """Whether an exception is asyncio's "Event loop is closed" raised in loop.call_soon_threadsafe."""
  if not (isinstance(value, RuntimeError) and str(value) == "Event loop is closed"):
    return False
  return any(frame.name == "call_soon_threadsafe" for frame in traceback.extract_tb(tb))


def _is_orbax_task_never_retrieved(record: logging.LogRecord) -> bool:
  message = record.getMessage()
  return message.startswith("Task exception was never retrieved") and "/orbax/" in message


def quiet_failed_restore_noise() -> None:
  """Drops the secondary errors that bury a failed checkpoint restore's own error (once per process).

  When orbax fails to read a checkpoint, its event loop closes while tensorstore still completes the
  other reads: each of their callbacks fails in loop.call_soon_threadsafe ("Event loop is closed"),
  which tensorstore prints from its own threads through sys.excepthook or sys.unraisablehook, and
  each of orbax's other read tasks is logged by asyncio as "Task exception was never retrieved" when
  it is collected: dozens of interleaved tracebacks. This wraps both hooks to drop exactly those
  exceptions and filters exactly those asyncio records; everything else is printed as before.
  For command-line entry points, like quiet_orbax_info.
  """
  if getattr(sys.excepthook, "_tokax_quiet", False):
    return
  excepthook, unraisablehook = sys.excepthook, sys.unraisablehook

  def quiet_excepthook(kind, value, tb):
    if not _is_closed_loop_callback(value, tb):
      excepthook(kind, value, tb)

  def quiet_unraisablehook(unraisable):
    if not _is_closed_loop_callback(unraisable.exc_value, unraisable.exc_traceback):
      unraisablehook(unraisable)

  quiet_excepthook._tokax_quiet = True
  sys.excepthook, sys.unraisablehook = quiet_excepthook, quiet_unraisablehook
  logging.getLogger("asyncio").addFilter(lambda record: not _is_orbax_task_never_retrieved(record))
