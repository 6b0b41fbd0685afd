"""Metrics as JSON lines and TensorBoard summaries, written by process 0 only; and a quieter absl log and stderr
for the command lines.

TensorBoard event files are written through tensorboardX (the [tensorboard] extra: protobuf and numpy, no
TensorFlow), into WORKDIR/tensorboard/ beside metrics.jsonl, with the same names and steps.
"""
from __future__ import annotations

import dataclasses
import importlib.util
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


TENSORBOARD_DIR = "tensorboard"  # beside metrics.jsonl in the workdir
INSTALL_TENSORBOARD = "pip install 'tokax[tensorboard]'"
_FLUSH_SECS = 30  # how stale TensorBoard may be while a run writes; close() writes everything


@dataclasses.dataclass(frozen=True)
class Image:
  """A metric value that is a picture, for TensorBoard only (metrics.jsonl keeps the numbers).

  Attributes:
    pixels: (H, W, 3) float in [0, 1].
  """
  pixels: np.ndarray


def drop_images(metrics: dict[str, Any]) -> dict[str, Any]:
  """`metrics` without its Image values."""
  return {key: value for key, value in metrics.items() if not isinstance(value, Image)}


def import_tensorboardx() -> Any:
  """The tensorboardX module; an ImportError that names the extra to install when it is missing."""
  try:
    import tensorboardX
  except ImportError as e:
    raise ImportError(f"TensorBoard summaries (config.tensorboard) are written through tensorboardX, which could "
                      f"not be imported ({e}): {INSTALL_TENSORBOARD}, or set config.tensorboard=False") from e
  return tensorboardX


def use_tensorboard(flag: bool | None) -> bool:
  """Whether a run writes TensorBoard summaries, for config.tensorboard (or `--tensorboard`) = `flag`.

  True: always; an ImportError naming `pip install 'tokax[tensorboard]'` when tensorboardX is missing.
  None (unset) or False: never. Opt-in, as big_vision's metrics file is the record and tensorboardX
  imports torch where torch is installed (~2 s at the first summary).
  """
  if flag:
    import_tensorboardx()
  return bool(flag)


def _to_python(value: Any) -> Any:
  if isinstance(value, (np.ndarray, np.generic, jax.Array)):
    value = np.asarray(value).item() if np.ndim(value) == 0 else np.asarray(value).tolist()
  if isinstance(value, float) and not math.isfinite(value):
    return repr(value)  # JSON has no nan/inf
  return value


def _scalar(value: Any) -> float | None:
  """`value` as a float when it is one real number (Python, NumPy or a 0-d array), else None."""
  if isinstance(value, (np.ndarray, np.generic, jax.Array)):
    value = np.asarray(value)
    real = np.issubdtype(value.dtype, np.integer) or np.issubdtype(value.dtype, np.floating) or value.dtype == bool
    return float(value) if value.ndim == 0 and real else None
  return float(value) if isinstance(value, (int, float)) else None


class TensorBoardWriter:
  """Scalars and Image values as TensorBoard event files in `logdir`, through tensorboardX.

  Each writer (each session of a run) starts a new event file; TensorBoard reads them in order.

  Args:
    logdir: the directory of the event files (WORKDIR/tensorboard).
    purge_step: the first step of a resumed session: TensorBoard hides what earlier sessions wrote at
      this step and after (the steps trained after the checkpoint it resumed from), so each step of a
      resumed run's curves is the one this session writes. None for a fresh run.
  """

  def __init__(self, logdir: str, *, purge_step: int | None = None):
    tensorboardx = import_tensorboardx()
    os.makedirs(logdir, exist_ok=True)
    # tensorboardX names a file by the second it was opened and truncates a file of that name: number the
    # sessions so that two within one second do not share a file (and still sort in order).
    session = sum("tfevents" in name for name in os.listdir(logdir))
    self._writer = tensorboardx.SummaryWriter(logdir, purge_step=purge_step, flush_secs=_FLUSH_SECS,
                                              filename_suffix=f".{session}")

  def write(self, step: int, metrics: dict[str, Any]) -> None:
    """Writes each real number of `metrics` as a scalar and each Image as an image, at `step`."""
    for name, value in metrics.items():
      if isinstance(value, Image):
        pixels = np.clip(np.asarray(value.pixels, np.float32), 0.0, 1.0)
        self._writer.add_image(name, pixels, int(step), dataformats="HWC")
      elif (number := _scalar(value)) is not None:
        self._writer.add_scalar(name, number, int(step))

  def close(self) -> None:
    self._writer.close()


class MetricWriter:
  """Appends {"step": s, **metrics} lines to a file (metrics.jsonl); a no-op off process 0.

  With `tensorboard_dir`, every number also goes to TensorBoard there (TensorBoardWriter, with
  `purge_step`), and Image values go there only.
  """

  def __init__(self, path: str, *, tensorboard_dir: str | None = None, purge_step: int | None = None):
    self._file = self._tensorboard = None
    if jax.process_index() != 0:
      return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    self._file = open(path, "a", encoding="utf-8")
    if tensorboard_dir is not None:
      try:
        self._tensorboard = TensorBoardWriter(tensorboard_dir, purge_step=purge_step)
      except BaseException:
        self.close()
        raise

  def write(self, step: int, metrics: dict[str, Any]) -> None:
    if self._file is None:
      return
    record = {"step": int(step), **{k: _to_python(v) for k, v in drop_images(metrics).items()}}
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()
    if self._tensorboard is not None:
      self._tensorboard.write(step, metrics)

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None
    if self._tensorboard is not None:
      self._tensorboard.close()
      self._tensorboard = None

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
