"""Command-line entry point of the trainer.

  python -m tokax.train --config configs/cluttered_digits_vit.py --workdir /tmp/cd_vit
  python -m tokax.train --config configs/cluttered_digits_vit.py:runlocal --workdir /tmp/x \\
      --config.batch_size=16 --config.total_steps=10

The config file's get_config(arg) receives the text after the colon; `--config.a.b=value`
overrides a field (a mistyped field is an error). Running again in the same workdir resumes
from its latest checkpoint.
"""
from __future__ import annotations

import json

from absl import app, flags
from ml_collections import config_flags

from tokax.train import logging as metric_logging
from tokax.train import trainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, with an optional ':arg'.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for config.json, metrics.jsonl and checkpoints.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  metric_logging.quiet_orbax_info()
  result = trainer.train(_CONFIG.value, _WORKDIR.value)
  print(json.dumps({"step": result.step, **result.metrics}))


def run() -> None:
  app.run(main)


if __name__ == "__main__":
  run()
