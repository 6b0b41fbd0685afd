"""Golden files for ToMe parity: the OFFICIAL facebookresearch/ToMe timm patch on random weights.

    python scripts/goldens/make_tome_goldens.py --tome /path/to/ToMe/checkout --out tests/golden

`--tome` is a checkout of https://github.com/facebookresearch/ToMe (the directory that contains
the `tome/` package). It is imported from there at run time; no official code lives in this repo.
The commit is read with `git -C <tome> rev-parse HEAD`; for an exported tree without .git, pass
`--commit <sha>` (the snapshot used for the committed goldens is af95e4b1befa172dadccd8c81e223b10090f9579).

For each model (timm, pretrained=False, eval, fp32, CPU) it writes tests/golden/tome_<model>.npz

  images            (2, 224, 224, 3) float32, NHWC (torch gets the NCHW transpose)
  logits_dense      (2, 1000) stock (unpatched) timm model
  logits_<tag>      (2, 1000) after tome.patch.timm.apply_patch(model, trace_source=True, prop_attn=True)
  tokens_<tag>      (depth,) int32, token count after each block
  source_<tag>      (2, N_final, 197) float32 0/1 model._tome_info["source"]; absent for r0

with tags r0, r8, r13, r16, r16_-1 (r=(16, -1), the decreasing schedule) and r16_noprop (r=16,
proportional attention off), plus tome_<model>.json with the provenance and diagnostics.

Compatibility with timm 1.0.31 (checked, not assumed, by `_check_patch_applies`): timm's
VisionTransformer.forward_features calls `self.blocks(x)` (an nn.Sequential, so Block.forward gets
only `x`) unless an attn_mask / is_causal is passed, which we never do, and the official
ToMeBlock / ToMeAttention only read attributes that still exist (norm1/2, attn.qkv, num_heads,
scale, attn_drop, proj, proj_drop, drop_path1/2, mlp). What the official patch silently drops
(LayerScale ls1/ls2, qk-norm, attention scale_norm, gated attention) is absent from both models.
VisionTransformerDistilled (deit_*_distilled) only overrides _pos_embed and forward_head, which
ToMe does not touch. So no adaptation is made: the official apply_patch is used as is.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import math
import os
import pathlib
import platform
import subprocess
import sys

import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
OFFICIAL_REPO = "https://github.com/facebookresearch/ToMe"
IMAGE_SEED = 100
IMAGE_SHAPE = (2, 224, 224, 3)
MODELS = {  # name -> weight seed
    "vit_small_patch16_224": 0,
    "deit_small_distilled_patch16_224": 1,
}
# (tag, r as given to model.r, prop_attn)
SETTINGS = [
    ("r0", 0, True),
    ("r8", 8, True),
    ("r13", 13, True),
    ("r16", 16, True),
    ("r16_-1", (16, -1), True),
    ("r16_noprop", 16, False),
]
ADAPTATIONS = []  # the official patch applies unchanged to timm 1.0.31 for these models


def _load_file_module(name: str, path: pathlib.Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _official_commit(tome_dir: pathlib.Path, commit_arg: str | None) -> tuple[str, str]:
    try:
        top, sha = subprocess.run(
            ["git", "-C", str(tome_dir), "rev-parse", "--show-toplevel", "HEAD"], check=True,
            capture_output=True, text=True).stdout.split()
        if pathlib.Path(top).resolve() != tome_dir:  # tome_dir sits inside some other repo
            raise subprocess.CalledProcessError(1, "git")
        if commit_arg and commit_arg != sha:
            raise SystemExit(f"--commit {commit_arg} disagrees with {tome_dir} HEAD {sha}")
        return sha, "git rev-parse HEAD of --tome"
    except (subprocess.CalledProcessError, FileNotFoundError):
        if not commit_arg:
            raise SystemExit(f"{tome_dir} is not a git checkout: pass --commit <sha>")
        return commit_arg, "--commit argument (the --tome tree has no .git)"


def _sha256(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _check_patch_applies(model) -> None:
    """Fails loudly if the model uses a timm feature that the official ToMe patch ignores."""
    import torch.nn as nn
    from timm.models.vision_transformer import Attention, Block

    for i, blk in enumerate(model.blocks):
        where = f"blocks[{i}]"
        assert type(blk) is Block, f"{where} is {type(blk)}, the patch expects timm Block"
        assert type(blk.attn) is Attention, f"{where}.attn is {type(blk.attn)}"
        for attr in ("ls1", "ls2"):
            assert isinstance(getattr(blk, attr), nn.Identity), f"{where}.{attr}: LayerScale"
        for attr in ("q_norm", "k_norm", "norm"):
            assert isinstance(getattr(blk.attn, attr), nn.Identity), f"{where}.attn.{attr}"
        assert getattr(blk.attn, "gate", None) is None, f"{where}.attn.gate"
        assert blk.attn.head_dim * blk.attn.num_heads == blk.norm1.normalized_shape[0]
    assert model.attn_pool is None and model.global_pool == "token"


def _matching_margins(metrics, r_applied, protected_cls, protected_dist):
    """Per-layer smallest gaps behind ToMe's merge decisions (own diagnostic, not official code).

    boundary: node_max[r-1] - node_max[r] after the descending sort, i.e. how far the last merged
      A token is from the first kept one; dest: best - second-best B partner of a merged A token.
    Minimum over the batch; None for layers without merging. A gap near float32 noise means a
    parity test may legitimately flip that merge.
    """
    boundary, dest = [], []
    for metric, r in zip(metrics, r_applied):
        if r <= 0:
            boundary.append(None)
            dest.append(None)
            continue
        m = metric / np.linalg.norm(metric, axis=-1, keepdims=True)
        scores = m[:, 0::2] @ np.swapaxes(m[:, 1::2], -1, -2)
        if protected_cls:
            scores[:, 0, :] = -np.inf
        if protected_dist:
            scores[:, :, 0] = -np.inf
        top2 = -np.sort(-scores, axis=-1)[..., :2]
        node_max = np.sort(top2[..., 0], axis=-1)[:, ::-1]
        gap = None
        if node_max.shape[1] > r and np.all(np.isfinite(node_max[:, r])):
            gap = float(np.min(node_max[:, r - 1] - node_max[:, r]))
        boundary.append(gap)
        order = np.argsort(-top2[..., 0], axis=-1, kind="stable")[:, :r]
        merged = np.take_along_axis(top2, order[..., None], axis=1)
        dest.append(float(np.min(merged[..., 0] - merged[..., 1])))
    return boundary, dest


def _min_or_none(values):
    values = [v for v in values if v is not None]
    return min(values) if values else None


def make_goldens(model_name, seed, tome_dir, out_dir, commit, commit_from, timm, tome_timm, weights):
    import torch
    from tome.utils import parse_r

    model = timm.create_model(model_name, pretrained=False).eval()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    state = weights.random_state_dict(shapes, seed)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    _check_patch_applies(model)
    depth = len(model.blocks)
    fused_attn = bool(model.blocks[0].attn.fused_attn)

    images = np.random.default_rng(IMAGE_SEED).standard_normal(IMAGE_SHAPE).astype(np.float32)
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    arrays = {"images": images}
    with torch.no_grad():
        arrays["logits_dense"] = model(x).numpy().astype(np.float32)

    tome_timm.apply_patch(model, trace_source=True, prop_attn=True)
    counts, metrics = [], []
    for blk in model.blocks:
        blk.register_forward_hook(lambda mod, inp, out: counts.append(int(out.shape[1])))
        blk.attn.register_forward_hook(lambda mod, inp, out: metrics.append(out[1].numpy()))
    protected_cls = model._tome_info["class_token"]
    protected_dist = model._tome_info["distill_token"]
    n0 = model.patch_embed.num_patches + model.num_prefix_tokens

    settings_meta = []
    for tag, r, prop_attn in SETTINGS:
        model.r = r
        model._tome_info["prop_attn"] = prop_attn
        counts.clear()
        metrics.clear()
        with torch.no_grad():
            logits = model(x).numpy().astype(np.float32)
        assert len(counts) == depth and np.all(np.isfinite(logits)), tag
        tokens = np.asarray(counts, np.int32)
        arrays[f"logits_{tag}"] = logits
        arrays[f"tokens_{tag}"] = tokens

        n_in = [n0] + counts[:-1]
        r_applied = [n_in[i] - counts[i] for i in range(depth)]
        r_requested = parse_r(depth, r)
        protected = int(protected_cls) + int(protected_dist)
        assert r_applied == [max(0, min(rq, (n - protected) // 2))
                             for rq, n in zip(r_requested, n_in)], tag
        source = model._tome_info["source"]
        if source is not None:
            source = source.numpy().astype(np.float32)
            assert source.shape == (IMAGE_SHAPE[0], counts[-1], n0), (tag, source.shape)
            assert np.all(source.sum(1) == 1.0), f"{tag}: a patch lives in != 1 token"
            size = model._tome_info["size"].numpy()[..., 0]
            assert np.array_equal(source.sum(-1), size), f"{tag}: source rows != sizes"
            arrays[f"source_{tag}"] = source
        else:
            assert all(ra == 0 for ra in r_applied), tag
        boundary, dest = _matching_margins(metrics, r_applied, protected_cls, protected_dist)
        settings_meta.append({
            "tag": tag,
            "r": list(r) if isinstance(r, tuple) else r,
            "prop_attn": prop_attn,
            "r_per_layer_requested": r_requested,
            "r_per_layer_applied": r_applied,
            "tokens_after_block": counts.copy(),
            "has_source": source is not None,
            "min_boundary_margin": _min_or_none(boundary),
            "min_destination_margin": _min_or_none(dest),
            "boundary_margin_per_layer": boundary,
            "destination_margin_per_layer": dest,
            "max_abs_logit": float(np.abs(logits).max()),
        })

    r0_vs_dense = float(np.abs(arrays["logits_r0"] - arrays["logits_dense"]).max())
    print(f"{model_name}: max|logits_r0 - logits_dense| = {r0_vs_dense:.3e}")
    assert r0_vs_dense < 1e-4, "patched r=0 model does not reproduce the stock timm model"

    out_dir.mkdir(parents=True, exist_ok=True)
    npz_path = out_dir / f"tome_{model_name}.npz"
    np.savez_compressed(npz_path, **arrays)
    meta = {
        "model": model_name,
        "official_repo": OFFICIAL_REPO,
        "official_commit": commit,
        "official_commit_from": commit_from,
        "official_files_sha256": {
            p: _sha256(tome_dir / p)
            for p in ("tome/merge.py", "tome/patch/timm.py", "tome/utils.py")},
        "patch_call": "tome/patch/timm.py apply_patch(model, trace_source=True, prop_attn=True); "
                      "model.r = r; model._tome_info['prop_attn'] = prop_attn",
        "versions": {
            "timm": timm.__version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version()},
        "weights": "tests/golden/weights.py random_state_dict(model.state_dict() shapes, seed)",
        "weight_seed": seed,
        "image_seed": IMAGE_SEED,
        "images": "np.random.default_rng(100).standard_normal((2, 224, 224, 3)).astype(float32), "
                  "NHWC; torch input is images.transpose(0, 3, 1, 2)",
        "depth": depth,
        "num_tokens_in": n0,
        "class_token": bool(protected_cls),
        "distill_token": bool(protected_dist),
        "dense_attention": ("stock timm Attention, fused F.scaled_dot_product_attention"
                            if fused_attn else "stock timm Attention, eager"),
        "tome_attention": "official ToMeAttention, eager (q @ k^T) * scale (+ log size)",
        "max_abs_diff_logits_r0_vs_dense": r0_vs_dense,
        "settings": settings_meta,
        "npz_keys": sorted(arrays),
        "adaptations": ADAPTATIONS or [
            "none: the official apply_patch runs unchanged on timm "
            f"{timm.__version__} for this model (checked by _check_patch_applies: plain timm "
            "Block/Attention, no LayerScale, qk-norm, scale_norm or gate; blocks run through "
            "nn.Sequential without attn_mask)."],
        "margin_note": "*_margin*: smallest cosine-similarity gaps behind the merge decisions "
                       "(min over the batch; see _matching_margins in the generator); a gap near "
                       "float32 noise (~1e-6) means that merge could flip in a re-implementation.",
        "command": "python scripts/goldens/make_tome_goldens.py --tome <ToMe checkout> "
                   "--out tests/golden [--commit <sha>]",
    }
    json_path = out_dir / f"tome_{model_name}.json"
    json_path.write_text(json.dumps(meta, indent=2) + "\n")

    for s in settings_meta:
        margins = "".join(f" {k} {s[f'min_{k}_margin'] or float('inf'):.1e}"
                          for k in ("boundary", "destination"))
        print(f"  {s['tag']:<11} last-layer tokens {s['tokens_after_block'][-1]:>3}  "
              f"max|logit| {s['max_abs_logit']:.3f}  min margins{margins}")
    print(f"  wrote {npz_path} ({os.path.getsize(npz_path) / 1e6:.2f} MB), {json_path}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tome", required=True, type=pathlib.Path,
                        help="checkout of facebookresearch/ToMe (contains tome/)")
    parser.add_argument("--out", default=REPO_ROOT / "tests" / "golden", type=pathlib.Path)
    parser.add_argument("--commit", default=None,
                        help="official commit sha, if --tome is not a git checkout")
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    args = parser.parse_args(argv)

    tome_dir = args.tome.resolve()
    if not (tome_dir / "tome" / "patch" / "timm.py").is_file():
        raise SystemExit(f"{tome_dir} does not contain tome/patch/timm.py")
    commit, commit_from = _official_commit(tome_dir, args.commit)

    torch_compat = _load_file_module("tokax_tests_torch_compat", REPO_ROOT / "tests" / "torch_compat.py")
    weights = _load_file_module("tokax_tests_golden_weights", REPO_ROOT / "tests" / "golden" / "weights.py")
    timm = torch_compat.import_timm()  # before tome, which imports timm
    import torch
    torch.set_num_threads(min(8, os.cpu_count() or 1))
    sys.path.insert(0, str(tome_dir))
    # `tome.patch.timm` is rebound to the apply_patch function by tome/patch/__init__.py.
    tome_timm = importlib.import_module("tome.patch.timm")

    for name in args.models:
        make_goldens(name, MODELS[name], tome_dir, args.out, commit, commit_from, timm, tome_timm, weights)


if __name__ == "__main__":
    main()
