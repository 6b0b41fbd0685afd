"""Faults the trainer refuses before it builds anything: sizes and periods no run can use, a workdir another
trainer holds. Each through the command line's entry point run in this process (absl's app.run)."""
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys

import pytest
from cli_testing import run_train_cli

from tokax.train import workdir as workdir_files

REPO = pathlib.Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "configs" / "digits_vit.py")


def _cli(workdir, *extra):
  """`python -m tokax.train --config configs/digits_vit.py:runlocal --workdir WORKDIR ...` in this process."""
  run_train_cli(f"--config={CONFIG}:runlocal", f"--workdir={workdir}", "--config.progress_bar=False", *extra)


@pytest.mark.parametrize("override, message", [
    ("eval_batch_size=0", "config.eval_batch_size=0: expected an integer >= 1 (examples per evaluation batch); "
                          "set --config.eval_batch_size to such a value"),
    ("batch_size=-16", "config.batch_size=-16: expected an integer >= 1 (examples per train step)"),
    ("log_every_steps=0", "config.log_every_steps=0: expected an integer >= 1 (the period of the train/* metrics"),
    ("checkpoint_every_steps=-2", "config.checkpoint_every_steps=-2: expected an integer >= 0"),
    ("total_steps=0", "config.total_steps=0: expected an integer >= 1 (the steps the run trains)"),
    ("warmup_steps=5", "config.warmup_steps=5 is longer than config.total_steps=3; set --config.warmup_steps to at "
                       "most 3"),
    ("total_epochs=2.0", "config: set only one of total_steps=3 and total_epochs=2.0; set the other to None"),
    ("keep_checkpoints=0", "config.keep_checkpoints=0: expected an integer >= 1 (1 keeps only the latest checkpoint) "
                           "or None (keep all); 0 would delete every checkpoint, the final one too"),
])
def test_sizes_and_periods_are_refused_at_start_naming_the_field(tmp_path, override, message):
  workdir = tmp_path / "run"
  with pytest.raises(ValueError) as refused:
    _cli(workdir, f"--config.{override}")
  assert message in str(refused.value)
  assert not workdir.exists()  # refused before anything is written


def test_keeping_one_checkpoint_never_deletes_the_last(tmp_path):
  from tokax.train import checkpoint

  with pytest.raises(ValueError, match="keep_checkpoints=0: keep at least 1 checkpoint"):
    checkpoint.make_manager(str(tmp_path / "checkpoints"), max_to_keep=0)


def test_a_second_trainer_is_refused_and_a_dead_ones_lock_does_not_block(tmp_path):
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time\nfrom tokax.train.workdir import WorkdirLock\n"
                             f"with WorkdirLock({str(tmp_path)!r}):\n  print('locked', flush=True)\n  time.sleep(600)"],
      cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO)), stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(workdir_files.WorkdirLockedError) as refused:
      _cli(tmp_path)
    assert f"workdir {tmp_path} is in use by another trainer (pid {holder.pid} on host {socket.gethostname()}, " \
           f"since " in str(refused.value)
    assert sorted(os.listdir(tmp_path)) == ["lock"]  # the second trainer wrote nothing
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=60)
  assert f'"pid": {holder.pid}' in (tmp_path / "lock").read_text()  # the dead trainer's record is still there
  with workdir_files.WorkdirLock(str(tmp_path)):  # but its lock went with it
    assert f'"pid": {os.getpid()}' in (tmp_path / "lock").read_text()


def test_a_resume_may_switch_the_attention_kernel_but_not_the_model(tmp_path):
  """model.attention / model.interpret are runtime fields (the same attention, another kernel); older runs lack them."""
  old = {"lr": 0.001, "model": {"name": "vit", "width": 64}}
  (tmp_path / "config.json").write_text(json.dumps(old))
  switched = {"lr": 0.001, "model": {"name": "vit", "width": 64, "attention": "pallas", "interpret": True}}
  workdir_files.check_resume_config(str(tmp_path), switched, 4, allow_change=False)  # no error
  wider = {**switched, "model": {**switched["model"], "width": 96}}
  with pytest.raises(workdir_files.ConfigChangedError, match=r"model\.width: 64 -> 96"):
    workdir_files.check_resume_config(str(tmp_path), wider, 4, allow_change=False)
