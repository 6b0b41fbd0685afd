r"""Main job: train a small ViT on cluttered digits, then read its accuracy/cost trade-off with ToMe.

  python scripts/main_job.py --workdir /tmp/main_job
  python scripts/main_job.py --workdir /tmp/main_job_local --config configs/cluttered_digits_vit.py:runlocal

Trains configs/cluttered_digits_vit.py (or --config, with any --config.x=y overrides; a workdir
that already holds a checkpoint resumes or, if finished, only re-evaluates), then evaluates the
trained model on the test split dense and with ToMe at each --r, and writes into the workdir:
  results.json, results.md     method, tokens at the last layer, GFLOPs/img, images/s, top-1
  accuracy_vs_gflops.png       the trade-off plot
  merges.png                   test images above their ToMe groups at the largest r
plus the trainer's config.json, metrics.jsonl and checkpoints/. Prints the table and timings.
"""
from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(_REPO, "configs", "cluttered_digits_vit.py"), "Training config.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.", required=True)
_R = flags.DEFINE_list("r", ["16", "32", "48"], "ToMe tokens merged per layer, one table row each.")
_BENCH_BATCH = flags.DEFINE_integer("bench_batch", 64, "Batch size of the throughput timing.")
_NUM_MERGE_IMAGES = flags.DEFINE_integer("num_merge_images", 6, "Test images in merges.png.")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  import jax
  import matplotlib.pyplot as plt

  from tokax.bench import tradeoff
  from tokax.reduction import ToMe
  from tokax.train import logging as metric_logging
  from tokax.train import run as training
  from tokax.train.tasks import classifier

  metric_logging.quiet_orbax_info()
  config, workdir = _CONFIG.value, _WORKDIR.value
  timings = {}
  start = time.perf_counter()
  result = training.train(config, workdir)
  timings["train (data, training, val/test eval)"] = time.perf_counter() - start

  start = time.perf_counter()
  test = classifier.load_split(config, "test")
  reductions = {"dense": None, **{f"ToMe r={r}": ToMe(r=int(r)) for r in _R.value}}
  rows = tradeoff.reduction_table(result.model, result.params, test, reductions,
                                  eval_batch_size=config.eval_batch_size, bench_batch_size=_BENCH_BATCH.value)
  tradeoff.plot_accuracy_vs_gflops(rows, os.path.join(workdir, "accuracy_vs_gflops.png"),
                                   title=f"{config.data.name}, {len(test)} test images")
  timings["evaluate dense + ToMe, time, plot"] = time.perf_counter() - start

  start = time.perf_counter()
  picture = tradeoff.merge_figure(result.model, result.params, test.images[:_NUM_MERGE_IMAGES.value],
                                  reductions[list(reductions)[-1]], result.model.arch.patch_size)
  plt.imsave(os.path.join(workdir, "merges.png"), picture)
  timings["merge visualisation"] = time.perf_counter() - start

  arch = result.model.arch
  caption = (f"ViT (width {arch.width}, depth {arch.depth}, {arch.num_heads} heads, patch {arch.patch_size}, "
             f"{config.model.image_size} px) trained {result.step} steps on {config.data.name}; "
             f"{len(test)} test images; images/s at batch {_BENCH_BATCH.value} on {jax.devices()[0].device_kind}.")
  table = tradeoff.to_markdown(rows)
  with open(os.path.join(workdir, "results.json"), "w", encoding="utf-8") as f:
    json.dump({"caption": caption, "rows": rows, "step": result.step, "split": "test", "num_examples": len(test),
               "timings_s": timings}, f, indent=2)
  with open(os.path.join(workdir, "results.md"), "w", encoding="utf-8") as f:
    f.write(caption + "\n\n" + table + "\n")
  print(caption)
  print(table)
  for stage, seconds in timings.items():
    print(f"{stage}: {seconds:.1f} s")
  print(f"outputs in {workdir}")


if __name__ == "__main__":
  app.run(main)
