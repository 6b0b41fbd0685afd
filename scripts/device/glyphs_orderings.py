r"""The papers' off-the-shelf orderings on a trained glyphs ViT, each decided on paired per-image outcomes.

  python scripts/device/glyphs_orderings.py --model WORKDIR_OR_WEIGHTS [--timm_name vit_tiny_patch16_224] \
      --num_examples 10000 --out OUT [--rows blocks|post]

Evaluates the model dense and with every reduction in BLOCK_ROWS (or POST_ROWS) on the first --num_examples
glyphs test images (tokax.evaluate: one executable per row, bf16 by default), then for each claim (a, b) "a >= b"
reports top-1 of both, the difference d = mean(correct_a - correct_b) over the same images, its standard
error sd(correct_a - correct_b) / sqrt(n), the per-subset differences on --subsets disjoint subsets, and
the verdict: reproduced (d > 2 SE), not reproduced (d < -2 SE) or undecided (|d| <= 2 SE).
--rows blocks (default): the in-encoder methods' claims on a [CLS]-pooled model; --rows post: DivPrune's
claims (>= [CLS] top-k = FasterVLM, >= random selection) at strong pruning of the final tokens, for a
mean-pooled model (configs/glyphs_vit.py:pool=gap), where the kept tokens are what the head pools.
Writes OUT/orderings.md and OUT/orderings.json beside tokax.evaluate's outputs.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

# rows (tokax.reduction.build specs) and the claims "a >= b" they decide, with the paper that makes each
BLOCK_ROWS = ["tome:4", "tome:8", "tome:12", "tome:16", "tome:20", "tome:24", "tome:8,prop_attn=False",
              "tome:16,prop_attn=False", "pitome:0.9", "pitome:0.85", "mctf:8", "mctf:12", "evit:0.7",
              "evit:0.7,fuse_token=False", "evit:0.5", "evit:0.5,fuse_token=False", "dtome:8", "dtome:12"]
BLOCK_CLAIMS = [
    ("tome:8", "tome:8,prop_attn=False", "ToMe: proportional attention >= without (r=8)"),
    ("tome:16", "tome:16,prop_attn=False", "ToMe: proportional attention >= without (r=16)"),
    ("pitome:0.9", "tome:12", "PiToMe >= ToMe at about the same GFLOPs"),
    ("mctf:8", "tome:8", "MCTF >= ToMe at the same r (same token counts)"),
    ("mctf:12", "tome:12", "MCTF >= ToMe at the same r (same token counts)"),
    ("evit:0.7", "evit:0.7,fuse_token=False", "EViT: the fused token >= without (keep 0.7)"),
    ("evit:0.5", "evit:0.5,fuse_token=False", "EViT: the fused token >= without (keep 0.5)"),
    ("dtome:8", "tome:8", "DToMe >= ToMe at the same mean token count"),
    ("dtome:12", "tome:12", "DToMe >= ToMe at the same mean token count"),
]

POST_RATIOS = (0.05, 0.1, 0.25)
POST_ROWS = [f"{method}:{ratio}" for ratio in POST_RATIOS for method in ("divprune", "fastervlm", "random")]
POST_CLAIMS = [claim for ratio in POST_RATIOS for claim in (
    (f"divprune:{ratio}", f"fastervlm:{ratio}", f"DivPrune >= [CLS] top-k (FasterVLM), keeping {ratio:.0%}"),
    (f"divprune:{ratio}", f"random:{ratio}", f"DivPrune >= random selection, keeping {ratio:.0%}"))]


def verdict(correct_a: np.ndarray, correct_b: np.ndarray, subsets: int) -> dict:
  """Paired comparison of two rows' per-image outcomes (bool (N,)) on the same images."""
  d = correct_a.astype(np.float64) - correct_b.astype(np.float64)
  mean, se = float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
  parts = [float(p.mean()) for p in np.array_split(d, subsets)]
  word = "reproduced" if mean > 2 * se else "not reproduced" if mean < -2 * se else "undecided"
  return {"difference": mean, "se": se, "subset_differences": parts, "verdict": word}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", required=True)
  parser.add_argument("--timm_name")
  parser.add_argument("--num_classes", default="32")
  parser.add_argument("--num_examples", type=int, default=10_000)
  parser.add_argument("--subsets", type=int, default=3)
  parser.add_argument("--dtype", default="bfloat16")
  parser.add_argument("--batch_size", type=int, default=250)
  parser.add_argument("--rows", default="blocks", choices=["blocks", "post"])
  parser.add_argument("--out", required=True)
  args = parser.parse_args()
  rows_specs, claims_specs = (BLOCK_ROWS, BLOCK_CLAIMS) if args.rows == "blocks" else (POST_ROWS, POST_CLAIMS)

  from tokax import evaluate
  from tokax.data import glyphs

  argv = ["--model", args.model, "--data", "glyphs", "--num_examples", str(args.num_examples), "--batch_size",
          str(args.batch_size), "--dtype", args.dtype, "--timing", "data", "--encoder_cache_gb", "16", "--no_progress",
          "--out", args.out]
  if args.timm_name:
    argv += ["--timm_name", args.timm_name, "--num_classes", args.num_classes]
  for spec in rows_specs:
    argv += ["--reduction", spec]
  result = evaluate.main(argv)
  # the classes of test images 0..N-1 from their draws alone (what tokax.evaluate's "glyphs" data rendered)
  labels = np.array([glyphs.label_of(glyphs.example_draws(0, "test", i)) for i in range(args.num_examples)])
  correct = {name: np.asarray(p) == labels for name, p in result["predictions"].items()}
  rows = {row["method"]: row for row in result["rows"]}
  lines = [result["caption"], "", f"Paired over the same {len(labels)} test images; SE = sd(difference) / sqrt(n); "
           f"subsets: {args.subsets} disjoint consecutive subsets.", "",
           "| claim (a >= b) | a | b | top-1 a | top-1 b | GFLOPs a / b | a - b | SE | per subset | verdict |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  claims = []
  for a, b, text in claims_specs:
    v = verdict(correct[a], correct[b], args.subsets)
    claims.append({"claim": text, "a": a, "b": b, **v})
    lines.append(f"| {text} | {a} | {b} | {100 * rows[a]['top1']:.2f}% | {100 * rows[b]['top1']:.2f}% | "
                 f"{rows[a]['gflops_per_image']:.3f} / {rows[b]['gflops_per_image']:.3f} | {100 * v['difference']:+.2f} | "
                 f"{100 * v['se']:.2f} | {', '.join(f'{100 * x:+.2f}' for x in v['subset_differences'])} | "
                 f"{v['verdict']} |")
  if args.rows == "blocks":
    tome = [(r, rows[f"tome:{r}"]["top1"]) for r in (4, 8, 12, 16, 20, 24)]
    lines += ["", "ToMe against r: " + ", ".join(f"r={r} {100 * t:.2f}%" for r, t in tome)
              + f" (dense {100 * rows['dense']['top1']:.2f}%)"]
  text = "\n".join(lines)
  print(text)
  with open(os.path.join(args.out, "orderings.md"), "w", encoding="utf-8") as f:
    f.write(text + "\n\n" + result["table"] + "\n")
  with open(os.path.join(args.out, "orderings.json"), "w", encoding="utf-8") as f:
    json.dump({"claims": claims, "rows": result["rows"], "caption": result["caption"]}, f, indent=1)


if __name__ == "__main__":
  main()
