"""Golden files for Fourier-VLM parity: the OFFICIAL Fourier-Compressor `compress` on random features.

    python scripts/goldens/make_dct_goldens.py --fourier /path/to/Fourier-Compressor --out tests/golden \
        --commit 45ab4048753a387f719f213110979f6e22fa3f30

`--fourier` is a checkout of https://github.com/whyisverysmart/Fourier-Compressor (the directory
that contains the `fourier_compressor/` package); it is imported from there at run time and no
official code lives in this repo. The commit is read with `git rev-parse HEAD`; for a tree without
.git pass `--commit`. No git snapshot of this repository could be fetched when the committed
goldens were made: the checkout was rebuilt from the public code index at commit 45ab404
(fourier_compressor/{__init__,compress,dct}.py, byte counts equal to the index's; their sha256
are in the json), which is why `--commit` is given above.

The official compress() accepts fp16/bf16 only (TypeError otherwise), so inputs are fp16 or bf16.
It computes in float32 and casts back; the float32 result before the cast is recorded too, by
wrapping the `idct2` that compress() calls (a recorder that returns the official value unchanged).

Writes tests/golden/dct_compress.npz with, per case S:

  x_<S>          (B, H*W, C) input: float16, or bfloat16 values stored as float32 (exact)
  out_<S>        (B, rh*rw, C) official compress(x, H, W, rh, rw) in the input dtype (bf16 as float32)
  out_fp32_<S>   (B, rh*rw, C) float32, the official result before the cast back

and tests/golden/dct_compress.json (provenance, grids, kept blocks).
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

import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
OFFICIAL_REPO = "https://github.com/whyisverysmart/Fourier-Compressor"
OFFICIAL_FILES = ("fourier_compressor/__init__.py", "fourier_compressor/compress.py", "fourier_compressor/dct.py")
QWEN_RATIO = 2 / 3  # the Qwen2-VL integration's default: reserve = max(int(side * ratio), 1)

# case -> (dtype, seed, B, (H, W), (rh, rw), C, kind)
CASES = {
    "llava_fp16": ("float16", 0, 2, (24, 24), (12, 12), 32, "random"),        # LLaVA-1.5: 576 -> 144
    "llava_bf16": ("bfloat16", 1, 2, (24, 24), (12, 12), 32, "random"),
    "rect_fp16": ("float16", 2, 2, (6, 8), (3, 5), 16, "random"),             # H != W, rh != rw
    "qwen_fp16": ("float16", 3, 2, (16, 22), (max(int(16 * QWEN_RATIO), 1), max(int(22 * QWEN_RATIO), 1)), 16,
                  "random"),                                                  # (10, 14)
    "identity_fp16": ("float16", 4, 1, (6, 8), (6, 8), 8, "random"),          # keep == grid
    "constant_fp16": ("float16", 5, 1, (24, 24), (12, 12), 8, "constant"),    # DC gain sqrt(576/144) = 2
}


def _official_commit(checkout: pathlib.Path, commit_arg: str | None) -> tuple[str, str]:
  try:
    top, sha = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--show-toplevel", "HEAD"], check=True,
                              capture_output=True, text=True).stdout.split()
    if pathlib.Path(top).resolve() != checkout:
      raise subprocess.CalledProcessError(1, "git")
    if commit_arg and commit_arg != sha:
      raise SystemExit(f"--commit {commit_arg} disagrees with {checkout} HEAD {sha}")
    return sha, "git rev-parse HEAD of --fourier"
  except (subprocess.CalledProcessError, FileNotFoundError):
    if not commit_arg:
      raise SystemExit(f"{checkout} is not a git checkout: pass --commit <sha>")
    return commit_arg, "--commit argument (the --fourier tree has no .git)"


def _features(kind: str, seed: int, b: int, n: int, c: int) -> np.ndarray:
  rng = np.random.default_rng(seed)
  if kind == "constant":
    return np.full((b, n, c), 0.75)
  return rng.standard_normal((b, n, c))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--fourier", required=True, type=pathlib.Path,
                      help="checkout of whyisverysmart/Fourier-Compressor (contains fourier_compressor/)")
  parser.add_argument("--out", default=REPO_ROOT / "tests" / "golden", type=pathlib.Path)
  parser.add_argument("--commit", default=None, help="official commit sha, if the checkout has no .git")
  args = parser.parse_args(argv)

  checkout = args.fourier.resolve()
  if not (checkout / "fourier_compressor" / "compress.py").is_file():
    raise SystemExit(f"{checkout} does not contain fourier_compressor/compress.py")
  commit, commit_from = _official_commit(checkout, args.commit)
  import torch
  torch.set_num_threads(1)
  sys.path.insert(0, str(checkout))
  importlib.import_module("fourier_compressor")
  compress_module = sys.modules["fourier_compressor.compress"]  # the package rebinds `compress` to the function
  official_idct2 = compress_module.idct2
  recorded = []

  def recording_idct2(*args, **kwargs):
    out = official_idct2(*args, **kwargs)
    recorded.append(out.detach().clone())
    return out

  compress_module.idct2 = recording_idct2
  try:
    compress_module.compress(torch.zeros(1, 4, 2), 2, 2, 1, 1)
    raise SystemExit("expected the official compress() to reject float32 input")
  except TypeError as e:
    fp32_error = str(e)

  arrays, cases_meta = {}, []
  for tag, (dtype, seed, b, (h, w), (rh, rw), c, kind) in CASES.items():
    torch_dtype = getattr(torch, dtype)
    x = torch.from_numpy(_features(kind, seed, b, h * w, c)).to(torch_dtype)
    recorded.clear()
    with torch.no_grad():
      out = compress_module.compress(x, h, w, rh, rw)
    assert out.dtype == torch_dtype and out.shape == (b, rh * rw, c) and len(recorded) == 1, tag
    before_cast = recorded[0].reshape(b, c, rh * rw).transpose(-1, -2).numpy().astype(np.float32)
    assert torch.equal(torch.from_numpy(before_cast).to(torch_dtype), out), tag
    if dtype == "float16":
      arrays[f"x_{tag}"], arrays[f"out_{tag}"] = x.numpy(), out.numpy()
    else:  # numpy has no bfloat16: float32 holds every bf16 value exactly
      arrays[f"x_{tag}"], arrays[f"out_{tag}"] = x.float().numpy(), out.float().numpy()
    arrays[f"out_fp32_{tag}"] = before_cast
    cases_meta.append({"tag": tag, "dtype": dtype, "seed": seed, "kind": kind, "batch": b, "grid": [h, w],
                       "keep": [rh, rw], "channels": c, "dc_gain": float(np.sqrt(h * w / (rh * rw))),
                       "max_abs_out": float(np.abs(before_cast).max())})
    print(f"{tag:<14} {dtype:<8} grid {h}x{w} -> {rh}x{rw}  max|out| {cases_meta[-1]['max_abs_out']:.3f}")

  args.out.mkdir(parents=True, exist_ok=True)
  npz_path = args.out / "dct_compress.npz"
  np.savez_compressed(npz_path, **arrays)
  meta = {
      "official_repo": OFFICIAL_REPO,
      "official_commit": commit,
      "official_commit_from": commit_from,
      "official_source_note": "no git snapshot could be fetched; the committed goldens ran the three package "
                              "files as read from the public code index at this commit",
      "official_files_sha256": {p: hashlib.sha256((checkout / p).read_bytes()).hexdigest() for p in OFFICIAL_FILES},
      "official_call": "fourier_compressor.compress(x, H, W, rh, rw) with norm='ortho' (default), CPU",
      "official_fp32_rejected": fp32_error,
      "before_cast": "out_fp32_*: the official idct2 output inside compress(), recorded by a wrapper that "
                     "returns it unchanged, reshaped (B, C, rh*rw) -> (B, rh*rw, C) as compress() does",
      "qwen_ratio": QWEN_RATIO,
      "qwen_keep_rule": "max(int(side * ratio), 1) per side (integrations/qwen2_vl/helpers.py _new_side)",
      "cases": cases_meta,
      "feature_recipe": "np.random.default_rng(seed).standard_normal((B, H*W, C)) (float64) cast by torch to the "
                        "case dtype; constant: 0.75",
      "versions": {"torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version()},
      "npz_keys": sorted(arrays),
      "command": "python scripts/goldens/make_dct_goldens.py --fourier <checkout> --out tests/golden "
                 "--commit 45ab4048753a387f719f213110979f6e22fa3f30",
  }
  (args.out / "dct_compress.json").write_text(json.dumps(meta, indent=2) + "\n")
  print(f"wrote {npz_path}, {args.out / 'dct_compress.json'}")


if __name__ == "__main__":
  main()
