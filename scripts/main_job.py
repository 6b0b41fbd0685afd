r"""Main job: what every token reduction costs a trained ViT, and what fine-tuning with one wins back.

  bash scripts/main.sh                                  # = python scripts/main_job.py --workdir workdir/main
  python scripts/main_job.py --workdir /tmp/main --num_examples 500 --finetune_steps 20

1. Evaluates the ViT-Ti/16 that ships with tokax (tokax.pretrained "glyphs_vit_ti16_112", trained on a GPU
   on the embedded glyphs dataset at 112 px) on the first --num_examples glyphs test images, dense and with
   every registry method (tokax.reduction.METHODS) at two strengths (STRENGTHS), through
   `python -m tokax.evaluate`'s evaluate(): one table (method, tokens, GFLOPs/img, images/s, top-1,
   agreement with dense), accuracy_vs_gflops.png, and merges.png (the tokens each method leaves on one
   test image).
2. Fine-tunes the shipped model for --finetune_steps steps with --finetune (EViT keeping 0.3 of the tokens at
   each of its three pruning blocks: it costs accuracy off the shelf) through the trainer
   (configs/glyphs_vit.py, init_from the shipped weights), then
   scores it with the same reduction on the same images: off the shelf vs fine-tuned.

Writes into --workdir: evaluate/ (results.json, results.md, accuracy_vs_gflops.png, merges.png),
finetune/ (the fine-tuning run), results.md (both tables) and timings; prints both tables.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _REPO)

# Two strengths per registry method: a mild and a strong one at 112 px (49 patches + [CLS], 12 blocks).
STRENGTHS: dict[str, tuple[str, str]] = {
    "tome": ("2", "3"), "pitome": ("0.9", "0.8"), "evit": ("0.7", "0.3"), "mctf": ("2", "3"), "dtome": ("2", "3"),
    "slim": ("0.7", "0.5"), "divprune": ("0.5", "0.25"), "todre": ("0.5", "0.25"), "dct": ("0.5", "0.25"),
    "fastervlm": ("0.5", "0.25"), "random": ("0.5", "0.25"),
}


# Registry methods the table leaves out, and why (each is still in STRENGTHS, so a new method must be placed).
NOT_OFF_THE_SHELF: dict[str, str] = {
    "slim": "SiT's slimming modules are learned: Slim needs a model trained with it (--config.reduction=slim:0.5)",
}


def reduction_specs(methods: list[str]) -> list[str]:
  """"name:strength" for both strengths of each method, in registry order (NOT_OFF_THE_SHELF left out)."""
  from tokax.reduction import METHODS

  missing = sorted(set(METHODS) - set(STRENGTHS))
  if missing:
    raise ValueError(f"scripts/main_job.py: STRENGTHS has no strengths for registry method(s) {missing}: add two")
  unknown = sorted(set(methods) - set(METHODS))
  if unknown:
    raise ValueError(f"--methods: unknown method(s) {unknown}; the registry has {sorted(METHODS)}")
  return [f"{name}:{s}" for name in METHODS if name in methods and name not in NOT_OFF_THE_SHELF
          for s in STRENGTHS[name]]


def finetune_config(record: dict, reduction: str, *, steps: int, batch_size: int, lr: float, model: str,
                    model_dir: str | None):
  """configs/glyphs_vit.py for the shipped model's architecture and image size, started from its weights,
  trained `steps` steps with `reduction` on the CPU (float32)."""
  sys.path.insert(0, os.path.join(_REPO, "configs"))
  import glyphs_vit  # noqa: PLC0415

  size = record["model"]["image_size"]
  config = glyphs_vit.get_config(f"image_size={size}")
  config.model.update({k: v for k, v in record["model"].items() if k != "num_classes"}, dtype="float32")
  config.reduction = reduction
  config.init_from = {"pretrained": model, "pretrained_dir": model_dir or ""}
  config.data.update(num_train=steps * batch_size, num_val=batch_size, num_test=batch_size, num_workers=0,
                     num_threads=2, seed=int(record["data"].get("split_seed", 0)))
  config.augment.max_shift = max(1, size // 28)
  config.update(batch_size=batch_size, eval_batch_size=batch_size, total_steps=steps, warmup_steps=max(1, steps // 10),
                lr=lr, log_every_steps=max(1, steps // 5), eval_every_steps=steps, checkpoint_every_steps=steps,
                keep_checkpoints=1)
  return config


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--model", default="glyphs_vit_ti16_112", help="a tokax.pretrained name")
  parser.add_argument("--model_dir", help="where the model's NAME.json/.safetensors are (default: tokax's)")
  parser.add_argument("--num_examples", type=int, default=2000, help="glyphs test images to evaluate on")
  parser.add_argument("--batch_size", type=int, default=250, help="evaluation and timing batch")
  parser.add_argument("--methods", default=",".join(STRENGTHS), help="registry methods for the table")
  parser.add_argument("--finetune", default="evit:0.3", help="the reduction to fine-tune with ('' skips step 2)")
  parser.add_argument("--finetune_steps", type=int, default=45)
  parser.add_argument("--finetune_batch", type=int, default=64)
  parser.add_argument("--finetune_lr", type=float, default=1.5e-4)
  parser.add_argument("--repeats", type=int, default=3,
                      help="timed calls of the post-encoder reducers' rows (the others time their accuracy pass)")
  parser.add_argument("--no_xla_cache", action="store_true", help="no compilation cache in WORKDIR/xla_cache")
  args = parser.parse_args(argv)

  import jax

  from tokax import evaluate, pretrained
  from tokax.bench import measure
  from tokax.reduction import build
  from tokax.train import logging as metric_logging
  from tokax.train import run as training

  workdir = os.path.abspath(args.workdir)
  os.makedirs(workdir, exist_ok=True)
  if not args.no_xla_cache:  # identical executables (the fine-tuned model's row is the table's) compile once
    jax.config.update("jax_compilation_cache_dir", os.path.join(workdir, "xla_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  metric_logging.quiet_orbax_info()
  directory = args.model_dir or pretrained.DIRECTORY
  record = pretrained.info(args.model, directory)
  timings = {}

  start = time.perf_counter()
  specs = reduction_specs([m for m in args.methods.split(",") if m])
  eval_argv = ["--model", f"pretrained:{args.model}", "--num_examples", str(args.num_examples),
               "--batch_size", str(args.batch_size), "--timing", "data", "--warmup", "1",
               "--repeats", str(args.repeats),
               "--merge_images", "1", "--no_progress", "--out", os.path.join(workdir, "evaluate")]
  if args.model_dir:
    eval_argv += ["--pretrained_dir", args.model_dir]
  for spec in specs:
    eval_argv += ["--reduction", spec]
  table = evaluate.main(eval_argv)
  timings["evaluate: every method at two strengths"] = time.perf_counter() - start
  left_out = [f"{name}: {why}" for name, why in NOT_OFF_THE_SHELF.items() if name in args.methods.split(",")]

  finetuned = None
  if args.finetune:
    start = time.perf_counter()
    config = finetune_config(record, args.finetune, steps=args.finetune_steps, batch_size=args.finetune_batch,
                             lr=args.finetune_lr, model=args.model, model_dir=args.model_dir)
    result = training.train(config, os.path.join(workdir, "finetune"))
    timings[f"fine-tune {args.finetune_steps} steps with {args.finetune}"] = time.perf_counter() - start
    start = time.perf_counter()
    loaded = evaluate.load_pretrained(args.model, directory)
    data = evaluate.load_data(evaluate.parse_args(eval_argv), loaded)
    method = build(args.finetune)
    # result.params: the trained variables ({"params": ...}), scored by the table row's executable (same shapes)
    row = measure.reduction_row(loaded.model, jax.device_get(result.params), method, data.batches,
                                method=args.finetune, eval_batch_size=args.batch_size, timed=False, keep_assign=1)
    off_the_shelf = next((r for r in table["rows"] if r["spec"] == args.finetune), None)
    if off_the_shelf is None:  # not a table row: score it off the shelf too
      off_the_shelf = measure.reduction_row(loaded.model, loaded.variables, method, data.batches,
                                            eval_batch_size=args.batch_size, timed=False)
    finetuned = {"method": args.finetune, "steps": args.finetune_steps, "batch_size": args.finetune_batch,
                 "lr": args.finetune_lr, "dense_top1": table["rows"][0]["top1"],
                 "off_the_shelf_top1": off_the_shelf["top1"], "finetuned_top1": row["top1"],
                 "num_examples": row["num_examples"]}
    timings["evaluate the fine-tuned model"] = time.perf_counter() - start

  lines = [table["caption"], "", table["table"]]
  lines += ["", "Not in the table: " + "; ".join(left_out)] if left_out else []
  if finetuned:
    f = finetuned
    lines += ["", f"Fine-tuned with {f['method']} for {f['steps']} steps (batch {f['batch_size']}, lr {f['lr']:g}, "
              f"from the shipped weights, on the CPU), the same {f['num_examples']} test images:", "",
              "| model | top-1 |", "|---|---|", f"| dense | {100 * f['dense_top1']:.1f}% |",
              f"| {f['method']}, off the shelf | {100 * f['off_the_shelf_top1']:.1f}% |",
              f"| {f['method']}, fine-tuned | {100 * f['finetuned_top1']:.1f}% |"]
  with open(os.path.join(workdir, "results.md"), "w", encoding="utf-8") as out:
    out.write("\n".join(lines) + "\n")
  summary = {"finetune": finetuned, "timings_s": timings, "evaluate": os.path.join(workdir, "evaluate")}
  with open(os.path.join(workdir, "results.json"), "w", encoding="utf-8") as out:
    json.dump(summary, out, indent=1)
  print("\n".join(lines[3:]))
  for stage, seconds in timings.items():
    print(f"{stage}: {seconds:.1f} s")
  print(f"outputs in {workdir}")
  return summary


if __name__ == "__main__":
  main()
