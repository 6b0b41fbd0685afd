"""Pre-emption and resume: SIGKILL mid-save, SIGKILL after a save, SIGTERM; damaged checkpoints; multi-host.

One 6-step run of configs/digits_vit.py:runlocal (1 device, 64 examples in batches of 16, so 1.5
epochs, checkpoints every 2 steps) is the
reference; the interrupted command lines must end on bitwise the same parameters.
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

from tokax.train import checkpoint
from tokax.train import run as training
from tokax.train import logging as metric_logging

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


def test_damaged_arrays_are_refused_not_half_loaded(straight, tmp_path):
  workdir = _copy_checkpoints(straight, tmp_path)
  for data_dir in (workdir / "checkpoints" / "6" / "state").rglob("d"):
    for chunk in data_dir.iterdir():
      chunk.write_bytes(chunk.read_bytes()[:10])  # a copy cut short
  with pytest.raises(checkpoint.CheckpointError, match=r"checkpoint .*/6 could not be read"):
    training.train(_config(), str(workdir))
  assert not (workdir / "metrics.jsonl").exists()


def test_checkpoint_of_another_model_is_refused(straight, tmp_path):
  workdir = _copy_checkpoints(straight, tmp_path)
  config = _config()
  config.model.mlp_dim = 96
  with pytest.raises(checkpoint.CheckpointError, match=r"holds a different train state .*mlp_fc1/bias: saved \[\[64\], .float32.\], expected \[\[96\]"):
    training.train(config, str(workdir))
