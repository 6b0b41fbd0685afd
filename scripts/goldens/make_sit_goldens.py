"""Golden files for SiT parity: the OFFICIAL TokenSlimmingModule / ReverseTSM and LV-ViT slim schedule.

    python scripts/goldens/make_sit_goldens.py --sit /path/to/SiT/checkout --out tests/golden

`--sit` is a checkout of https://github.com/Sense-X/SiT (the directory holding models/lvvit.py). The
file is imported from there at run time; no official code lives in this repo. The commit is read with
`git -C <sit> rev-parse HEAD`; for an exported tree without .git pass `--commit <sha>` (the committed
goldens used f5778084c45c93f2121685989fa35f930f7e8c54, the only commit).

SiT releases LV-ViT models only (fp32 attention, x + f(x) / skip_lam residuals, conv stem), which
tokax's plain ViT is not, so parity is at the module level, on random weights and random inputs
(fp32, CPU, eval):

tests/golden/sit_modules.npz, per case <c> (see the json for shapes, seeds and scales):

  tsm_<c>_x          (B, N, C)   input patch tokens
  tsm_<c>_probe      (B, N', C)  fixed random cotangent: loss = sum(out * probe)
  tsm_<c>_out        (B, N', C)  official TokenSlimmingModule(x)
  tsm_<c>_weights    (B, N, N')  the official softmax(weight(x) * scale, dim=1), before its transpose
  tsm_<c>_g_<name>   d loss / d official parameter (torch layout, '.' -> '__');  tsm_<c>_g_x: d loss / d x
  rtsm_<c>_...       the same for ReverseTSM (x (B, N', C) -> out (B, N0, C)), no weights; parameter
                     gradients only for tensors of at most 20k elements (the file stays small)

The parameters themselves are not stored: they are random_state_dict(weight_shapes, weight_seed) of
the json (plus the TSM `scale`), which the tests redraw with numpy alone.

  TSM cases: c64_n196 (196 -> 98, the first SiT stage at 224/16), c48_n49 (49 -> 24), c30_n7
  (7 -> 3, odd widths), duplicate (every token the same vector: W uniform, out = that vector),
  zeros (all-zero input). RTSM cases: c64_98_196 (SiT's 98 -> 196), c48_12_49 (all gradients).

tests/golden/sit_schedule.json: for the five released variants (sit_lvvit_{tiny,xsmall,small,
medium,large}), built with distillation_type='frd' (and drop_path_decay='fix', see adaptations) on
torch's meta device (no memory, no forward):
slim_index, keeped_patches, layer_patches, the out_features of every TSM and, per block, whether
rtsm[i] is a ReverseTSM (with mlp1 in/out features) or Identity. For sit_lvvit_tiny also a real
eval forward (B=1, 224, default init): the patch-token count of every layer_tokens[i].

Weights: tests/golden/weights.py random_state_dict, drawn for readable aliases so LayerNorm scales
get "norm" statistics (TSM: norm/fc1/fc2 -> official weight.0/weight.1/weight.3; RTSM names are
already norm1, mlp1.fc1, ...). The TSM `scale` (init 1 in the official code) is set per case to a
value != 1 so that a missing or inverted temperature shows.

Adaptations at the edges (also in the json): models/lvvit.py imports timm.models.registry and
timm.models.layers, deprecated aliases in timm 1.0 that still resolve (FutureWarning only); timm is
imported first through tests/torch_compat.py import_timm. Only models/lvvit.py is loaded (by file
path, as module `sit_lvvit`); its @register_model calls add the sit_lvvit_* names to timm's
registry (unused here). To record the weights, `F` in that module's namespace is wrapped: the
wrapper's softmax calls torch.nn.functional.softmax and keeps a copy of its result.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import pathlib
import platform
import subprocess
import sys
import types

import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
OFFICIAL_REPO = "https://github.com/Sense-X/SiT"
OFFICIAL_FILE = "models/lvvit.py"
TSM_ALIASES = {"norm": "weight.0", "fc1": "weight.1", "fc2": "weight.3"}

# tag -> (B, N, N', C, scale, weight seed, input seed, input kind)
TSM_CASES = {
    "c64_n196": (2, 196, 98, 64, 1.75, 10, 20, "normal"),
    "c48_n49": (2, 49, 24, 48, 3.0, 11, 21, "normal"),
    "c30_n7": (2, 7, 3, 30, 0.6, 12, 22, "normal"),
    "duplicate": (2, 49, 24, 48, 3.0, 13, 23, "duplicate"),
    "zeros": (1, 49, 24, 48, 3.0, 14, 24, "zeros"),
}
# tag -> (B, N', N0, C, weight seed, input seed)
RTSM_CASES = {
    "c64_98_196": (2, 98, 196, 64, 30, 40),
    "c48_12_49": (2, 12, 49, 48, 31, 41),
}
VARIANTS = ("sit_lvvit_tiny", "sit_lvvit_xsmall", "sit_lvvit_small", "sit_lvvit_medium", "sit_lvvit_large")
ADAPTATIONS = [
    "models/lvvit.py imports timm.models.registry / timm.models.layers: deprecated aliases in timm 1.0 that "
    "still resolve (FutureWarning only); timm is imported first through tests/torch_compat.py import_timm.",
    "only models/lvvit.py is loaded, by file path as module `sit_lvvit` (models/__init__.py just re-exports it).",
    "to record the slimming weights, the module-level name `F` of sit_lvvit is replaced by a namespace whose "
    "softmax calls torch.nn.functional.softmax unchanged and keeps a copy of the result; everything else in F "
    "is torch.nn.functional itself.",
    "the schedule of the five variants is read from models built on torch's meta device (no forward), with "
    "drop_path_decay='fix' (get_dpr's default 'linear' calls .item(), which meta tensors refuse; drop path "
    "plays no part in the schedule).",
]


def _load_file_module(name: str, path: pathlib.Path):
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module  # timm's register_model looks the defining module up in sys.modules
  spec.loader.exec_module(module)
  return module


def _official_commit(src: pathlib.Path, commit_arg: str | None) -> tuple[str, str]:
  try:
    top, sha = subprocess.run(["git", "-C", str(src), "rev-parse", "--show-toplevel", "HEAD"], check=True,
                              capture_output=True, text=True).stdout.split()
    if pathlib.Path(top).resolve() != src:
      raise subprocess.CalledProcessError(1, "git")
    if commit_arg and commit_arg != sha:
      raise SystemExit(f"--commit {commit_arg} disagrees with {src} HEAD {sha}")
    return sha, "git rev-parse HEAD of --sit"
  except (subprocess.CalledProcessError, FileNotFoundError):
    if not commit_arg:
      raise SystemExit(f"{src} is not a git checkout: pass --commit <sha>")
    return commit_arg, "--commit argument (the --sit tree has no .git)"


def _inputs(kind: str, seed: int, shape: tuple[int, int, int]) -> np.ndarray:
  rng = np.random.default_rng(seed)
  if kind == "zeros":
    return np.zeros(shape, np.float32)
  if kind == "duplicate":
    one = rng.standard_normal((shape[0], 1, shape[2]))
    return np.broadcast_to(one, shape).astype(np.float32)
  return rng.standard_normal(shape).astype(np.float32)


def _run(torch, module, x: np.ndarray, probe_seed: int, recorded: list):
  """Official forward + backward of sum(out * probe). Returns (out, probe, grads, x grad, recorded)."""
  xt = torch.from_numpy(x.copy()).requires_grad_(True)
  recorded.clear()
  out = module(xt)
  probe = np.random.default_rng(probe_seed).standard_normal(tuple(out.shape)).astype(np.float32)
  (out * torch.from_numpy(probe)).sum().backward()
  grads = {n: p.grad.detach().numpy().copy() for n, p in module.named_parameters()}
  return out.detach().numpy(), probe, grads, xt.grad.numpy().copy(), [r.numpy() for r in recorded]


def _key(name: str) -> str:
  return name.replace(".", "__")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sit", required=True, type=pathlib.Path, help="checkout of Sense-X/SiT")
  parser.add_argument("--out", default=REPO_ROOT / "tests" / "golden", type=pathlib.Path)
  parser.add_argument("--commit", default=None, help="official commit sha, if --sit is not a git checkout")
  args = parser.parse_args(argv)

  src = args.sit.resolve()
  if not (src / OFFICIAL_FILE).is_file():
    raise SystemExit(f"{src} does not contain {OFFICIAL_FILE}")
  commit, commit_from = _official_commit(src, args.commit)

  torch_compat = _load_file_module("tokax_tests_torch_compat", REPO_ROOT / "tests" / "torch_compat.py")
  weights = _load_file_module("tokax_tests_golden_weights", REPO_ROOT / "tests" / "golden" / "weights.py")
  timm = torch_compat.import_timm()  # lvvit.py imports timm
  import torch
  import torch.nn.functional as F
  torch.set_num_threads(1)
  lvvit = _load_file_module("sit_lvvit", src / OFFICIAL_FILE)

  recorded = []

  def recording_softmax(*a, **k):
    out = F.softmax(*a, **k)
    recorded.append(out.detach().clone())
    return out

  lvvit.F = types.SimpleNamespace(**{n: getattr(F, n) for n in dir(F) if not n.startswith("__")})
  lvvit.F.softmax = recording_softmax

  arrays, tsm_meta, rtsm_meta = {}, [], []
  for tag, (b, n, n_out, c, scale, wseed, xseed, kind) in TSM_CASES.items():
    tsm = lvvit.TokenSlimmingModule(c, n_out).eval()
    shapes = {}
    for name, p in tsm.named_parameters():
      if name == "scale":
        continue
      alias = next(a for a, off in TSM_ALIASES.items() if name.startswith(off + "."))
      shapes[alias + name[len(TSM_ALIASES[alias]):]] = tuple(p.shape)
    drawn = weights.random_state_dict(shapes, wseed)
    state = {TSM_ALIASES[k.split(".")[0]] + "." + k.split(".", 1)[1]: v for k, v in drawn.items()}
    state["scale"] = np.full((1, 1, 1), scale, np.float32)
    tsm.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    x = _inputs(kind, xseed, (b, n, c))
    out, probe, grads, gx, rec = _run(torch, tsm, x, xseed + 1000, recorded)
    assert len(rec) == 1 and rec[0].shape == (b, n, n_out), tag
    assert out.shape == (b, n_out, c) and np.isfinite(out).all(), tag
    pre = f"tsm_{tag}"
    arrays.update({f"{pre}_x": x, f"{pre}_probe": probe, f"{pre}_out": out, f"{pre}_weights": rec[0],
                   f"{pre}_g_x": gx})
    arrays.update({f"{pre}_g_{_key(k)}": v for k, v in grads.items()})
    w64 = rec[0].astype(np.float64)
    tsm_meta.append({"tag": tag, "batch": b, "tokens": n, "keep": n_out, "channels": c, "hidden": int(c * 0.5),
                     "scale": scale, "weight_seed": wseed, "input_seed": xseed, "probe_seed": xseed + 1000,
                     "weight_shapes": {k: list(v) for k, v in shapes.items()}, "input": kind,
                     "max_weight": float(w64.max()), "min_weight": float(w64.min()),
                     "max_abs_column_sum_error": float(np.abs(w64.sum(1) - 1).max()),
                     "grad_scale": float(grads["scale"].reshape(()))})
    print(f"tsm {tag:<10} x {x.shape} -> {out.shape}  W in [{w64.min():.2e}, {w64.max():.2e}]  "
          f"dL/dscale {grads['scale'].item():+.4f}")

  for tag, (b, n_in, n0, c, wseed, xseed) in RTSM_CASES.items():
    rtsm = lvvit.ReverseTSM(c, n_in, n0).eval()
    shapes = {k: tuple(p.shape) for k, p in rtsm.named_parameters()}
    state = weights.random_state_dict(shapes, wseed)
    rtsm.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    x = _inputs("normal", xseed, (b, n_in, c))
    out, probe, grads, gx, _ = _run(torch, rtsm, x, xseed + 1000, recorded)
    assert out.shape == (b, n0, c), tag
    pre = f"rtsm_{tag}"
    arrays.update({f"{pre}_x": x, f"{pre}_probe": probe, f"{pre}_out": out, f"{pre}_g_x": gx})
    arrays.update({f"{pre}_g_{_key(k)}": v for k, v in grads.items() if v.size <= 20_000})
    rtsm_meta.append({"tag": tag, "batch": b, "tokens": n_in, "recovered": n0, "channels": c, "ratio": 4.0,
                      "weight_seed": wseed, "input_seed": xseed, "probe_seed": xseed + 1000,
                      "weight_shapes": {k: list(v) for k, v in shapes.items()},
                      "grads_stored": sorted(k for k, v in grads.items() if v.size <= 20_000)})
    print(f"rtsm {tag:<10} x {x.shape} -> {out.shape}")

  schedule = {}
  for name in VARIANTS:
    with torch.device("meta"):
      model = getattr(lvvit, name)(distillation_type="frd", drop_path_decay="fix")  # no .item() on meta
    rtsm = []
    for m in model.rtsm:
      rtsm.append(None if isinstance(m, torch.nn.Identity)
                  else [m.mlp1.fc1.in_features, m.mlp1.fc1.out_features, m.mlp1.fc2.out_features])
    schedule[name] = {
        "img_size": model.img_size, "patch_size": model.patch_size, "embed_dim": model.embed_dim,
        "depth": model.depth, "stage_blocks": list(model.stage_blocks), "num_patches": model.num_patches,
        "slim_index": list(model.slim_index), "keeped_patches": list(model.keeped_patches),
        "layer_patches": list(model.layer_patches),
        "tsm_out_features": [t.weight[3].out_features for t in model.tsm],
        "tsm_hidden_features": [t.weight[1].out_features for t in model.tsm],
        "rtsm_mlp1_in_hidden_out": rtsm,
    }
    del model
  lvvit.F.softmax = F.softmax
  torch.manual_seed(0)
  tiny = lvvit.sit_lvvit_tiny(distillation_type="frd").eval()
  with torch.no_grad():
    _, layer_tokens = tiny(torch.from_numpy(np.random.default_rng(50).standard_normal((1, 3, 224, 224))
                                            .astype(np.float32)))
  schedule["sit_lvvit_tiny"]["forward_layer_tokens"] = [int(t.shape[1]) for t in layer_tokens]
  print("tiny forward patch tokens per layer:", schedule["sit_lvvit_tiny"]["forward_layer_tokens"])

  meta_base = {
      "official_repo": OFFICIAL_REPO,
      "official_commit": commit,
      "official_commit_from": commit_from,
      "official_files_sha256": {OFFICIAL_FILE: hashlib.sha256((src / OFFICIAL_FILE).read_bytes()).hexdigest()},
      "versions": {"timm": timm.__version__, "torch": torch.__version__, "numpy": np.__version__,
                   "python": platform.python_version()},
      "adaptations": ADAPTATIONS,
      "command": "python scripts/goldens/make_sit_goldens.py --sit <SiT checkout> --out tests/golden "
                 "[--commit <sha>]",
  }
  args.out.mkdir(parents=True, exist_ok=True)
  np.savez_compressed(args.out / "sit_modules.npz", **arrays)
  modules_meta = dict(
      meta_base,
      official_calls={"tsm": "lvvit.TokenSlimmingModule(C, N').eval()(x), fp32, CPU",
                      "rtsm": "lvvit.ReverseTSM(C, N', N0).eval()(x), ratio 4, fp32, CPU"},
      weights_recipe="tests/golden/weights.py random_state_dict(shapes, weight_seed) over alias names (TSM: "
                     "norm.*, fc1.*, fc2.* for the official weight.0.*, weight.1.*, weight.3.*; RTSM: official "
                     "names); TSM scale = the case's `scale`",
      input_recipe="np.random.default_rng(input_seed).standard_normal((B, N, C)) float32; duplicate: one such "
                   "(B, 1, C) draw repeated over N; zeros: all 0",
      probe_recipe="np.random.default_rng(probe_seed).standard_normal(out.shape) float32; loss = sum(out * probe)",
      tsm_cases=tsm_meta, rtsm_cases=rtsm_meta, npz_keys=sorted(arrays))
  (args.out / "sit_modules.json").write_text(json.dumps(modules_meta, indent=2) + "\n")
  (args.out / "sit_schedule.json").write_text(json.dumps(dict(meta_base, variants=schedule), indent=2) + "\n")
  print(f"wrote {args.out / 'sit_modules.npz'}, sit_modules.json, sit_schedule.json")


if __name__ == "__main__":
  main()
