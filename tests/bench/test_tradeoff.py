"""The main job's table, plot and merge picture on a runlocal-size model."""
import numpy as np
import pytest

from tokax.bench import tradeoff
from tokax.data import offline
from tokax.reduction import ToMe
from tokax.train.model import build_model

from random_variables import random_variables


@pytest.fixture(scope="module")
def model_params_data():  # one init and one data load for the module
  model = build_model(variant="Ti/8", image_size=32, num_classes=10, pool="gap", width=32, depth=2,
                      num_heads=2, mlp_dim=64)
  params = random_variables(model, (32, 32, 3))  # no init compiled
  data = offline.load("cluttered_digits", "test", image_size=32, num_examples=20)
  return model, params, data


def test_reduction_table_has_every_row(model_params_data, tmp_path):
  model, params, data = model_params_data
  reductions = {"dense": None, "ToMe r=2": ToMe(r=2), "ToMe r=4": ToMe(r=4)}
  rows = tradeoff.reduction_table(model, params, data, reductions, eval_batch_size=8, bench_batch_size=4,
                                  warmup=1, repeats=2)
  assert [row["method"] for row in rows] == list(reductions)
  assert [row["tokens"] for row in rows] == [17, 17 - 2 - 2, 17 - 4 - 4]
  gflops = [row["gflops_per_image"] for row in rows]
  assert gflops[0] > gflops[1] > gflops[2] > 0
  assert rows[0]["same_as_first"] == 1.0
  for row in rows:
    assert 0.0 <= row["top1"] <= 1.0 and 0.0 <= row["same_as_first"] <= 1.0 and row["images_per_s"] > 0
  table = tradeoff.to_markdown(rows)
  assert all(f"| {name} |" in table for name in reductions)
  path = tmp_path / "plot.png"
  tradeoff.plot_accuracy_vs_gflops(rows, str(path), title="test")
  assert path.stat().st_size > 1000


def test_merge_figure(model_params_data):
  model, params, data = model_params_data
  picture = tradeoff.merge_figure(model, params, data.images[:3], ToMe(r=4), patch_size=8)
  assert picture.shape == (64, 96, 3) and picture.dtype == np.uint8
  np.testing.assert_array_equal(picture[:32, :32], np.clip(data.images[0] * 255 + 0.5, 0, 255).astype(np.uint8))


def test_main_job_script_runlocal(tmp_path):
  import json
  import os
  import pathlib
  import subprocess
  import sys

  repo = pathlib.Path(__file__).resolve().parents[2]
  proc = subprocess.run(
      [sys.executable, str(repo / "scripts" / "main_job.py"), f"--workdir={tmp_path}",
       f"--config={repo / 'configs' / 'cluttered_digits_vit.py'}:runlocal", "--r=1,2", "--bench_batch=4",
       "--num_merge_images=2"],
      cwd=repo, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads((tmp_path / "results.json").read_text())
  assert [row["method"] for row in results["rows"]] == ["dense", "ToMe r=1", "ToMe r=2"]
  assert results["step"] == 3
  assert "| ToMe r=2 |" in (tmp_path / "results.md").read_text() and "| ToMe r=2 |" in proc.stdout
  for name in ("accuracy_vs_gflops.png", "merges.png", "config.json", "metrics.jsonl"):
    assert (tmp_path / name).stat().st_size > 0, name
