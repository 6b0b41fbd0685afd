"""The real command line, end to end, on the runlocal config: outputs, resume; config errors (its entry point in process)."""
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

from tokax.train import logging as metric_logging

REPO = pathlib.Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "configs" / "digits_vit.py")


def _train(workdir, *overrides):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  return subprocess.run(
      [sys.executable, "-m", "tokax.train", f"--config={CONFIG}:runlocal", f"--workdir={workdir}", *overrides],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def _train_steps(records):
  return [r["step"] for r in records if "train/loss" in r]


def test_train_then_resume(tmp_path):
  proc = _train(tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert (tmp_path / "config.json").exists()
  saved = json.loads((tmp_path / "config.json").read_text())
  assert saved["total_steps"] == 3 and saved["model"]["depth"] == 1
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["3"]
  records = metric_logging.read_metrics(tmp_path / "metrics.jsonl")
  assert _train_steps(records) == [1, 2, 3]
  for record in records:
    for key, value in record.items():
      assert not isinstance(value, str), (key, value)  # non-finite values would be written as strings
  final = records[-1]
  assert final["step"] == 3 and 0.0 <= final["test/accuracy"] <= 1.0 and final["test/num_examples"] == 32

  # Extending the run changes its learning-rate schedule: a config change, which must be said to be meant.
  proc = _train(tmp_path, "--config.total_steps=5", "--allow_config_change")
  assert proc.returncode == 0, proc.stderr[-3000:]
  records = metric_logging.read_metrics(tmp_path / "metrics.jsonl")
  assert _train_steps(records) == [1, 2, 3, 4, 5]  # resumed at step 3: steps 1-3 were not rerun
  assert records[-1]["step"] == 5 and "test/accuracy" in records[-1]
  assert json.loads((tmp_path / "config.json").read_text())["total_steps"] == 5
  history = sorted((tmp_path / "configs").iterdir())
  assert [p.name for p in history] == ["config.0.json", "config.3.json"]  # each config, from the step it took over
  assert [json.loads(p.read_text())["total_steps"] for p in history] == [3, 5]
  assert "with a changed config (allow_config_change): total_steps: 3 -> 5" in proc.stderr


def _cli_in_process(capsys, *argv):
  """(exit status, stderr) of tokax.train's entry point (absl's app.run) run in this process: for argument errors,
  which end before anything trains, without starting a Python."""
  from absl import app

  from tokax.train import main as cli

  with pytest.raises(SystemExit) as exited:
    app.run(cli.main, argv=["tokax.train", *argv])
  return exited.value.code, capsys.readouterr().err


def test_mistyped_override_names_the_field(tmp_path, capsys):
  status, stderr = _cli_in_process(capsys, f"--config={CONFIG}:runlocal", f"--workdir={tmp_path}", "--config.bach_size=8")
  assert status == 1
  assert "bach_size" in stderr
  assert not (tmp_path / "metrics.jsonl").exists()


def test_unknown_config_argument_is_an_error(tmp_path, capsys):
  status, stderr = _cli_in_process(capsys, f"--config={CONFIG}:runlokal", f"--workdir={tmp_path}")
  assert status == 1
  assert "runlokal" in stderr


def _load_config_module(name):
  spec = importlib.util.spec_from_file_location(name, REPO / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize("name", ["digits_vit", "cluttered_digits_vit"])
@pytest.mark.parametrize("arg", ["", "runlocal", "variant=S/8,runlocal"])
def test_configs_load(name, arg):
  config = _load_config_module(name).get_config(arg)
  if "S/8" in arg:
    assert config.model.variant == "S/8"
  assert config.total_steps > 0 and config.batch_size > 0
  assert config.model.image_size % int(config.model.variant.split("/")[1]) == 0
  if "runlocal" in arg:
    assert config.total_steps <= 5


def test_parse_arg_is_typed():
  from tokax.train.config_utils import parse_arg

  arg = parse_arg("variant=S/8,runlocal,steps=7", variant="Ti/8", runlocal=False, steps=1)
  assert (arg.variant, arg.runlocal, arg.steps) == ("S/8", True, 7)
  with pytest.raises(ValueError, match="steps"):
    parse_arg("steps=seven", steps=1)
  with pytest.raises(ValueError, match="unknown key 'varaint'"):
    parse_arg("varaint=S/8", variant="Ti/8")


def test_packaged_configs_are_the_repository_configs():
  """configs/ ships inside the package as tokax.configs (setup.py); "tokax:<name>.py[:arg]" names its files."""
  import importlib.resources

  from tokax.train import config_utils

  shipped = sorted(p.name for p in (REPO / "configs").glob("*.py") if not p.name.startswith("_"))
  assert config_utils.packaged_configs() == shipped
  # the installed package (editable here, a wheel for users) carries them, not only the checkout's fallback
  assert pathlib.Path(str(importlib.resources.files("tokax.configs"))).resolve() == (REPO / "configs").resolve()
  assert pathlib.Path(config_utils.config_path("digits_vit")).resolve() == REPO / "configs" / "digits_vit.py"
  assert config_utils.resolve_config_spec("tokax:digits_vit.py:variant=S/8,runlocal") == (
      config_utils.config_path("digits_vit.py") + ":variant=S/8,runlocal")
  assert config_utils.resolve_config_spec("configs/digits_vit.py:runlocal") == "configs/digits_vit.py:runlocal"
  # a config that loads a sibling through its own __file__ (glyphs_finetune -> glyphs_vit)
  packaged = config_utils.load_config_file("tokax:glyphs_finetune.py:runlocal")
  assert packaged.to_dict() == config_utils.load_config_file("configs/glyphs_finetune.py:runlocal").to_dict()
  for bad in ("nope.py", "../configs/digits_vit.py"):
    with pytest.raises(ValueError, match="digits_vit.py"):  # the error lists what ships
      config_utils.load_config_file(f"tokax:{bad}")


def test_cli_takes_a_packaged_config_name(tmp_path, capsys):
  status, stderr = _cli_in_process(capsys, "--config=tokax:digits_vit.py:runlokal", f"--workdir={tmp_path}")
  assert status == 1 and "runlokal" in stderr  # resolved to the packaged file, whose get_config refused the arg
  status, stderr = _cli_in_process(capsys, "--config=tokax:nope.py", f"--workdir={tmp_path}")
  assert status == 1 and "nope.py" in stderr and "digits_vit.py" in stderr
  assert not (tmp_path / "metrics.jsonl").exists()
