"""Restore any tokax.train run from its workdir: `run = load_run("/tmp/cd_vit")`.

The run is rebuilt from the workdir's own config.json (the resolved config it trained with,
command-line overrides and derived values such as num_classes included), never by re-running a
config file, and its latest checkpoint is restored onto this process's first device.

  run = load_run(workdir)
  logits = run.model.apply(run.variables, images)   # classifier: images normalised to [-1, 1]
"""
from __future__ import annotations

from tokax.train import tasks
from tokax.train.tasks.base import Run, RunError, load, read_config

__all__ = ["Run", "RunError", "load_run"]


def load_run(workdir: str, *, ema: bool = True) -> Run:
  """The run in `workdir` (classifier, tokenizer or xAR) at its latest checkpoint.

  Args:
    workdir: a --workdir of `python -m tokax.train` (config.json and checkpoints/).
    ema: for runs that keep an EMA of the weights (tokenizer, xAR, a classifier with config.ema_decay > 0),
      Run.variables holds the EMA weights; False gives the raw ones.

  Raises:
    RunError (a ValueError) naming the workdir and what is missing: no directory or config.json,
    or no checkpoint yet.
  """
  config = read_config(workdir)
  return load(tasks.get(config.get("task", "classifier")), config, workdir, ema=ema)
