r"""Evaluate trained tokenizers from their workdirs: `python -m tokax.train.evaluate_tokenizer`.

  python -m tokax.train.evaluate_tokenizer --workdir /tmp/tok_fsq --workdir /tmp/tok_kl --out /tmp/tok_eval

Each workdir is restored with tokax.train.restore.load_run (its config.json and latest checkpoint,
EMA weights unless --raw_weights) and measured on the suites of tokax.tokenizers.evaluate
(digits, photos, textures, text: PSNR, SSIM, codebook usage, perplexity, bits per image). Prints
one markdown table (a row per tokenizer and suite), writes it with the numbers as JSON to --out,
and a PNG grid per tokenizer (rows of originals over reconstructions, one block per suite).
"""
from __future__ import annotations

import json
import math
import os
from typing import Any

from tokax.tokenizers.evaluate import SUITES, evaluate_tokenizer, format_table, image_grid
from tokax.train.restore import RunError, load_run


def evaluate_workdirs(workdirs: list[str], out_dir: str, *, suites: tuple[str, ...] = SUITES, batch_size: int = 64,
                      num_examples: int | None = None, ema: bool = True) -> list[dict[str, Any]]:
  """Evaluates the tokenizer of each training workdir; writes tokenizer_eval.{md,json} and <name>_grid.png.

  Returns:
    one row per tokenizer and suite: {"tokenizer", "suite", "psnr", "ssim", ["usage", "perplexity",
    "bits_per_image"]}, plus an "all" row per discrete tokenizer (usage over every suite's codes).
  """
  import matplotlib.image

  runs = [load_run(workdir, ema=ema) for workdir in workdirs]  # every workdir checked before any work
  for run in runs:
    if run.task != "tokenizer":
      raise RunError(f"{run.workdir!r} holds a {run.task} run, not a tokenizer training directory")
  os.makedirs(out_dir, exist_ok=True)
  rows = []
  for run in runs:
    short = os.path.basename(os.path.normpath(run.workdir))
    results = evaluate_tokenizer(run.model, run.variables, image_size=run.config.model.image_size,
                                 batch_size=batch_size, suites=suites, num_examples=num_examples)
    rows += [{"tokenizer": f"{short} ({run.config.quantizer.name}, step {run.step})", "suite": suite, **r.metrics}
             for suite, r in results.items()]
    matplotlib.image.imsave(os.path.join(out_dir, f"{short}_grid.png"),
                            image_grid({k: v for k, v in results.items() if k != "all"}))
  with open(os.path.join(out_dir, "tokenizer_eval.md"), "w", encoding="utf-8") as fh:
    fh.write(format_table(rows) + "\n")
  with open(os.path.join(out_dir, "tokenizer_eval.json"), "w", encoding="utf-8") as fh:
    json.dump([{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()}
               for r in rows], fh, indent=2)
  return rows


def _main(argv: list[str]) -> None:
  from absl import flags

  from tokax.train import logging as metric_logging

  if len(argv) > 1:
    raise ValueError(f"evaluate_tokenizer: unexpected arguments {argv[1:]}")
  metric_logging.quiet_orbax_info()
  f = flags.FLAGS
  rows = evaluate_workdirs(f.workdir, f.out or f.workdir[0], suites=tuple(f.suites), batch_size=f.batch_size,
                           num_examples=f.num_examples, ema=not f.raw_weights)
  print(format_table(rows))


def run() -> None:
  from absl import app, flags

  flags.DEFINE_multi_string("workdir", None, "Tokenizer training directory (repeat for several tokenizers).")
  flags.DEFINE_string("out", None, "Directory for the table, JSON and PNG grids (default: the first workdir).")
  flags.DEFINE_multi_enum("suites", list(SUITES), list(SUITES), "Suites to run.")
  flags.DEFINE_integer("batch_size", 64, "Images per reconstruction call.")
  flags.DEFINE_integer("num_examples", None, "Cap on images per suite (default: all; photos: 256).")
  flags.DEFINE_bool("raw_weights", False, "Evaluate the raw weights instead of their EMA.")
  flags.mark_flags_as_required(["workdir"])
  app.run(_main)


if __name__ == "__main__":
  run()
