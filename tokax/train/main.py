"""Command-line entry point of the one training run (tokax.train.run.train; config.task picks the task).

  python -m tokax.train --config configs/cluttered_digits_vit.py --workdir /tmp/cd_vit
  python -m tokax.train --config tokax:digits_vit.py:runlocal --workdir /tmp/dv  # a config shipped in the package
  python -m tokax.train --config configs/cluttered_digits_vit.py:runlocal --workdir /tmp/x \\
      --config.batch_size=16 --config.total_steps=10
  python -m tokax.train --config configs/digits_vit.py --workdir /tmp/dv \\
      --config.mesh.data=4 --config.mesh.model=2 --config.sharding.preset=tensor

Multi-host: start the same command on every host with `--config.distributed=True`; on TPU pods
and SLURM/Open MPI clusters jax.distributed.initialize() finds its peers, elsewhere pass
--coordinator_address=host:port --num_processes=N --process_id=i.

The config file's get_config(arg) receives the text after the colon; `--config.a.b=value`
overrides a field (a mistyped field is an error). Running again in the same workdir resumes
from its latest checkpoint. A SIGTERM saves a checkpoint and exits with status 143 (128 + 15).

Resuming refuses a config that trains differently from the one that wrote the checkpoint (the
differing fields are listed) unless --allow_config_change; a damaged checkpoint is refused unless
--resume_from_previous_good, which resumes from the newest one that verifies; a second trainer on
the same workdir is refused (docs/robustness.md).
"""
from __future__ import annotations

import json
import sys

import jax
from absl import app, flags
from ml_collections import config_flags
from ml_collections.config_flags import config_flags as config_flags_impl  # ConfigFileFlagParser lives here

from tokax.train import config_utils
from tokax.train import logging as metric_logging
from tokax.train import run as training


class _ConfigFileOrPackagedParser(config_flags_impl.ConfigFileFlagParser):
  """ml_collections' config-file parser that also takes a config shipped with tokax: "tokax:<name>.py[:arg]"."""

  def parse(self, path):
    return super().parse(config_utils.resolve_config_spec(path))


_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, with an optional ':arg': a path (configs/x.py:arg) or a config that ships with "
    "tokax (tokax:x.py:arg).", lock_config=True)
# The flag keeps ml_collections' --config.a.b overrides; only the spec -> file step learns the tokax: names.
flags.FLAGS[_CONFIG.name].parser = _ConfigFileOrPackagedParser(_CONFIG.name, lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for config.json, metrics.jsonl and checkpoints.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0, with --config.distributed (default: auto-detect).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes, with --config.distributed.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, with --config.distributed.")
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False,
    "Resume even though the config differs from the one that wrote the checkpoint (the old one stays in "
    "WORKDIR/configs/).")
_RESUME_FROM_PREVIOUS_GOOD = flags.DEFINE_bool(
    "resume_from_previous_good", False,
    "Skip damaged checkpoints (moved to WORKDIR/checkpoints.damaged/) and resume from the newest one that verifies.")
_TENSORBOARD = flags.DEFINE_bool(
    "tensorboard", None,
    "Write TensorBoard summaries into WORKDIR/tensorboard/ beside metrics.jsonl (pip install 'tokax[tensorboard]'); "
    "default: config.tensorboard where the config has it, else off.")
flags.mark_flags_as_required(["config", "workdir"])

PREEMPTED_EXIT_CODE = 143


def initialize_distributed(config) -> None:
  """jax.distributed.initialize() when config.distributed is set; must run before any device is used."""
  explicit = {"coordinator_address": _COORDINATOR.value, "num_processes": _NUM_PROCESSES.value,
              "process_id": _PROCESS_ID.value}
  if not config.get("distributed", False):
    given = [f"--{name}" for name, value in explicit.items() if value is not None]
    if given:
      raise app.UsageError(f"{', '.join(given)} need --config.distributed=True")
    return
  jax.distributed.initialize(**{name: value for name, value in explicit.items() if value is not None})


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  metric_logging.quiet_orbax_info()
  metric_logging.quiet_failed_restore_noise()
  initialize_distributed(_CONFIG.value)
  result = training.train(_CONFIG.value, _WORKDIR.value, allow_config_change=_ALLOW_CONFIG_CHANGE.value,
                          resume_from_previous_good=_RESUME_FROM_PREVIOUS_GOOD.value, tensorboard=_TENSORBOARD.value)
  if jax.process_index() == 0:
    print(json.dumps({"step": result.step, "preempted": result.preempted, **result.metrics}))
  if result.preempted:
    sys.exit(PREEMPTED_EXIT_CODE)


def run() -> None:
  app.run(main)


if __name__ == "__main__":
  run()
