r"""Trained classifiers side by side: test accuracy, GFLOPs per image and images/s of each run's checkpoint.

Issue 4's "T2T-ViT-7 vs ViT-Ti at similar FLOPs" line; any tokax.train classifier runs (ViT, T2T-ViT,
with their reductions) go in as --run NAME=WORKDIR:

  python -m tokax.bench.compare_runs --out /tmp/t2t_vs_vit \
      --run "T2T-ViT-7=/tmp/cd_t2t7" --run "ViT-Ti/16=/tmp/cd_vit_ti16"

Each run is restored by tokax.train.restore.load_run (its config.json and latest checkpoint: a run
stopped early is measured where it stopped; the step is reported). Each row's top-1, GFLOPs (XLA's count of
the forward with XLA attention, lowered for the CPU) and images/s (median of timed forwards on random batches,
in --dtype) are tokax.bench.measure.reduction_row's, the row of tokax.evaluate and the sweep. Writes
compare.json and compare.md into --out and prints the table.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tokax.bench import measure


def parse_run(text: str) -> tuple[str, str]:
  """"NAME=WORKDIR" -> (name, workdir)."""
  name, has_name, workdir = text.partition("=")
  if not (has_name and name and workdir):
    raise ValueError(f"--run: expected NAME=WORKDIR (e.g. 'vit=/tmp/run'); got {text!r}")
  config, at, _ = workdir.partition("@")
  if at and ".py" in config:  # the former NAME=CONFIG@WORKDIR
    raise ValueError(f"--run {text!r}: the CONFIG@ part is no longer needed (each run is rebuilt from its "
                     f"workdir's config.json); give NAME=WORKDIR")
  return name, workdir


def measure_run(name: str, workdir: str, *, batch_size: int = 256, dtype: Any = jnp.bfloat16,
                warmup: int = 3, repeats: int = 10, eval_batch_size: int = 250, split: str = "test") -> dict[str, Any]:
  """One row: the run's step, parameter count, top-1 on `split`, GFLOPs per image and images/s."""
  from tokax.train import restore
  from tokax.train.tasks import classifier

  run = restore.load_run(workdir)
  if run.task != "classifier":
    raise restore.RunError(f"{workdir!r} holds a {run.task} run; compare_runs measures classifiers")
  model, step = run.model.clone(dtype=jnp.dtype(dtype)), run.step
  variables = measure.cast_floating(run.variables, dtype)
  data = classifier.load_split(run.config, split)
  row = measure.reduction_row(model, variables, model.reduction, data, method=name, eval_batch_size=eval_batch_size,
                              bench_batch_size=batch_size, dtype=jnp.dtype(dtype), warmup=warmup, repeats=repeats)
  return {"name": name, "workdir": workdir, "step": step,
          "image_size": model.image_size,
          "params_m": sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables)) / 1e6,
          "top1": row["top1"], "top5": row["top5"], "tokens": row["tokens"], "split": split,
          "gflops_per_image": row["gflops_per_image"],
          "images_per_s": row["images_per_s"], "median_ms": row["median_ms"]}


def to_markdown(rows: list[dict[str, Any]], caption: str = "") -> str:
  lines = ([caption, ""] if caption else []) + [
      "| run | step | image px | params (M) | GFLOPs/img | images/s | top-1 |", "|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['name']} | {r['step']} | {r['image_size']} | {r['params_m']:.2f} | {r['gflops_per_image']:.3f} | "
                 f"{r['images_per_s']:,.0f} | {100 * r['top1']:.1f}% |")
  return "\n".join(lines)


def run(runs: Sequence[str], out: str, **kwargs: Any) -> dict[str, Any]:
  """Measures every "NAME=WORKDIR" of `runs`; a run that fails to restore is logged and skipped."""
  os.makedirs(out, exist_ok=True)
  rows, failed = [], []
  for text in runs:
    name, workdir = parse_run(text)
    try:
      rows.append(measure_run(name, workdir, **kwargs))
    except ValueError as e:  # no checkpoint (the run timed out before its first save): report, go on
      logging.warning("%s: %s", name, e)
      failed.append(f"{name}: {e}")
  device = jax.devices()[0].device_kind
  caption = (f"{kwargs.get('split', 'test')} split; forward batch {kwargs.get('batch_size', 256)}, "
             f"{jnp.dtype(kwargs.get('dtype', jnp.bfloat16)).name}, on {device} (jax {jax.__version__})")
  result = {"caption": caption, "rows": rows, "failed": failed}
  with open(os.path.join(out, "compare.json"), "w", encoding="utf-8") as f:
    json.dump(result, f, indent=1)
  with open(os.path.join(out, "compare.md"), "w", encoding="utf-8") as f:
    f.write(to_markdown(rows, caption) + "".join(f"\n\nnot measured: {line}" for line in failed) + "\n")
  return result


def main(argv: Sequence[str]) -> None:
  from absl import app

  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  result = run(_RUNS.value, _OUT.value, batch_size=_BATCH.value, dtype=jnp.dtype(_DTYPE.value), repeats=_REPEATS.value)
  print(to_markdown(result["rows"], result["caption"]))
  for line in result["failed"]:
    print(f"not measured: {line}")


if __name__ == "__main__":
  from absl import app, flags

  _RUNS = flags.DEFINE_multi_string("run", [], "NAME=WORKDIR of a tokax.train classifier run.")
  _OUT = flags.DEFINE_string("out", None, "Directory for compare.json and compare.md.")
  _BATCH = flags.DEFINE_integer("batch", 256, "Forward batch size for images/s and GFLOPs.")
  _DTYPE = flags.DEFINE_string("dtype", "bfloat16", "Compute dtype of the forward.")
  _REPEATS = flags.DEFINE_integer("repeats", 10, "Timed forwards (median).")
  flags.mark_flags_as_required(["out"])
  app.run(main)
