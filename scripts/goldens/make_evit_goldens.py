"""Golden files for EViT parity: the OFFICIAL youweiliang/evit model and block on random weights.

    python scripts/goldens/make_evit_goldens.py --evit /path/to/evit/checkout --out tests/golden

`--evit` is a checkout of https://github.com/youweiliang/evit (the directory holding evit.py and
helpers.py). It is imported from there at run time; no official code lives in this repo. The commit
is read with `git -C <evit> rev-parse HEAD`; for an exported tree without .git pass `--commit <sha>`
(the committed goldens used 5ca95a7cf4a8637193284895c5bc0dd9dc365982).

Writes two files (+ a .json each with provenance, versions and selection margins):

tests/golden/evit_deit_small_patch16_224.npz, the official `EViT` model with the kwargs of
`deit_small_patch16_shrink_base` (patch 16, width 384, depth 12, 6 heads, keep_rate at blocks 3, 6,
9), eval, fp32, CPU, weights from tests/golden/weights.py (seed 0), images from seed 100:

  images               (2, 224, 224, 3) float32 NHWC (torch gets the NCHW transpose)
  logits_dense         (2, 1000) the same model with keep_rate 1 everywhere
  logits_<tag>         (2, 1000)
  tokens_<tag>         (12,) int32 token count after each block (incl. [CLS] and a fused token)
  idx_<tag>_l<i>       (2, k) int32 official topk indices (into tokens 1..N-1, descending attention)
  cls_attn_<tag>_l<i>  (2, N - 1) float32 official head-averaged [CLS] attention at block i

  tags: fuse07 (0.7, fuse), nofuse07 (0.7, no fuse), fuse05 (0.5, fuse), and ties_fuse07 (0.7,
  fuse, a CONSTANT image and the patch rows of pos_embed zeroed, so every patch token is the same
  vector: [CLS] attention is tied across them; `pos_embed_ties` is the modified pos_embed).

tests/golden/evit_block.npz, one official `Block(dim=64, num_heads=4, qkv_bias=True,
keep_rate=0.7)` on x (2, 50, 64), weights seed 2:

  <case>_x             (2, 50, 64) block input; case random (normal) or duplicates (tokens 1..49
                       drawn from 7 distinct vectors, so [CLS] attention has exact ties)
  <case>_<f>_mid       x + attn(norm1(x)): the state the reduction sees     (f = fuse / nofuse)
  <case>_<f>_reduced   the state after the reduction, before the MLP (input of norm2)
  <case>_<f>_out       block output
  <case>_<f>_idx       (2, k) int32 topk indices;  <case>_<f>_cls_attn (2, 49) float32

Adaptations at the edges (also listed in the json): helpers.py imports `torchprofile` (used only by
get_macs); a stub module is put in sys.modules. evit.py's factory `_create_evit` passes
`default_cfg=` to timm's build_model_with_cfg, which timm 1.0 forwards to the model constructor
(TypeError), so the model is built as `evit.EViT(**kwargs of deit_small_patch16_shrink_base)`,
exactly the kwargs that factory passes. Importing evit.py re-registers four timm model names
(warnings only; the generator never uses timm's registry).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import pathlib
import platform
import subprocess
import sys
import types

import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
OFFICIAL_REPO = "https://github.com/youweiliang/evit"
IMAGE_SEED = 100
IMAGE_SHAPE = (2, 224, 224, 3)
WEIGHT_SEED = 0
DROP_LOC = (3, 6, 9)
MODEL_KWARGS = dict(patch_size=16, embed_dim=384, depth=12, num_heads=6)  # deit_small_patch16_shrink_base
SETTINGS = [  # (tag, base_keep_rate, fuse_token, ties)
    ("fuse07", 0.7, True, False),
    ("nofuse07", 0.7, False, False),
    ("fuse05", 0.5, True, False),
    ("ties_fuse07", 0.7, True, True),
]
BLOCK = dict(dim=64, num_heads=4, tokens=50, keep_rate=0.7, weight_seed=2, x_seed=3)
ADAPTATIONS = [
    "helpers.py imports torchprofile (only get_macs uses it): a stub module `torchprofile` with "
    "profile_macs=None is placed in sys.modules before importing evit.py.",
    "evit.py _create_evit passes default_cfg= to timm.build_model_with_cfg, which timm 1.0 forwards "
    "to the model constructor (TypeError); the model is built as evit.EViT(patch_size=16, "
    "embed_dim=384, depth=12, num_heads=6, keep_rate=[1]*12 with base_keep_rate at (3, 6, 9), "
    "fuse_token=...), the kwargs deit_small_patch16_shrink_base passes to that factory.",
]


def _load_file_module(name: str, path: pathlib.Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _official_commit(src: pathlib.Path, commit_arg: str | None) -> tuple[str, str]:
    try:
        top, sha = subprocess.run(
            ["git", "-C", str(src), "rev-parse", "--show-toplevel", "HEAD"], check=True,
            capture_output=True, text=True).stdout.split()
        if pathlib.Path(top).resolve() != src:
            raise subprocess.CalledProcessError(1, "git")
        if commit_arg and commit_arg != sha:
            raise SystemExit(f"--commit {commit_arg} disagrees with {src} HEAD {sha}")
        return sha, "git rev-parse HEAD of --evit"
    except (subprocess.CalledProcessError, FileNotFoundError):
        if not commit_arg:
            raise SystemExit(f"{src} is not a git checkout: pass --commit <sha>")
        return commit_arg, "--commit argument (the --evit tree has no .git)"


def _sha256(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _selection_margins(cls_attn: np.ndarray, k: int) -> dict:
    """Smallest [CLS]-attention gaps behind one layer's selection (min over the batch).

    boundary: k-th largest minus (k+1)-th largest (kept vs dropped); order: smallest gap between
    consecutive kept tokens (their output order). A gap near float32 noise (~1e-9 for attention
    values ~5e-3) means a re-implementation may legitimately pick differently.
    """
    s = -np.sort(-cls_attn.astype(np.float64), axis=-1)
    boundary = float(np.min(s[:, k - 1] - s[:, k])) if k < s.shape[1] else None
    order = float(np.min(s[:, :k - 1] - s[:, 1:k])) if k > 1 else None
    return {"k": int(k), "boundary": boundary, "order": order}


class _Recorder:
    """Forward hooks on the official blocks: token counts, topk indices and [CLS] attention."""

    def __init__(self, blocks):
        self.counts, self.selections = [], {}
        for i, blk in enumerate(blocks):
            blk.register_forward_hook(lambda mod, inp, out: self.counts.append(int(out[0].shape[1])))
            blk.attn.register_forward_hook(self._attn_hook(i))

    def _attn_hook(self, layer):
        def hook(mod, inp, out):
            _, index, idx, cls_attn, _ = out
            if index is not None:
                self.selections[layer] = (idx.numpy().astype(np.int32), cls_attn.numpy().astype(np.float32))
        return hook

    def clear(self):
        self.counts.clear()
        self.selections.clear()


def make_model_goldens(evit, weights, out_dir, meta_base):
    import torch

    def build(keep_rate, fuse):
        keep = [1] * MODEL_KWARGS["depth"]
        for loc in DROP_LOC:
            keep[loc] = keep_rate
        return evit.EViT(**MODEL_KWARGS, keep_rate=keep, fuse_token=fuse).eval()

    dense = evit.EViT(**MODEL_KWARGS, keep_rate=(1,), fuse_token=False).eval()
    shapes = {k: tuple(v.shape) for k, v in dense.state_dict().items()}
    state = weights.random_state_dict(shapes, WEIGHT_SEED)
    images = np.random.default_rng(IMAGE_SEED).standard_normal(IMAGE_SHAPE).astype(np.float32)
    const_images = np.full(IMAGE_SHAPE, 0.25, np.float32)
    pos_ties = state["pos_embed"].copy()
    pos_ties[:, 1:] = 0.0
    to_torch = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))

    dense.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    arrays = {"images": images, "pos_embed_ties": pos_ties}
    with torch.no_grad():
        arrays["logits_dense"] = dense(to_torch(images)).numpy()

    settings_meta = []
    for tag, rate, fuse, ties in SETTINGS:
        model = build(rate, fuse)
        sd = dict(state, pos_embed=pos_ties) if ties else state
        model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
        rec = _Recorder(model.blocks)
        with torch.no_grad():
            logits = model(to_torch(const_images if ties else images)).numpy()
        assert np.all(np.isfinite(logits)) and len(rec.counts) == MODEL_KWARGS["depth"], tag
        arrays[f"logits_{tag}"] = logits
        arrays[f"tokens_{tag}"] = np.asarray(rec.counts, np.int32)
        margins = {}
        for layer, (idx, cls_attn) in sorted(rec.selections.items()):
            arrays[f"idx_{tag}_l{layer}"] = idx
            arrays[f"cls_attn_{tag}_l{layer}"] = cls_attn
            margins[str(layer)] = _selection_margins(cls_attn, idx.shape[1])
        settings_meta.append({
            "tag": tag, "base_keep_rate": rate, "fuse_token": fuse, "drop_loc": list(DROP_LOC),
            "images": "constant 0.25, pos_embed[:, 1:] = 0 (every patch token identical)" if ties
                      else "random (images key)",
            "tokens_after_block": list(rec.counts),
            "reducing_layers": sorted(rec.selections),
            "selection_margins": margins,
            "torch_topk_first_indices_l3": rec.selections[3][0][:, :12].tolist() if ties else None,
        })
        print(f"  {tag:<12} tokens {rec.counts}  margins "
              + " ".join(f"l{l}:{m['boundary']:.1e}" for l, m in margins.items() if m["boundary"] is not None))

    out_dir.mkdir(parents=True, exist_ok=True)
    npz_path = out_dir / "evit_deit_small_patch16_224.npz"
    np.savez_compressed(npz_path, **arrays)
    meta = dict(meta_base)
    meta.update({
        "model": "evit.EViT(patch_size=16, embed_dim=384, depth=12, num_heads=6, keep_rate=..., fuse_token=...) "
                 "(deit_small_patch16_shrink_base kwargs), eval",
        "weights": "tests/golden/weights.py random_state_dict(EViT state_dict shapes, seed)",
        "weight_seed": WEIGHT_SEED,
        "state_dict_keys": sorted(shapes),
        "image_seed": IMAGE_SEED,
        "images": "np.random.default_rng(100).standard_normal((2, 224, 224, 3)).astype(float32), NHWC; "
                  "torch input is images.transpose(0, 3, 1, 2)",
        "settings": settings_meta,
        "npz_keys": sorted(arrays),
    })
    (out_dir / "evit_deit_small_patch16_224.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"  wrote {npz_path} ({os.path.getsize(npz_path) / 1e6:.2f} MB)")


def make_block_goldens(evit, weights, out_dir, meta_base):
    import torch

    dim, n = BLOCK["dim"], BLOCK["tokens"]
    rng = np.random.default_rng(BLOCK["x_seed"])
    x_random = rng.standard_normal((2, n, dim)).astype(np.float32)
    distinct = rng.standard_normal((2, 7, dim)).astype(np.float32)
    pick = rng.integers(0, 7, size=(2, n - 1))
    x_dup = np.concatenate([x_random[:, :1], np.take_along_axis(distinct, pick[..., None], axis=1)], axis=1)
    arrays = {"random_x": x_random, "duplicates_x": x_dup}
    state = None
    cases_meta = []
    for fuse in (True, False):
        blk = evit.Block(dim=dim, num_heads=BLOCK["num_heads"], qkv_bias=True, keep_rate=BLOCK["keep_rate"],
                         fuse_token=fuse).eval()
        if state is None:
            state = weights.random_state_dict({k: tuple(v.shape) for k, v in blk.state_dict().items()},
                                              BLOCK["weight_seed"])
        blk.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
        seen = {}
        blk.attn.register_forward_hook(lambda mod, inp, out: seen.update(attn=out))
        blk.norm2.register_forward_pre_hook(lambda mod, inp: seen.update(reduced=inp[0].clone()))
        for case, x in (("random", x_random), ("duplicates", x_dup)):
            tag = f"{case}_{'fuse' if fuse else 'nofuse'}"
            xt = torch.from_numpy(x)
            with torch.no_grad():
                out, _, _ = blk(xt)
            attn_out, _, idx, cls_attn, left = seen["attn"]
            arrays[f"{tag}_mid"] = (xt + attn_out).numpy()  # drop_path is the identity in eval
            arrays[f"{tag}_reduced"] = seen["reduced"].numpy()
            arrays[f"{tag}_out"] = out.numpy()
            arrays[f"{tag}_idx"] = idx.numpy().astype(np.int32)
            arrays[f"{tag}_cls_attn"] = cls_attn.numpy().astype(np.float32)
            cases_meta.append({"tag": tag, "kept": int(left), "tokens_out": int(out.shape[1]),
                               "selection_margins": _selection_margins(cls_attn.numpy(), int(left))})
    np.savez_compressed(out_dir / "evit_block.npz", **arrays)
    meta = dict(meta_base)
    meta.update({
        "model": f"evit.Block(dim={dim}, num_heads={BLOCK['num_heads']}, mlp_ratio=4, qkv_bias=True, "
                 f"keep_rate={BLOCK['keep_rate']}, fuse_token=...), eval",
        "weights": "tests/golden/weights.py random_state_dict(Block state_dict shapes, seed)",
        "block": BLOCK,
        "state_dict_keys": sorted(state),
        "inputs": "x_seed rng: random_x = standard_normal((2, 50, 64)); then distinct = standard_normal((2, 7, 64)), "
                  "pick = integers(0, 7, (2, 49)); duplicates_x = [random_x[:, :1], distinct[pick]]",
        "cases": cases_meta,
        "npz_keys": sorted(arrays),
    })
    (out_dir / "evit_block.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"  wrote {out_dir / 'evit_block.npz'}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--evit", required=True, type=pathlib.Path, help="checkout of youweiliang/evit")
    parser.add_argument("--out", default=REPO_ROOT / "tests" / "golden", type=pathlib.Path)
    parser.add_argument("--commit", default=None, help="official commit sha, if --evit is not a git checkout")
    args = parser.parse_args(argv)

    src = args.evit.resolve()
    if not (src / "evit.py").is_file() or not (src / "helpers.py").is_file():
        raise SystemExit(f"{src} does not contain evit.py and helpers.py")
    commit, commit_from = _official_commit(src, args.commit)

    torch_compat = _load_file_module("tokax_tests_torch_compat", REPO_ROOT / "tests" / "torch_compat.py")
    weights = _load_file_module("tokax_tests_golden_weights", REPO_ROOT / "tests" / "golden" / "weights.py")
    timm = torch_compat.import_timm()  # evit.py imports timm
    import torch
    torch.set_num_threads(min(8, os.cpu_count() or 1))
    sys.modules.setdefault("torchprofile", types.SimpleNamespace(profile_macs=None))
    sys.path.insert(0, str(src))
    evit = importlib.import_module("evit")

    meta_base = {
        "official_repo": OFFICIAL_REPO,
        "official_commit": commit,
        "official_commit_from": commit_from,
        "official_files_sha256": {p: _sha256(src / p) for p in ("evit.py", "helpers.py")},
        "versions": {"timm": timm.__version__, "torch": torch.__version__, "numpy": np.__version__,
                     "python": platform.python_version()},
        "attention": "official evit.Attention: eager (q @ k^T) * scale, softmax, fp32",
        "adaptations": ADAPTATIONS,
        "command": "python scripts/goldens/make_evit_goldens.py --evit <evit checkout> --out tests/golden "
                   "[--commit <sha>]",
    }
    make_model_goldens(evit, weights, args.out, meta_base)
    make_block_goldens(evit, weights, args.out, meta_base)


if __name__ == "__main__":
    main()
