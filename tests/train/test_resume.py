"""Pre-emption and resume: SIGKILL mid-save, SIGKILL after a save, SIGTERM; damaged checkpoints (checksums,
resume_from_previous_good); a resume with a changed config; multi-host.

One 6-step run of configs/digits_vit.py:runlocal (1 device, 64 examples in batches of 16, so 1.5
epochs, checkpoints every 2 steps) is the reference; the interrupted command lines must end on
bitwise the same parameters. The fault cases run the command line's entry point in this process
(absl's app.run, as `python -m tokax.train` does) on copies of the reference's workdir.
"""
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from cli_testing import run_train_cli

from tokax.train import checkpoint
from tokax.train import run as training
from tokax.train import logging as metric_logging
from tokax.train import workdir as workdir_files

REPO = pathlib.Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "configs" / "digits_vit.py")
HARNESS = str(REPO / "tests" / "train" / "helpers" / "kill_harness.py")
OVERRIDES = ("--config.total_steps=6", "--config.checkpoint_every_steps=2", "--config.keep_checkpoints=3",
             "--config.progress_bar=False")


def _config():
  import importlib.util

  spec = importlib.util.spec_from_file_location("digits_vit", CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("runlocal")
  config.total_steps, config.checkpoint_every_steps, config.keep_checkpoints = 6, 2, 3
  config.progress_bar = False
  return config


def _command(workdir, *extra, harness=()):
  entry = [HARNESS, *harness] if harness else ["-m", "tokax.train"]
  return [sys.executable, *entry, f"--config={CONFIG}:runlocal", f"--workdir={workdir}", *OVERRIDES, *extra]


def _run(workdir, *extra, harness=(), env_extra=None):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO), **(env_extra or {}))
  return subprocess.run(_command(workdir, *extra, harness=harness), cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=600)


def _train_steps(workdir):
  return [r["step"] for r in metric_logging.read_metrics(workdir / "metrics.jsonl") if "train/loss" in r]


def _raw_state(workdir, step):
  """(state tree, data position) of checkpoint `step`, read with the layout it was saved with."""
  manager = ocp.CheckpointManager(str(workdir / "checkpoints"), item_names=checkpoint.ITEMS)
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                                           data=ocp.args.JsonRestore()))
  manager.close()
  return jax.device_get(restored["state"]), dict(restored["data"])


def _restore_onto_one_device(workdir, step, like):
  """checkpoint.restore of `step` into the structure of `like`, on this process's one device."""
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = checkpoint.abstract_state(like, jax.tree.map(lambda _: device, like))
  manager = checkpoint.make_manager(str(workdir / "checkpoints"), max_to_keep=10)
  state, position = checkpoint.restore(manager, step, target)
  manager.close()
  return jax.device_get(state), position


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  """The reference: 6 steps in one go, in this process; (workdir, result, final checkpoint state)."""
  workdir = tmp_path_factory.mktemp("straight")
  result = training.train(_config(), str(workdir))
  state, _ = _raw_state(workdir, 6)
  jax.tree.map(np.testing.assert_array_equal, state["params"], jax.device_get(result.params))
  return workdir, result, state


@pytest.mark.slow
def test_killed_and_preempted_runs_resume_to_the_same_parameters(straight, tmp_path):
  ref_dir, ref, ref_state = straight

  # 1. SIGKILL while checkpoint 4 is being committed (checkpoint 2 is complete).
  proc = _run(tmp_path, harness=("sigkill-mid-save", "4"))
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
  entries = sorted(os.listdir(tmp_path / "checkpoints"))
  assert "2" in entries and "4" not in entries and any(".orbax-checkpoint-tmp" in e for e in entries), entries
  assert checkpoint.check_directory(str(tmp_path / "checkpoints")) == [2]

  # 2. The same command again, and a SIGTERM after step 5: a checkpoint at 5, exit status 143.
  proc = _run(tmp_path, harness=("sigterm", "5"))
  assert proc.returncode == 143, proc.stderr[-3000:]
  assert "pre-empted" in proc.stderr
  assert checkpoint.check_directory(str(tmp_path / "checkpoints"))[-1] == 5
  assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"step": 5, "preempted": True}

  # 3. The same command once more (as after a SIGKILL once checkpoint 5 was saved): it finishes from 5.
  proc = _run(tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  steps = _train_steps(tmp_path)
  # run 1 trained on while checkpoint 4 was committed in the background; runs 2 and 3 started at 2 and 5
  assert steps[:4] == [1, 2, 3, 4] and steps[-4:] == [3, 4, 5, 6], steps
  state, position = _raw_state(tmp_path, 6)
  jax.tree.map(np.testing.assert_array_equal, state, ref_state)  # bitwise: params, optimizer state, step, rng
  assert position == {"epoch": 1, "position": 2, "seed": 0, "batch_size": 16, "num_examples": 64, "dataset": "digits"}
  final = metric_logging.read_metrics(tmp_path / "metrics.jsonl")[-1]
  assert final["test/accuracy"] == ref.metrics["test/accuracy"] and final["val/loss"] == ref.metrics["val/loss"]


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_agree_with_one(straight, tmp_path):
  """2 processes x 2 CPU devices, a (2, 2) data x model mesh with fsdp_tensor rules, through the real CLI."""
  ref_dir, ref, ref_state = straight
  port = _free_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO),
             XLA_FLAGS=os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2")
  procs = [subprocess.Popen(
      _command(tmp_path, "--config.distributed=True", f"--coordinator_address=localhost:{port}", "--num_processes=2",
               f"--process_id={i}", "--config.mesh.model=2", "--config.sharding.preset=fsdp_tensor"),
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  outputs = [proc.communicate(timeout=600) for proc in procs]
  for proc, (out, err) in zip(procs, outputs):
    assert proc.returncode == 0, err[-4000:]
  results = [[line for line in out.splitlines() if line.startswith("{")] for out, _ in outputs]
  assert len(results[0]) == 1 and not results[1]  # only process 0 prints its result (gloo prints the rest)
  records = metric_logging.read_metrics(tmp_path / "metrics.jsonl")
  assert _train_steps(tmp_path) == [1, 2, 3, 4, 5, 6]  # written once, by process 0
  ref_records = metric_logging.read_metrics(ref_dir / "metrics.jsonl")
  losses = lambda rs: [r["train/loss"] for r in rs if "train/loss" in r]
  np.testing.assert_allclose(losses(records), losses(ref_records), rtol=1e-5)
  state, position = _restore_onto_one_device(tmp_path, 6, ref_state)
  assert position["epoch"] == 1 and position["position"] == 2  # 6 steps of 16 over 64 examples
  for path, got, want in zip(*_flat(state["params"]), _flat(ref_state["params"])[1]):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-5, err_msg=path)
  np.testing.assert_allclose(records[-1]["test/accuracy"], ref.metrics["test/accuracy"], atol=1 / 32)


def _flat(tree):
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return [jax.tree_util.keystr(p) for p, _ in leaves], [np.asarray(x) for _, x in leaves]


def _copy_checkpoints(straight, tmp_path):
  workdir = tmp_path / "work"
  shutil.copytree(straight[0] / "checkpoints", workdir / "checkpoints")
  return workdir


def _copy_workdir(straight, tmp_path):
  """The reference's whole workdir (config.json, configs/, metrics, checkpoints 2, 4, 6)."""
  workdir = tmp_path / "work"
  shutil.copytree(straight[0], workdir)
  return workdir


def _cli(workdir, *extra, **options):
  """`python -m tokax.train` on `workdir` with the reference's flags, in this process (cli_testing)."""
  run_train_cli(f"--config={CONFIG}:runlocal", f"--workdir={workdir}", *OVERRIDES, *extra, **options)


def _flip_a_bit(step_dir):
  """Flips one bit in the middle of the largest file of the state item; returns its path relative to step_dir."""
  path = max((p for p in (step_dir / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  data = bytearray(path.read_bytes())
  data[len(data) // 2] ^= 0x10
  path.write_bytes(bytes(data))
  return str(path.relative_to(step_dir))


def test_foreign_directory_is_refused(straight, tmp_path):
  workdir = _copy_checkpoints(straight, tmp_path)
  (workdir / "checkpoints" / "notes.txt").write_text("not a checkpoint")
  with pytest.raises(checkpoint.CheckpointError, match="not a tokax checkpoint directory: it holds 'notes.txt'"):
    training.train(_config(), str(workdir))
  assert not (workdir / "metrics.jsonl").exists()


def test_truncated_checkpoint_is_refused(straight, tmp_path):
  workdir = _copy_checkpoints(straight, tmp_path)
  os.remove(workdir / "checkpoints" / "6" / "state" / "_METADATA")
  with pytest.raises(checkpoint.CheckpointError, match=r"checkpoint .*/6 is truncated .*missing state/_METADATA"):
    training.train(_config(), str(workdir))


def _cut_short(step_dir):
  for data_dir in (step_dir / "state").rglob("d"):
    for chunk in data_dir.iterdir():
      chunk.write_bytes(chunk.read_bytes()[:10])  # a copy cut short


def test_damaged_arrays_are_refused_not_half_loaded(straight, tmp_path):
  workdir = _copy_checkpoints(straight, tmp_path)
  _cut_short(workdir / "checkpoints" / "6")
  with pytest.raises(checkpoint.DamagedCheckpointError, match=r"checkpoint step 6 \(.*/6\) failed its checksums: "
                                                             r"state/(\S+/)?d/\w+ has 10 bytes, \d+ were saved"):
    training.train(_config(), str(workdir))
  assert not (workdir / "metrics.jsonl").exists()


def test_damaged_checkpoint_error_is_the_one_message(straight, tmp_path):
  """Without the checksum record (a run killed between its save and the record), orbax's read fails: the command
  line's stderr shows that error once, without the asyncio noise of orbax's other reads behind it."""
  workdir = _copy_workdir(straight, tmp_path)
  _cut_short(workdir / "checkpoints" / "6")
  os.remove(workdir / "checkpoints" / "6" / checkpoint.CHECKSUMS)
  proc = _run(workdir)
  assert proc.returncode == 1, proc.stderr[-3000:]
  # one report: orbax's error, then ours "from" it; before, dozens of asyncio tracebacks were interleaved with it
  assert proc.stderr.count("Traceback (most recent call last)") == 2, proc.stderr[-6000:]
  assert "Event loop is closed" not in proc.stderr and "Task exception was never retrieved" not in proc.stderr
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith(f"tokax.train.checkpoint.DamagedCheckpointError: checkpoint {workdir}/checkpoints/6 could "
                         f"not be read (ValueError: "), last


def test_flipped_bit_is_refused_naming_the_step_and_the_file(straight, tmp_path):
  workdir = _copy_workdir(straight, tmp_path)
  flipped = _flip_a_bit(workdir / "checkpoints" / "6")
  with pytest.raises(checkpoint.DamagedCheckpointError) as refused:
    _cli(workdir)
  assert f"checkpoint step 6 ({workdir}/checkpoints/6) failed its checksums: {flipped} differs from what was saved" \
      in str(refused.value)
  assert "--resume_from_previous_good" in str(refused.value)
  assert _train_steps(workdir) == _train_steps(straight[0])  # nothing trained
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4", "6"]  # nothing moved or deleted


def test_resume_from_previous_good_skips_the_damaged_checkpoints(straight, tmp_path, caplog):
  ref_dir, ref, ref_state = straight
  workdir = _copy_workdir(straight, tmp_path)
  flipped = _flip_a_bit(workdir / "checkpoints" / "6")
  os.remove(workdir / "checkpoints" / "4" / "state" / "_METADATA")  # and checkpoint 4 truncated
  _cli(workdir, resume_from_previous_good=True)
  assert f"skipping checkpoint step 6: checkpoint step 6 ({workdir}/checkpoints/6) failed its checksums: {flipped}" \
      in caplog.text
  assert f"skipping checkpoint step 4: checkpoint {workdir}/checkpoints/4 is truncated or not a tokax checkpoint " \
         f"(missing state/_METADATA)" in caplog.text
  assert (workdir / "checkpoints.damaged" / "6" / flipped).exists()  # set aside, not deleted
  assert (workdir / "checkpoints.damaged" / "4").is_dir()
  assert _train_steps(workdir)[-4:] == [3, 4, 5, 6]  # resumed from checkpoint 2
  assert checkpoint.check_directory(str(workdir / "checkpoints")) == [2, 4, 6]  # saved again
  state, _ = _raw_state(workdir, 6)
  jax.tree.map(np.testing.assert_array_equal, state, ref_state)  # the straight run's step 6, bitwise
  assert checkpoint.verify_checksums(str(workdir / "checkpoints" / "6"), 6)  # the new checkpoint 6 has its record


def test_changed_config_is_refused_then_kept_in_the_history(straight, tmp_path):
  workdir = _copy_workdir(straight, tmp_path)
  saved = (workdir / "config.json").read_text()
  with pytest.raises(workdir_files.ConfigChangedError) as refused:
    _cli(workdir, "--config.lr=0.002", "--config.eval_batch_size=16")
  message = str(refused.value)
  # eval_batch_size may change: it is not listed
  assert f"{workdir} holds a run at step 6 trained with another config; resuming would continue it with 1 changed " \
         f"field(s): lr: 0.001 -> 0.002. If this is meant, pass --allow_config_change" in message
  assert (workdir / "config.json").read_text() == saved
  assert sorted(os.listdir(workdir / "configs")) == ["config.0.json"]

  _cli(workdir, "--config.lr=0.002", allow_config_change=True)
  history = {name: json.loads((workdir / "configs" / name).read_text()) for name in os.listdir(workdir / "configs")}
  assert sorted(history) == ["config.0.json", "config.6.json"]
  assert history["config.0.json"]["lr"] == 0.001 and history["config.6.json"]["lr"] == 0.002
  assert json.loads((workdir / "config.json").read_text()) == history["config.6.json"]


def test_checkpoint_of_another_model_is_refused(straight, tmp_path):
  workdir = _copy_checkpoints(straight, tmp_path)
  config = _config()
  config.model.mlp_dim = 96
  with pytest.raises(checkpoint.CheckpointError, match=r"holds a different train state .*mlp_fc1/bias: saved \[\[64\], .float32.\], expected \[\[96\]"):
    training.train(config, str(workdir))
