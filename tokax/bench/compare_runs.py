r"""Trained classifiers side by side: test accuracy, GFLOPs per image and images/s of each run's checkpoint.

Issue 4's "T2T-ViT-7 vs ViT-Ti at similar FLOPs" line; any tokax.train classifier runs (ViT, T2T-ViT,
with their reductions) go in as --run NAME=CONFIG@WORKDIR, CONFIG being the run's --config:

  python -m tokax.bench.compare_runs --out /tmp/t2t_vs_vit \
      --run "T2T-ViT-7=configs/cluttered_digits_t2t.py:gpu@/tmp/cd_t2t7" \
      --run "ViT-Ti/16=configs/cluttered_digits_vit.py:gpu,variant=Ti/16,width=192,depth=12,heads=3,image_size=224@/tmp/cd_vit_ti16"

Each run is restored from its latest checkpoint (a run stopped early is measured where it stopped;
the step is reported). GFLOPs: XLA's count of the forward with XLA attention (throughput.vit_forward_gflops);
images/s: the median of timed forwards on random batches, in --dtype. Writes compare.json and
compare.md into --out and prints the table.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tokax.bench import throughput


def parse_run(text: str) -> tuple[str, str, str]:
  """"NAME=CONFIG@WORKDIR" -> (name, config reference, workdir)."""
  name, has_name, rest = text.partition("=")
  config, has_at, workdir = rest.rpartition("@")
  if not (has_name and has_at and name and config and workdir):
    raise ValueError(f"--run: expected NAME=CONFIG@WORKDIR (e.g. 'vit=configs/x.py:gpu@/tmp/run'); got {text!r}")
  return name, config, workdir


def measure_run(name: str, config_reference: str, workdir: str, *, batch_size: int = 256, dtype: Any = jnp.bfloat16,
                warmup: int = 3, repeats: int = 10, eval_batch_size: int = 250, split: str = "test") -> dict[str, Any]:
  """One row: the run's step, parameter count, top-1 on `split`, GFLOPs per image and images/s."""
  from tokax.train import evaluate, objectives, trainer

  train_config, model, variables, step = objectives.restore_run(config_reference, workdir)
  model = model.clone(dtype=jnp.dtype(dtype))
  variables = jax.tree.map(lambda p: p.astype(dtype) if jnp.issubdtype(p.dtype, jnp.floating) else p, variables)
  data = trainer.load_split(train_config, split)
  predictions = evaluate.predict(evaluate.make_predict_fn(model), variables, data, eval_batch_size)
  shape = (batch_size, model.image_size, model.image_size, 3)
  timing = throughput.measure(lambda p, x: model.apply(p, x), variables, shape, jnp.dtype(dtype),
                              warmup=warmup, repeats=repeats)
  return {"name": name, "config": config_reference, "workdir": workdir, "step": step,
          "image_size": model.image_size,
          "params_m": sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables)) / 1e6,
          "top1": float(np.mean(predictions == data.labels)), "split": split,
          "gflops_per_image": throughput.vit_forward_gflops(model, variables, shape, jnp.dtype(dtype)),
          "images_per_s": timing["images_per_s"], "median_ms": timing["median_ms"]}


def to_markdown(rows: list[dict[str, Any]], caption: str = "") -> str:
  lines = ([caption, ""] if caption else []) + [
      "| run | step | image px | params (M) | GFLOPs/img | images/s | top-1 |", "|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['name']} | {r['step']} | {r['image_size']} | {r['params_m']:.2f} | {r['gflops_per_image']:.3f} | "
                 f"{r['images_per_s']:,.0f} | {100 * r['top1']:.1f}% |")
  return "\n".join(lines)


def run(runs: Sequence[str], out: str, **kwargs: Any) -> dict[str, Any]:
  """Measures every "NAME=CONFIG@WORKDIR" of `runs`; a run that fails to restore is logged and skipped."""
  os.makedirs(out, exist_ok=True)
  rows, failed = [], []
  for text in runs:
    name, config, workdir = parse_run(text)
    try:
      rows.append(measure_run(name, config, workdir, **kwargs))
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

  _RUNS = flags.DEFINE_multi_string("run", [], "NAME=CONFIG@WORKDIR of a tokax.train classifier run.")
  _OUT = flags.DEFINE_string("out", None, "Directory for compare.json and compare.md.")
  _BATCH = flags.DEFINE_integer("batch", 256, "Forward batch size for images/s and GFLOPs.")
  _DTYPE = flags.DEFINE_string("dtype", "bfloat16", "Compute dtype of the forward.")
  _REPEATS = flags.DEFINE_integer("repeats", 10, "Timed forwards (median).")
  flags.mark_flags_as_required(["out"])
  app.run(main)
