"""Golden files for quantizer parity: lucidrains' VQ-EMA / FSQ / LFQ and the official FSQ notebook.

    python scripts/goldens/make_quantizer_goldens.py --vqp /tmp/vqp --fsq-notebook /tmp/fsq/fsq.ipynb \
        --out tests/golden --vqp-commit 0d7d1aa83334b6f2f8a40306bece75cdaa13d065 \
        --fsq-commit 5e786838e9825e74992a9884bc079d46734f1baf

`--vqp` is a checkout of https://github.com/lucidrains/vector-quantize-pytorch (the directory that
contains the `vector_quantize_pytorch/` package); it is imported from there at run time (it needs
einops and einx), not from an installed wheel. `--fsq-notebook` is google-research's
`fsq/fsq.ipynb` (https://github.com/google-research/google-research); the code cell that defines
`class FSQ` is executed from it (JAX, CPU), once as published and once with the `jnp.tan` of its
`bound` replaced by `jnp.arctanh`, the fix its authors confirmed (vector-quantize-pytorch#94).
Commits come from `git rev-parse HEAD` of each checkout, or from --vqp-commit / --fsq-commit for a
tree without .git. No official code lives in this repository.

Writes tests/golden/quantizers.npz (float32 unless noted) with:

  VQ-EMA, lucidrains VectorQuantize(dim=D, codebook_size=K, decay, eps=1e-5, commitment_weight=1,
  rotation_trick=False, threshold_ema_dead_code=thr), train mode, one forward on x with codebook E
  (embed = embed_avg = E, cluster_size = ones), per case S in (ema, ema_dead):
    vq_<S>_x (B, N, D), vq_<S>_codebook (K, D) before the step, vq_<S>_quantized (B, N, D),
    vq_<S>_codes (B, N) int32, vq_<S>_commitment () (the unweighted commit loss),
    vq_<S>_codebook_after, vq_<S>_cluster_size_after (K,), vq_<S>_embed_sum_after (K, D),
    vq_<S>_expired (K,) bool (the mask its expire_codes_ passed to replace(); all False for ema)
  FSQ, per levels tag L (e.g. 8_6_5):
    fsq_<L>_z (B, N, d)
    fsq_<L>_vqp_zhat, fsq_<L>_vqp_codes int32, fsq_<L>_vqp_codebook (prod, d)   lucidrains FSQ(levels)
    fsq_<L>_nb_zhat, fsq_<L>_nb_codes int64, fsq_<L>_nb_codebook                notebook, arctanh
    fsq_<L>_nb_roundtrip_ok (B, N) bool: nb_codes decode to nb_zhat with the notebook's own
      indexes_to_codes (False where its truncating codes_to_indexes is off by one)
    fsq_<L>_nbtan_zhat                                                           notebook as published
  LFQ, lucidrains LFQ(dim=D, codebook_size=2**(D/C), num_codebooks=C, entropy_loss_weight=0.1,
  commitment_loss_weight=0.25, diversity_gamma, codebook_scale), train mode, inv_temperature=100,
  per case S:
    lfq_<S>_x (B, N, D), lfq_<S>_quantized (B, N, D), lfq_<S>_codes int32 (B, N) or (B, N, C),
    lfq_<S>_loss (), lfq_<S>_per_sample_entropy (), lfq_<S>_codebook_entropy (), lfq_<S>_commitment (),
    lfq_<S>_codebook (2**(D/C), D/C) (its `codebook` buffer)

and tests/golden/quantizers.json (provenance, case settings, decision margins).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pathlib
import platform
import subprocess
import sys

import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
VQP_REPO = "https://github.com/lucidrains/vector-quantize-pytorch"
FSQ_REPO = "https://github.com/google-research/google-research (fsq/fsq.ipynb)"
VQP_FILES = ("vector_quantize_pytorch/vector_quantize_pytorch.py", "vector_quantize_pytorch/finite_scalar_quantization.py",
             "vector_quantize_pytorch/lookup_free_quantization.py")

# tag -> (seed, B, N, D, K, decay, dead-code threshold)
VQ_CASES = {"ema": (0, 2, 32, 8, 16, 0.9, 0.0), "ema_dead": (1, 2, 24, 6, 32, 0.8, 1.0)}
# levels tags: all-odd, mixed (the spec's 2^8 set), all-even
FSQ_LEVELS = ([8, 6, 5], [7, 5, 5, 5, 5], [4, 4, 4, 4])
# tag -> (seed, B, N, D, num_codebooks, input scale, diversity_gamma, codebook_scale)
LFQ_CASES = {
    "soft": (10, 2, 48, 6, 1, 0.03, 1.0, 1.0),         # logits O(1): non-trivial entropies
    "factorised": (11, 2, 48, 8, 2, 0.05, 0.8, 0.5),   # 2 codebooks of 4 bits, gamma and scale != 1
    "hard": (12, 2, 48, 4, 1, 1.0, 1.0, 1.0),          # near one-hot probabilities
}


def _commit(checkout: pathlib.Path, commit_arg: str | None, flag: str) -> tuple[str, str]:
  try:
    sha = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], check=True, capture_output=True,
                         text=True).stdout.strip()
    top = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--show-toplevel"], check=True, capture_output=True,
                         text=True).stdout.strip()
    if pathlib.Path(top).resolve() != checkout:
      raise subprocess.CalledProcessError(1, "git")
    if commit_arg and commit_arg != sha:
      raise SystemExit(f"{flag} {commit_arg} disagrees with {checkout} HEAD {sha}")
    return sha, "git rev-parse HEAD"
  except (subprocess.CalledProcessError, FileNotFoundError):
    if not commit_arg:
      raise SystemExit(f"{checkout} is not a git checkout: pass {flag} <sha>")
    return commit_arg, f"{flag} argument (no .git)"


def _sha256(path: pathlib.Path) -> str:
  return hashlib.sha256(path.read_bytes()).hexdigest()


def _nearest_margin(x: np.ndarray, codebook: np.ndarray) -> float:
  """Smallest gap between the best and second-best squared distance (float64)."""
  d = ((x.reshape(-1, x.shape[-1])[:, None, :].astype(np.float64) - codebook[None].astype(np.float64))**2).sum(-1)
  d.sort(axis=-1)
  return float((d[:, 1] - d[:, 0]).min())


def _vq_goldens(torch, vqp, arrays, meta):
  for tag, (seed, b, n, d, k, decay, threshold) in VQ_CASES.items():
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((b, n, d)).astype(np.float32)
    # codebook: half near the data, half far away (never chosen: Laplace smoothing / restarts matter)
    codebook = np.concatenate([rng.standard_normal((k // 2, d)), 4.0 + rng.standard_normal((k - k // 2, d))])
    codebook = codebook.astype(np.float32)
    torch.manual_seed(seed)
    vq = vqp.VectorQuantize(dim=d, codebook_size=k, decay=decay, eps=1e-5, commitment_weight=1.0,
                            rotation_trick=False, threshold_ema_dead_code=threshold, sync_codebook=False)
    cb = vq._codebook
    with torch.no_grad():
      cb.embed.copy_(torch.from_numpy(codebook)[None])
      cb.embed_avg.copy_(torch.from_numpy(codebook)[None])
      cb.cluster_size.fill_(1.0)
    expired = []
    official_replace = cb.replace

    def recording_replace(batch_samples, batch_mask, seq_mask=None):
      expired.append(batch_mask.clone())
      return official_replace(batch_samples, batch_mask, seq_mask=seq_mask)

    cb.replace = recording_replace
    vq.train()
    quantized, codes, loss = vq(torch.from_numpy(x))
    expired_mask = expired[0][0].numpy() if expired else np.zeros(k, bool)
    p = f"vq_{tag}_"
    arrays.update({
        p + "x": x, p + "codebook": codebook, p + "quantized": quantized.detach().numpy(),
        p + "codes": codes.numpy().astype(np.int32), p + "commitment": np.float32(loss.item()),
        p + "codebook_after": cb.embed[0].detach().numpy().copy(),
        p + "cluster_size_after": cb.cluster_size[0].numpy().copy(),
        p + "embed_sum_after": cb.embed_avg[0].numpy().copy(), p + "expired": expired_mask})
    flat_x = x.reshape(-1, d)
    for i in np.flatnonzero(expired_mask):  # restarted rows are batch rows
      assert np.any(np.all(flat_x == arrays[p + "codebook_after"][i], axis=-1)), (tag, i)
    meta[tag] = {"seed": seed, "B": b, "N": n, "D": d, "K": k, "decay": decay, "eps": 1e-5,
                 "threshold_ema_dead_code": threshold, "codes_used": int(len(np.unique(arrays[p + "codes"]))),
                 "expired": int(expired_mask.sum()), "nearest_code_margin": _nearest_margin(x, codebook)}
    print(f"vq {tag}: used {meta[tag]['codes_used']}/{k}, expired {meta[tag]['expired']}, "
          f"margin {meta[tag]['nearest_code_margin']:.3g}")


def _notebook_fsq_class(notebook: pathlib.Path, arctanh: bool):
  import jax
  import jax.numpy as jnp
  cells = json.loads(notebook.read_text())["cells"]
  source = next("".join(c["source"]) for c in cells if c["cell_type"] == "code" and "class FSQ" in "".join(c["source"]))
  if arctanh:
    assert source.count("jnp.tan(") == 1
    source = source.replace("jnp.tan(", "jnp.arctanh(")
  namespace = {"jax": jax, "jnp": jnp, "np": np}
  exec(compile(source, str(notebook), "exec"), namespace)  # noqa: S102 (the official cell, run as published)
  return namespace["FSQ"]


def _bound_margin(z: np.ndarray, levels: list[int], eps: float) -> float:
  """Smallest distance of the bounded value to a rounding boundary (float64)."""
  lv = np.asarray(levels, np.float64)
  half_l = (lv - 1) * (1 - eps) / 2
  offset = np.where(lv % 2 == 0, 0.5, 0.0)
  bounded = np.tanh(z.astype(np.float64) + np.arctanh(offset / half_l)) * half_l - offset
  return float(np.abs(np.abs(bounded - np.floor(bounded)) - 0.5).min())


def _fsq_goldens(torch, vqp, notebook, arrays, meta):
  fsq_nb, fsq_nb_tan = _notebook_fsq_class(notebook, True), _notebook_fsq_class(notebook, False)
  for i, levels in enumerate(FSQ_LEVELS):
    tag = "_".join(map(str, levels))
    z = (1.5 * np.random.default_rng(20 + i).standard_normal((2, 64, len(levels)))).astype(np.float32)
    theirs = vqp.FSQ(levels=levels)
    out, idx = theirs(torch.from_numpy(z))
    nb, nb_tan = fsq_nb(levels), fsq_nb_tan(levels)
    nb_zhat = np.asarray(nb.quantize(z), np.float32)
    nb_tan_zhat = np.asarray(nb_tan.quantize(z), np.float32)
    p = f"fsq_{tag}_"
    arrays.update({
        p + "z": z, p + "vqp_zhat": out.detach().numpy(), p + "vqp_codes": idx.numpy().astype(np.int32),
        p + "vqp_codebook": theirs.implicit_codebook.numpy(), p + "nb_zhat": nb_zhat,
        p + "nb_codes": np.asarray(nb.codes_to_indexes(nb_zhat)).astype(np.int64),
        p + "nb_codebook": np.asarray(nb.codebook, np.float32), p + "nbtan_zhat": nb_tan_zhat})
    # the notebook's codes_to_indexes truncates (astype(uint32) without rounding): where
    # zhat * (L // 2) lands just below an integer (L // 2 = 3: 1/3 * 3 = 0.99999994) the index is
    # one too small and does not decode back to zhat with its own indexes_to_codes
    decoded = np.asarray(nb.indexes_to_codes(arrays[p + "nb_codes"]), np.float64)
    arrays[p + "nb_roundtrip_ok"] = np.all(np.abs(decoded - nb_zhat) < 1e-6, axis=-1)
    meta[tag] = {"levels": levels, "seed": 20 + i, "shape": list(z.shape), "input_scale": 1.5,
                 "codebook_size": int(np.prod(levels)),
                 "codes_used_vqp": int(len(np.unique(arrays[p + "vqp_codes"]))),
                 "round_margin_vqp": _bound_margin(z, levels, -1e-3), "round_margin_nb": _bound_margin(z, levels, 1e-3),
                 "tan_vs_arctanh_values_that_differ": int((nb_zhat != nb_tan_zhat).sum()),
                 "vqp_vs_nb_values_that_differ": int((nb_zhat != arrays[p + "vqp_zhat"]).sum()),
                 "nb_codes_failing_own_round_trip": int((~arrays[p + "nb_roundtrip_ok"]).sum())}
    print(f"fsq {tag}: {meta[tag]}")


def _lfq_goldens(torch, vqp, arrays, meta):
  for tag, (seed, b, n, d, c, scale, gamma, codebook_scale) in LFQ_CASES.items():
    x = (scale * np.random.default_rng(seed).standard_normal((b, n, d))).astype(np.float32)
    lfq = vqp.LFQ(dim=d, codebook_size=2**(d // c), num_codebooks=c, entropy_loss_weight=0.1,
                  commitment_loss_weight=0.25, diversity_gamma=gamma, codebook_scale=codebook_scale)
    assert not lfq.has_projections
    lfq.train()
    ret, breakdown = lfq(torch.from_numpy(x), inv_temperature=100.0, return_loss_breakdown=True)
    p = f"lfq_{tag}_"
    arrays.update({
        p + "x": x, p + "quantized": ret.quantized.detach().numpy(), p + "codes": ret.indices.numpy().astype(np.int32),
        p + "loss": np.float32(ret.entropy_aux_loss.item()),
        p + "per_sample_entropy": np.float32(breakdown.per_sample_entropy.item()),
        p + "codebook_entropy": np.float32(breakdown.batch_entropy.item()),
        p + "commitment": np.float32(breakdown.commitment.item()), p + "codebook": lfq.codebook.numpy()})
    meta[tag] = {"seed": seed, "B": b, "N": n, "D": d, "num_codebooks": c, "input_scale": scale,
                 "diversity_gamma": gamma, "codebook_scale": codebook_scale, "entropy_loss_weight": 0.1,
                 "commitment_loss_weight": 0.25, "inv_temperature": 100.0, "min_abs_input": float(np.abs(x).min()),
                 "loss": float(ret.entropy_aux_loss.item())}
    print(f"lfq {tag}: loss {meta[tag]['loss']:.6f} per-sample {breakdown.per_sample_entropy.item():.5f} "
          f"codebook {breakdown.batch_entropy.item():.5f}")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--vqp", required=True, type=pathlib.Path,
                      help="checkout of lucidrains/vector-quantize-pytorch (contains vector_quantize_pytorch/)")
  parser.add_argument("--fsq-notebook", required=True, type=pathlib.Path, help="google-research fsq/fsq.ipynb")
  parser.add_argument("--out", default=REPO_ROOT / "tests" / "golden", type=pathlib.Path)
  parser.add_argument("--vqp-commit", default=None, help="vector-quantize-pytorch commit, if the checkout has no .git")
  parser.add_argument("--fsq-commit", default=None, help="google-research commit, if the notebook is not in a git tree")
  args = parser.parse_args(argv)

  vqp_dir, notebook = args.vqp.resolve(), args.fsq_notebook.resolve()
  if not (vqp_dir / VQP_FILES[0]).is_file():
    raise SystemExit(f"{vqp_dir} does not contain {VQP_FILES[0]}")
  if not notebook.is_file():
    raise SystemExit(f"{notebook} is not a file")
  vqp_commit, vqp_commit_from = _commit(vqp_dir, args.vqp_commit, "--vqp-commit")
  fsq_commit, fsq_commit_from = _commit(notebook.parent.parent, args.fsq_commit, "--fsq-commit")

  import os
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import einops
  import einx
  import jax
  import torch
  torch.set_num_threads(1)
  sys.path.insert(0, str(vqp_dir))
  import vector_quantize_pytorch as vqp
  assert pathlib.Path(vqp.__file__).resolve().is_relative_to(vqp_dir), vqp.__file__

  arrays, meta = {}, {"vq_ema": {}, "fsq": {}, "lfq": {}}
  _vq_goldens(torch, vqp, arrays, meta["vq_ema"])
  _fsq_goldens(torch, vqp, notebook, arrays, meta["fsq"])
  _lfq_goldens(torch, vqp, arrays, meta["lfq"])

  args.out.mkdir(parents=True, exist_ok=True)
  npz_path = args.out / "quantizers.npz"
  np.savez_compressed(npz_path, **arrays)
  meta.update({
      "vqp_repo": VQP_REPO, "vqp_commit": vqp_commit, "vqp_commit_from": vqp_commit_from,
      "vqp_version_in_pyproject": next(line.split('"')[1] for line in (vqp_dir / "pyproject.toml").read_text().splitlines()
                                       if line.startswith("version")),
      "vqp_files_sha256": {p: _sha256(vqp_dir / p) for p in VQP_FILES},
      "fsq_repo": FSQ_REPO, "fsq_commit": fsq_commit, "fsq_commit_from": fsq_commit_from,
      "fsq_notebook_sha256": _sha256(notebook),
      "fsq_notebook_patch": "nb_*: the FSQ cell with jnp.tan( -> jnp.arctanh( (authors' fix, vqp#94); nbtan_*: as published",
      "fsq_conventions": "lucidrains half_l = (L-1)(1+eps)/2 is tokax FSQ(eps=-1e-3); the notebook's (1-eps) is eps=1e-3",
      "versions": {"torch": torch.__version__, "einops": einops.__version__, "einx": einx.__version__,
                   "jax": jax.__version__, "numpy": np.__version__, "python": platform.python_version()},
      "npz_keys": sorted(arrays),
      "command": "python scripts/goldens/make_quantizer_goldens.py --vqp <checkout> --fsq-notebook <fsq.ipynb> "
                 "--out tests/golden",
  })
  (args.out / "quantizers.json").write_text(json.dumps(meta, indent=2) + "\n")
  print(f"wrote {npz_path} ({npz_path.stat().st_size} bytes), {args.out / 'quantizers.json'}")


if __name__ == "__main__":
  main()
