"""The main job (scripts/main_job.py) end to end on a tiny shipped-layout model, and its merge-map figure."""
import importlib.util
import json
import pathlib

import numpy as np

from tokax.bench import tradeoff
from tokax.reduction import METHODS, visualize

from random_variables import write_pretrained

REPO = pathlib.Path(__file__).resolve().parents[2]
# 32 glyph classes at 32 px, patch 8: 16 patches + [CLS], two blocks
FIELDS = dict(variant="Ti/8", image_size=32, num_classes=32, width=32, depth=2, num_heads=2, mlp_dim=64, pool="cls")


def _main_job():
  spec = importlib.util.spec_from_file_location("main_job", REPO / "scripts" / "main_job.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_every_registry_method_has_two_strengths_in_the_main_job():
  job = _main_job()
  assert set(job.STRENGTHS) == set(METHODS) and set(job.NOT_OFF_THE_SHELF) <= set(METHODS)
  specs = job.reduction_specs(list(METHODS))
  assert [s.partition(":")[0] for s in specs] == [m for m in METHODS if m not in job.NOT_OFF_THE_SHELF for _ in range(2)]
  assert len(set(specs)) == len(specs)


def test_main_job_on_a_tiny_model(tmp_path):
  write_pretrained(tmp_path, "tiny_glyphs", FIELDS, dict(name="glyphs", image_size=32, split_seed=0))
  work = tmp_path / "work"
  summary = _main_job().main(["--workdir", str(work), "--model", "tiny_glyphs", "--model_dir", str(tmp_path),
                              "--num_examples", "12", "--batch_size", "8", "--methods", "tome,divprune",
                              "--finetune", "tome:3", "--finetune_steps", "2", "--finetune_batch", "4",
                              "--repeats", "1", "--no_xla_cache"])
  results = json.loads((work / "evaluate" / "results.json").read_text())
  assert [row["method"] for row in results["rows"]] == ["dense", "tome:2", "tome:3", "divprune:0.5", "divprune:0.25"]
  assert [row["tokens"] for row in results["rows"]] == [17, 13, 11, 9, 5]  # 16 patches + [CLS]; r clipped per block
  assert results["num_examples"] == 12
  finetune = summary["finetune"]
  off = next(row for row in results["rows"] if row["method"] == "tome:3")
  assert finetune["off_the_shelf_top1"] == off["top1"] and finetune["num_examples"] == 12
  assert 0.0 <= finetune["finetuned_top1"] <= 1.0
  trained = json.loads((work / "finetune" / "config.json").read_text())
  assert trained["reduction"] == "tome:3" and trained["init_from"]["pretrained"] == "tiny_glyphs"
  assert "| tome:3, fine-tuned |" in (work / "results.md").read_text()
  for name in ("accuracy_vs_gflops.png", "merges.png"):
    assert (work / "evaluate" / name).stat().st_size > 1000, name


def test_merge_maps_paint_each_group_with_its_mean_colour(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.uniform(0.1, 0.9, (2, 16, 16, 3)).astype(np.float32)
  # 4 patches of 8 px + a [CLS]: patches 0 and 1 merged, patch 3 pruned
  assign = np.array([[0, 1, 1, 2, -1]] * 2)
  path = tmp_path / "merges.png"
  tradeoff.plot_merge_maps(images, {"m": assign}, 8, str(path))
  assert path.stat().st_size > 1000
  drawn = visualize.draw_merges(images[0], assign[0], 8, 1, boundary=0.0)
  merged = images[0][:8].reshape(-1, 3).mean(0)
  np.testing.assert_allclose(drawn[2, 2] / 255.0, merged, atol=1 / 255 + 1e-6)
  np.testing.assert_allclose(drawn[2, 10] / 255.0, merged, atol=1 / 255 + 1e-6)
