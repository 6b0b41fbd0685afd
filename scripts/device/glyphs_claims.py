r"""The papers' trained claims on glyphs, decided over training seeds (configs/glyphs_finetune.py runs).

  python scripts/device/glyphs_claims.py --runs RUNS --start START --num_examples 10000 --out OUT

RUNS holds one workdir per (method, seed), named <method>_s<seed> (dense_s0, tome_s0, ..., deit_s2), each a
fine-tune of the dense run START at one schedule. Every model is scored on the same first --num_examples
glyphs test images (in each run's dtype, as trained): the trained runs with their own reduction, the `dense` fine-tune of
each seed off the shelf with each trained reduction, and START off the shelf. A claim "a >= b" compares a and
b of the same seed: per seed d_s = top-1(a_s) - top-1(b_s) on the same images, then over the S seeds
mean(d) and SE = sd(d_s) / sqrt(S): reproduced (mean > 2 SE), not reproduced (mean < -2 SE) or undecided.
The per-image paired SE within a seed (sd(correct_a - correct_b) / sqrt(n)) is printed beside it.
Writes OUT/claims.md and OUT/claims.json.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

# (a, b, claim): a and b name a trained run ("tome") or the dense fine-tune with a reduction off the shelf
# ("dense+tome:16"); the specs are configs/glyphs_finetune.py METHODS'.
CLAIMS = [
    ("tome", "dense+tome:16", "ToMe: trained with ToMe r=16 >= the dense fine-tune with ToMe r=16 off the shelf"),
    ("evit", "dense+evit:0.5", "EViT: trained with EViT keep 0.5 >= the dense fine-tune with it off the shelf"),
    ("mctf", "dense+mctf:16", "MCTF: trained with MCTF r=16 + consistency >= the dense fine-tune with it off the shelf"),
    ("sit", "sit_ce", "SiT: slimming trained with FRD >= slimming trained with cross-entropy alone"),
    ("deit", "dense", "DeiT: hard distillation (distillation token) >= no distillation"),
]
OFF_THE_SHELF = ("tome:16", "evit:0.5", "mctf:16")


def seed_verdict(differences: list[float]) -> dict:
  """Mean over seeds of the per-seed top-1 differences, its SE and the verdict (2 SE rule)."""
  d = np.asarray(differences, np.float64)
  mean = float(d.mean())
  se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
  word = ("undecided" if len(d) < 2 else "reproduced" if mean > 2 * se else "not reproduced" if mean < -2 * se
          else "undecided")
  return {"difference": mean, "se": se, "seeds": len(d), "verdict": word}


def paired_se(correct_a: np.ndarray, correct_b: np.ndarray) -> float:
  """sd(correct_a - correct_b) / sqrt(n) over the same images (bool (n,) each)."""
  d = correct_a.astype(np.float64) - correct_b.astype(np.float64)
  return float(d.std(ddof=1) / np.sqrt(len(d)))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--runs", required=True)
  parser.add_argument("--start", required=True, help="the dense run every fine-tune started from")
  parser.add_argument("--num_examples", type=int, default=10_000)
  parser.add_argument("--batch_size", type=int, default=500)
  parser.add_argument("--out", required=True)
  args = parser.parse_args()

  import jax
  import jax.numpy as jnp

  from tokax import reduction as reductions
  from tokax.data import embedded
  from tokax.train.model import normalize_images
  from tokax.train.restore import load_run

  os.makedirs(args.out, exist_ok=True)
  start = load_run(args.start)
  t0 = time.perf_counter()
  data = embedded.load("glyphs", "test", image_size=start.model.image_size, num_examples=args.num_examples)
  images = (np.asarray(data.images) * 255.0 + 0.5).astype(np.uint8) if data.images.dtype != np.uint8 else data.images
  labels = np.asarray(data.labels)
  print(f"{len(labels)} test images at {start.model.image_size} px in {time.perf_counter() - t0:.1f} s", flush=True)

  compiled = {}

  def correct(key: str, model, variables) -> np.ndarray:
    """(n,) bool: the model's top-1 on each test image; one jit per key (same structure across seeds)."""
    if key not in compiled:
      compiled[key] = jax.jit(lambda v, x, model=model: jnp.argmax(model.apply(v, normalize_images(x)), -1))
    preds = [np.asarray(compiled[key](variables, images[i:i + args.batch_size]))
             for i in range(0, len(images), args.batch_size)]
    return np.concatenate(preds) == labels

  outcomes: dict[str, dict[int, np.ndarray]] = {}  # row -> seed -> (n,) bool
  steps: dict[str, int] = {}
  start_rows = {"dense": correct("dense", start.model, start.variables)}
  for spec in OFF_THE_SHELF:
    start_rows[spec] = correct(f"dense+{spec}", start.model.clone(reduction=reductions.build(spec)), start.variables)
  for name in sorted(os.listdir(args.runs)):
    match = re.fullmatch(r"(\w+?)_s(\d+)", name)
    workdir = os.path.join(args.runs, name)
    if not match or not os.path.exists(os.path.join(workdir, "config.json")):
      continue
    method, seed = match.group(1), int(match.group(2))
    try:
      run = load_run(workdir)
    except Exception as e:  # noqa: BLE001 - a run cut before its first checkpoint is reported, not fatal
      print(f"{name}: not loaded ({e})", flush=True)
      continue
    steps[name] = run.step
    if run.step < run.config.total_steps:
      print(f"{name}: cut at step {run.step} of {run.config.total_steps}; left out", flush=True)
      continue
    outcomes.setdefault(method, {})[seed] = correct(method, run.model, run.variables)
    if method == "dense":
      for spec in OFF_THE_SHELF:
        model = run.model.clone(reduction=reductions.build(spec))
        outcomes.setdefault(f"dense+{spec}", {})[seed] = correct(f"dense+{spec}", model, run.variables)
    print(f"{name}: step {run.step}, top-1 {100 * outcomes[method][seed].mean():.2f}%", flush=True)

  lines = [f"Glyphs test images 0..{len(labels) - 1} ({start.model.image_size} px), each model in its run's dtype "
           f"({start.model.dtype}); start run {args.start} "
           f"(step {start.step}) off the shelf: " + ", ".join(f"{k} {100 * v.mean():.2f}%" for k, v in start_rows.items()),
           "", "Per seed: top-1 of a and b on the same images, d = a - b (paired SE over images in brackets).", "",
           "| claim (a >= b) | a | b | seeds | per seed: a / b / d (SE) | mean d | SE over seeds | verdict |",
           "|---|---|---|---|---|---|---|---|"]
  claims = []
  for a, b, text in CLAIMS:
    seeds = sorted(set(outcomes.get(a, {})) & set(outcomes.get(b, {})))
    per_seed = [{"seed": s, "a": float(outcomes[a][s].mean()), "b": float(outcomes[b][s].mean()),
                 "d": float(outcomes[a][s].mean() - outcomes[b][s].mean()),
                 "paired_se": paired_se(outcomes[a][s], outcomes[b][s])} for s in seeds]
    v = seed_verdict([p["d"] for p in per_seed]) if per_seed else {"difference": float("nan"), "se": float("nan"),
                                                                   "seeds": 0, "verdict": "not run"}
    claims.append({"claim": text, "a": a, "b": b, "per_seed": per_seed, **v})
    cells = "; ".join(f"s{p['seed']}: {100 * p['a']:.2f} / {100 * p['b']:.2f} / {100 * p['d']:+.2f} "
                      f"({100 * p['paired_se']:.2f})" for p in per_seed)
    lines.append(f"| {text} | {a} | {b} | {len(seeds)} | {cells} | {100 * v['difference']:+.2f} | "
                 f"{100 * v['se']:.2f} | {v['verdict']} |")
  lines += ["", "| row | seeds | top-1 per seed | mean |", "|---|---|---|---|"]
  for row in sorted(outcomes):
    accs = [100 * outcomes[row][s].mean() for s in sorted(outcomes[row])]
    lines.append(f"| {row} | {len(accs)} | {', '.join(f'{x:.2f}' for x in accs)} | {np.mean(accs):.2f} |")
  text = "\n".join(lines)
  print(text)
  with open(os.path.join(args.out, "claims.md"), "w", encoding="utf-8") as f:
    f.write(text + "\n")
  with open(os.path.join(args.out, "claims.json"), "w", encoding="utf-8") as f:
    json.dump({"claims": claims, "steps": steps, "num_examples": int(len(labels)),
               "start": {k: float(v.mean()) for k, v in start_rows.items()},
               "rows": {r: {str(s): float(c.mean()) for s, c in v.items()} for r, v in outcomes.items()}}, f, indent=1)


if __name__ == "__main__":
  main()
