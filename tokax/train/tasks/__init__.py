"""The tasks of the one training run (tokax.train.run): what differs per task, nothing else.

  classifier.py  ViT / T2T-ViT classifiers with their reductions and objectives (the default)
  tokenizer.py   visual tokenizers (Tokenizer with a quantizer, KL autoencoder), PatchGAN, EMA
  xar.py         next-X generators (flow matching with Noisy Context Learning), EMA

base.py defines the Task interface (build -> Plan, target, variables) and Run.
"""
from __future__ import annotations

from tokax.train.tasks import base, classifier, tokenizer, xar

TASKS: dict[str, base.Task] = {task.name: task for task in (classifier.TASK, tokenizer.TASK, xar.TASK)}


def get(name: str) -> base.Task:
  """The task of config.task."""
  if name not in TASKS:
    raise ValueError(f"config.task must be one of {sorted(TASKS)}; got {name!r}")
  return TASKS[name]
