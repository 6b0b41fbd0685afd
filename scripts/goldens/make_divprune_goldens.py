"""Golden files for DivPrune parity: the OFFICIAL vbdi/divprune selection on random features.

    python scripts/goldens/make_divprune_goldens.py --divprune /path/to/divprune/checkout --out tests/golden

`--divprune` is a checkout of https://github.com/vbdi/divprune (the directory containing
`LLaVA/llava/model/llava_arch.py`). The official `LlavaMetaForCausalLM.DivPrune` is imported from there
at run time; no official code lives in this repo. The commit is read with `git rev-parse HEAD`;
for an exported tree without .git pass `--commit <sha>` (the committed goldens used
799e2d950aa01ba7860907f5a6d86061f885dca6).

Adaptation at the edges (recorded in the json): llava_arch.py is imported without running
`llava/__init__.py` (which imports the language models, i.e. transformers) and with stubs for the
three names it imports but DivPrune never uses (build_vision_tower, build_vision_projector,
get_anyres_image_grid_shape). `DivPrune(self, features, N, None, threshold_ratio)` and
`pairwise_cosine_similarity` run unchanged on an instance of a subclass that only fills in the
abstract `get_model` (they use `self` only to reach each other).

The official code handles batch index [0] only (LLaVA's `new_input_embeds[0]`); a batch here is
run image by image, which is the per-image behaviour tokax implements.

Writes tests/golden/divprune_selection.npz with, per feature set F and setting S:

  x_<F>           (B, N, C) float32 features
  picks_<S>       (B, k) int64 official `s`, in pick order, one official call per image
  keep_<S>        (B, k) int64 sorted picks (what the official LLaVA code keeps, in original order)
  margins_<S>     (B, k) float64 per greedy step, the pick's score minus the best score of any other
                  not-yet-chosen token that is not an exact copy of it (see _margins)

and tests/golden/divprune_selection.json (provenance, settings, per-step decision margins).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import pathlib
import platform
import subprocess
import sys
import types

import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
OFFICIAL_REPO = "https://github.com/vbdi/divprune"
OFFICIAL_FILE = "LLaVA/llava/model/llava_arch.py"
ADAPTATIONS = [
    "llava_arch.py imported as llava.model.llava_arch with the packages `llava` and `llava.model` "
    "created empty (their __init__ files import transformers' language models, unused here)",
    "stubs for build_vision_tower, build_vision_projector (llava.model.multimodal_*.builder) and "
    "llava.mm_utils.get_anyres_image_grid_shape: imported by llava_arch.py, never called by DivPrune",
    "DivPrune is called on an instance of a subclass of LlavaMetaForCausalLM whose only addition is "
    "the abstract get_model (raising; DivPrune never calls it): no model, no config",
]


def _features(kind: str, seed: int, b: int, n: int, c: int) -> np.ndarray:
  rng = np.random.default_rng(seed)
  if kind == "random":
    return rng.standard_normal((b, n, c)).astype(np.float32)
  if kind == "clustered":  # 12 directions + small noise per image: the redundancy pruning exploits
    centers = rng.standard_normal((b, 12, c))
    member = rng.integers(0, 12, size=(b, n))
    x = np.take_along_axis(centers, member[..., None], axis=1) + 0.05 * rng.standard_normal((b, n, c))
    return x.astype(np.float32)
  if kind == "duplicates":  # 40 distinct tokens + 24 exact copies, shuffled
    distinct = rng.standard_normal((b, 40, c))
    x = np.concatenate([distinct, distinct[:, :24]], axis=1)
    order = np.stack([rng.permutation(n) for _ in range(b)])
    return np.take_along_axis(x, order[..., None], axis=1).astype(np.float32)
  raise ValueError(kind)


# feature set -> (kind, seed, B, N, C)
FEATURES = {
    "random": ("random", 0, 3, 576, 64),
    "clustered": ("clustered", 1, 2, 196, 32),
    "duplicates": ("duplicates", 2, 2, 64, 16),
}
# setting -> (feature set, ratio)
SETTINGS = {
    "random_r0.098": ("random", 0.098),   # the paper's SUBSET_RATIO: 576 -> 56
    "random_r0.1": ("random", 0.1),       # the function's default threshold_ratio: 576 -> 58
    "random_r0.5": ("random", 0.5),       # a long greedy run: 288 picks
    "clustered_r0.25": ("clustered", 0.25),
    "duplicates_r0.5": ("duplicates", 0.5),
}


def _import_official(checkout: pathlib.Path):
  llava_dir = checkout / "LLaVA" / "llava"
  sys.path.insert(0, str(checkout / "LLaVA"))
  for name, path in (("llava", llava_dir), ("llava.model", llava_dir / "model")):
    pkg = types.ModuleType(name)
    pkg.__path__ = [str(path)]
    sys.modules[name] = pkg
  stubs = {
      "llava.model.multimodal_encoder.builder": {"build_vision_tower": None},
      "llava.model.multimodal_projector.builder": {"build_vision_projector": None},
      "llava.mm_utils": {"get_anyres_image_grid_shape": None},
  }
  for name, attrs in stubs.items():
    parent = name.rsplit(".", 1)[0]
    if parent not in sys.modules:  # an empty package, so its real __init__ (and clip_encoder) never runs
      pkg = types.ModuleType(parent)
      pkg.__path__ = []
      sys.modules[parent] = pkg
    module = types.ModuleType(name)
    for attr in attrs:
      def _unused(*args, _attr=attr, **kwargs):
        raise RuntimeError(f"{_attr} is a stub: DivPrune goldens never build a model")
      setattr(module, attr, _unused)
    sys.modules[name] = module
  arch = importlib.import_module("llava.model.llava_arch")

  class Host(arch.LlavaMetaForCausalLM):  # the abstract get_model is the only thing to fill in
    def get_model(self):
      raise RuntimeError("DivPrune goldens never build a model")

  return Host()


def _official_commit(checkout: pathlib.Path, commit_arg: str | None) -> tuple[str, str]:
  try:
    top, sha = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--show-toplevel", "HEAD"], check=True,
                              capture_output=True, text=True).stdout.split()
    if pathlib.Path(top).resolve() != checkout:
      raise subprocess.CalledProcessError(1, "git")
    if commit_arg and commit_arg != sha:
      raise SystemExit(f"--commit {commit_arg} disagrees with {checkout} HEAD {sha}")
    return sha, "git rev-parse HEAD of --divprune"
  except (subprocess.CalledProcessError, FileNotFoundError):
    if not commit_arg:
      raise SystemExit(f"{checkout} is not a git checkout: pass --commit <sha>")
    return commit_arg, "--commit argument (the --divprune tree has no .git)"


def _margins(x: np.ndarray, picks: np.ndarray) -> list[float]:
  """Per step, the pick's score minus the best other candidate's (float64; own diagnostic).

  Step 0 uses the official first-pick score (2nd-smallest distance per column), later steps the
  min distance to the chosen set. Exact copies of the pick are not rivals (they tie exactly, and both
  sides take the first index). A gap near float32 noise (~1e-6) means a re-implementation may
  legitimately pick the other token.
  """
  unit = x / np.linalg.norm(x, axis=-1, keepdims=True)
  dist = 1.0 - unit @ unit.T
  gaps = []
  chosen = np.zeros(len(x), bool)
  for t, p in enumerate(picks):
    score = np.sort(dist, axis=0)[1] if t == 0 else dist[picks[:t]].min(0)
    score = np.where(chosen, -np.inf, score)
    assert score[p] >= score.max() - 1e-5, f"step {t}: the official pick is not a float64 best"
    # exact copies of the pick tie with it by construction; both sides take the first index
    rivals = np.where(np.all(x == x[p], axis=-1), -np.inf, score)
    gaps.append(float(score[p] - rivals.max()) if np.isfinite(rivals.max()) else float("inf"))
    chosen[p] = True
  return gaps


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--divprune", required=True, type=pathlib.Path, help="checkout of vbdi/divprune")
  parser.add_argument("--out", default=REPO_ROOT / "tests" / "golden", type=pathlib.Path)
  parser.add_argument("--commit", default=None, help="official commit sha, if the checkout has no .git")
  args = parser.parse_args(argv)

  checkout = args.divprune.resolve()
  if not (checkout / OFFICIAL_FILE).is_file():
    raise SystemExit(f"{checkout} does not contain {OFFICIAL_FILE}")
  commit, commit_from = _official_commit(checkout, args.commit)
  import torch
  torch.set_num_threads(1)
  official = _import_official(checkout)

  arrays, settings_meta = {}, []
  for name, (kind, seed, b, n, c) in FEATURES.items():
    arrays[f"x_{name}"] = _features(kind, seed, b, n, c)
  for tag, (feature_set, ratio) in SETTINGS.items():
    x = arrays[f"x_{feature_set}"]
    picks, margins = [], []
    for image in x:  # the official code takes batch index [0]: one call per image
      with torch.no_grad():
        s, _ = official.DivPrune(torch.from_numpy(image), image.shape[0], None, threshold_ratio=ratio)
      s = s.numpy()
      picks.append(s)
      margins.append(_margins(image.astype(np.float64), s))
    picks = np.stack(picks)
    arrays[f"picks_{tag}"] = picks
    arrays[f"margins_{tag}"] = np.asarray(margins, np.float64)
    arrays[f"keep_{tag}"] = np.sort(picks, axis=-1)
    distinct = all(len(set(p)) == len(p) for p in picks)
    settings_meta.append({
        "tag": tag, "features": feature_set, "ratio": ratio, "num_tokens": int(x.shape[1]),
        "num_keep": int(picks.shape[1]), "picks_distinct": distinct,
        "min_margin": min(min(m) for m in margins),
        "min_margin_per_image": [min(m) for m in margins],
    })
    print(f"{tag:<18} N={x.shape[1]:>3} k={picks.shape[1]:>3} distinct={distinct} "
          f"min margin {settings_meta[-1]['min_margin']:.2e}")

  args.out.mkdir(parents=True, exist_ok=True)
  npz_path = args.out / "divprune_selection.npz"
  np.savez_compressed(npz_path, **arrays)
  meta = {
      "official_repo": OFFICIAL_REPO,
      "official_commit": commit,
      "official_commit_from": commit_from,
      "official_files_sha256": {OFFICIAL_FILE: hashlib.sha256((checkout / OFFICIAL_FILE).read_bytes()).hexdigest()},
      "official_call": "LlavaMetaForCausalLM.DivPrune(self, x_image (N, C) float32 CPU, N, None, threshold_ratio=ratio) "
                       "-> s; keep = sort(s) as in prepare_inputs_labels_for_multimodal",
      "batch": "the official code reads new_input_embeds[0] only; goldens call it once per image",
      "features": {k: {"kind": v[0], "seed": v[1], "shape": list(v[2:])} for k, v in FEATURES.items()},
      "feature_recipe": "scripts/goldens/make_divprune_goldens.py _features (numpy default_rng)",
      "settings": settings_meta,
      "adaptations": ADAPTATIONS,
      "margin_note": "min_margin: smallest float64 gap between the best and runner-up score over all "
                     "greedy steps; near float32 noise a re-implementation may pick the other token",
      "versions": {"torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version()},
      "npz_keys": sorted(arrays),
      "command": "python scripts/goldens/make_divprune_goldens.py --divprune <checkout> --out tests/golden "
                 "[--commit <sha>]",
  }
  (args.out / "divprune_selection.json").write_text(json.dumps(meta, indent=2) + "\n")
  print(f"wrote {npz_path}, {args.out / 'divprune_selection.json'}")


if __name__ == "__main__":
  main()
