"""tokax.bench.sweep: the bound models, DToMe calibration, the target checks and one end-to-end run."""
import functools
import json
import os

import jax
import numpy as np
import pytest

from tokax.bench import sweep
from tokax.models import ViT
from tokax.reduction import DToMeCalibration, build, calibrate_dtome
from tokax.train import config_utils

from random_variables import random_variables

IMAGE = (32, 32, 3)


@pytest.fixture(scope="module")
def tiny():
  model = ViT(variant="Ti/8", width=32, depth=3, num_heads=2, image_size=32, num_classes=10)
  images = np.random.default_rng(1).uniform(size=(8, *IMAGE)).astype(np.float32)
  return model, random_variables(model, IMAGE), images  # no init compiled


@pytest.mark.parametrize("method,strength", [("tome", 2), ("mctf", 3), ("evit", 0.5), ("slim", 0.5), ("pitome", 0.8)])
def test_bounds_keep_the_methods_token_counts(tiny, method, strength):
  model, params, _ = tiny
  reduced = model.clone(reduction=build(sweep.method_spec(method, strength)))
  params, _ = sweep.params_for(reduced, params, IMAGE)
  counts = sweep.layer_token_counts(reduced, params, IMAGE)
  assert counts[-1] < 17
  for bound in sweep.bounds(reduced, counts, 17):
    assert sweep.layer_token_counts(bound, params, IMAGE) == counts


def test_calibrated_dtome_merges_r_per_block_on_its_calibration_batch(tiny):
  """theta is the first edge the batch-level ranking did not merge: on that batch, r * B merges.

  Exact for the first merging block only (later blocks see batch-level vs per-image merged tokens).
  """
  model, params, images = tiny
  dtome = calibrate_dtome(model, params, [images], DToMeCalibration(r=(3, 0, 0)))
  assert dtome.thresholds[1:] == (float("inf"),) * 2
  _, inter = jax.jit(functools.partial(model.clone(reduction=dtome).apply, return_intermediates=True))(params, images)
  valid = np.asarray(inter["mask"]).sum(-1)
  assert valid.mean() == 17 - 3 and valid.min() < valid.max()  # per-image counts differ, the batch total is exact


def test_method_specs_come_from_the_registry():
  assert sweep.method_spec("tome", 8) == {"name": "tome", "r": 8}
  assert sweep.method_spec("tome_noprop", 8) == {"name": "tome", "r": 8, "prop_attn": False}
  assert sweep.method_spec("evit", 0.7) == {"name": "evit", "keep_rate": 0.7}
  assert sweep.method_spec("fastervlm", 0.5) == {"name": "fastervlm", "ratio": 0.5}
  with pytest.raises(ValueError, match="unknown method 'tomme'"):
    sweep.method_spec("tomme", 8)
  with pytest.raises(ValueError, match="no prop_attn"):
    sweep.method_spec("divprune_noprop", 0.5)
  assert sorted(["evit", "tome_noprop", "dct", "tome"], key=sweep.method_order) == ["tome", "tome_noprop", "evit", "dct"]


def test_target_checks_name_the_rows_that_miss():
  rows = [{"method": "dense", "strength": "-", "speedup_vs_predicted": 1.0},
          {"method": "tome", "strength": 16, "speedup_vs_predicted": 0.95, "plan_fraction": 0.04},
          {"method": "mctf", "strength": 16, "speedup_vs_predicted": 0.62, "plan_fraction": 0.21}]
  speed, plan = sweep.target_checks(rows)
  assert speed == "Speed-up >= 90% of the GFLOPs prediction: 1/2 rows; below: mctf 16 (62%)"
  assert plan == "Plan time <= 10% of the forward: 1/2 timed rows; above: mctf 16 (21.0%)"


def test_ordering_checks_compare_trained_rows_at_no_more_gflops_and_tome_prop_attn():
  rows = [{"method": "dense", "strength": "-", "gflops_per_image": 4.0, "top1": 0.9},
          {"method": "tome", "strength": 8, "gflops_per_image": 2.5, "top1": 0.85},
          {"method": "tome_noprop", "strength": 8, "gflops_per_image": 2.5, "top1": 0.80},
          {"method": "evit", "strength": 0.5, "gflops_per_image": 2.0, "top1": 0.87},
          {"method": "sit (trained)", "strength": "keep 0.5", "gflops_per_image": 2.1, "top1": 0.86, "fine_tuned": True},
          {"method": "mctf (trained)", "strength": "r=8", "gflops_per_image": 1.0, "top1": 0.5, "fine_tuned": True}]
  sit, mctf, tome = sweep.ordering_checks(rows)
  assert sit == ("sit (trained) (2.10 GFLOPs): top-1 86.0% vs best off-the-shelf at <= its GFLOPs evit 0.5 "
                 "(2.00 GFLOPs) 87.0%: trained >= off-the-shelf does not hold")
  assert mctf == "mctf (trained) (1.00 GFLOPs, top-1 50.0%): no off-the-shelf row at <= its GFLOPs"
  assert tome == "ToMe r=8: top-1 85.0% with proportional attention, 80.0% without: prop-attn helps"


@pytest.mark.slow
def test_sweep_on_a_trained_checkpoint_writes_the_tables(tmp_path):
  """Also a trained row: the MCTF fine-tune of the dense runlocal run (init_from, lr 0: MCTF has no parameters,
  so it keeps the dense weights), restored from its own config.json, must equal the off-the-shelf MCTF row at
  the same r on every block."""
  from tokax.train import run as training

  config = config_utils.load_config_file("configs/sweep_cluttered_digits.py:runlocal")
  config.checkpoint.workdir = str(tmp_path / "train")
  dense = config_utils.load_config_file(config.checkpoint.config)
  dense.progress_bar = False
  training.train(dense, config.checkpoint.workdir)
  mctf = config_utils.load_config_file("configs/cluttered_digits_mctf.py:runlocal")  # r=2 on its 1 block
  mctf.init_from.workdir, mctf.lr, mctf.progress_bar = config.checkpoint.workdir, 0.0, False
  del mctf.consistency  # lr 0 makes the objective moot; plain CE compiles ~3x faster than the student + teacher step
  training.train(mctf, str(tmp_path / "mctf"))
  config.methods = {"tome": [4], "mctf": [2]}
  config.trained.mctf.workdir = str(tmp_path / "mctf")
  config.overhead = "all"
  config.post_methods = {"divprune": [0.5]}
  config.repeats = 1
  result = sweep.run(config, str(tmp_path / "sweep"))
  rows = {(r["method"], r["strength"]): r for r in result["rows"]}
  dense, tome = rows[("dense", "-")], rows[("tome", 4)]
  assert dense["tokens"] == 17 and tome["tokens"] == 13  # 16 patches + cls, one block merging 4
  assert tome["predicted_speedup"] == pytest.approx(dense["gflops_per_image"] / tome["gflops_per_image"])
  assert 0.0 <= tome["top1"] <= 1.0 and "plan_ms" in tome and "plan_ms" not in dense
  assert result["post_rows"][0]["tokens"] == 1 + 8
  for name in ("sweep.json", "sweep.md", "sweep.png"):
    assert os.path.getsize(tmp_path / "sweep" / name) > 0
  assert json.load(open(tmp_path / "sweep" / "sweep.json"))["rows"][0]["method"] == "dense"
  trained, shelf = rows[("mctf (trained)", "r=2")], rows[("mctf", 2)]
  assert trained["fine_tuned"] and trained["step"] == 3 and "fine_tuned" not in shelf
  for key in ("tokens", "layer_tokens", "gflops_per_image", "top1"):
    assert trained[key] == shelf[key], key
  assert "mctf (trained) (" in open(tmp_path / "sweep" / "sweep.md").read()
